"""Integrated gradients' plan (explainers/integrated_gradients.py): the steps of every
integral cut into step batches where Captum's internal batching cuts them, batches filled
under the token budget. (The values, on a worker, against Captum:
integration/test_integrated_gradients.py.)"""

from __future__ import annotations

from whybert_service.explainers.integrated_gradients import GRADIENT_ROW_COST, plan_step_batches


def test_plan_cuts_each_integral_where_captum_does_and_fills_batches() -> None:
    # 10 tokens, budget 240 (each gradient row costs 3): 8 rows a batch. 20 steps → slices
    # of 8, 8, 4 per target.
    batches = plan_step_batches(2, 20, 10, 80 * GRADIENT_ROW_COST)
    assert [[(p.column, p.start, p.stop) for p in b] for b in batches] == [
        [(0, 0, 8)],
        [(0, 8, 16)],
        [(0, 16, 20)],
        [(1, 0, 8)],
        [(1, 8, 16)],
        [(1, 16, 20)],
    ]
    # Short integrals share a batch while they fit: two of 5 steps in 10 rows.
    batches = plan_step_batches(3, 5, 10, 100 * GRADIENT_ROW_COST)
    assert [[(p.column, p.start, p.stop) for p in b] for b in batches] == [
        [(0, 0, 5), (1, 0, 5)],
        [(2, 0, 5)],
    ]
    # A row wider than the budget still runs, alone.
    assert all(len(b) == 1 and b[0].rows == 1 for b in plan_step_batches(1, 4, 300, 100))
