"""SHAP Partition explanations equal the shap library's own, through the shared batcher, on
a server of the tiny model shared by the module."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shap
import whybert
from _references import ShapReference
from _servers import ServerThread, running, tiny_settings

TEXTS = [
    "the food was great but the service was painfully slow",
    "Wow!!! best. day. ever :) #blessed",
    "unbelievably overpriced, the waiter's attitude was condescending",
    "ok",
    "The café’s crème brûlée 🍮 was naïve and über-sweet 😋",
]


def client_for(server: Any) -> whybert.AsyncClient:
    return whybert.AsyncClient(f"127.0.0.1:{server.port}", timeout=120)


def assert_same(ours: whybert.Explanation, ref: Any) -> None:
    ref_values = np.asarray(ref.values[0]).reshape(ours.values.shape)
    assert ours.tokens == list(ref.data[0])
    # Float noise only: batching changes padding, nothing else.
    np.testing.assert_allclose(ours.values, ref_values, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.base_values, np.asarray(ref.base_values[0]).reshape(-1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("text", TEXTS)
async def test_values_equal_shap_library_for_predicted_label(
    threaded_server: ServerThread, shap_reference: ShapReference, text: str
) -> None:
    async with client_for(threaded_server) as client:
        (ours,) = await client.explain([text])
    predicted = shap_reference.predicted(text)
    assert ours.labels == [shap_reference.labels[predicted]]
    assert_same(ours, shap_reference.explain(text, [predicted]))
    assert ours.additivity_error < 1e-6
    assert ours.model_rows > 0


@pytest.mark.parametrize(
    ("options", "targets"),
    [
        ({"targets": "all"}, [0, 1, 2]),
        ({"targets": ["positive", "negative"]}, [2, 0]),
        ({"targets": "all", "output": "logit"}, [0, 1, 2]),
        ({"targets": "all", "max_evals": 60}, [0, 1, 2]),
        ({"targets": "all", "fixed_context": 0}, [0, 1, 2]),
        ({"targets": "all", "fixed_context": 1, "max_evals": 100}, [0, 1, 2]),
        ({"targets": "all", "batch_size": 64}, [0, 1, 2]),
        ({"targets": ["neutral"], "batch_size": 1, "max_evals": 40}, [1]),
    ],
)
async def test_values_equal_shap_library_for_options(
    threaded_server: ServerThread, shap_reference: ShapReference, options: dict[str, Any], targets: list[int]
) -> None:
    text = TEXTS[0] + ", and the dessert was cold and tasteless."
    async with client_for(threaded_server) as client:
        (ours,) = await client.explain([text], **options)
    shap_kw = {k: options[k] for k in ("max_evals", "fixed_context", "batch_size") if k in options}
    ref = shap_reference.explain(text, targets, options.get("output", "probability"), **shap_kw)
    assert ours.labels == [shap_reference.labels[t] for t in targets]
    assert_same(ours, ref)
    assert ours.additivity_error < 1e-6
    assert ours.output == options.get("output", "probability")


async def test_budget_binds_and_rows_are_counted(threaded_server: ServerThread) -> None:
    long_text = " ".join(["the service was slow but the food was great"] * 6)
    async with client_for(threaded_server) as client:
        (small,) = await client.explain([long_text], max_evals=50)
        (large,) = await client.explain([long_text], max_evals=400)
    # Each distinct masked string is evaluated once, never more than the budget allows.
    assert 0 < small.model_rows <= 51
    assert small.model_rows < large.model_rows <= 401


async def test_offsets_point_into_the_original_text(threaded_server: ServerThread) -> None:
    text = "  Spaced   out,\tunhappy  customer’s reply… 👍 "
    async with client_for(threaded_server) as client:
        (e,) = await client.explain([text])
    for token, (start, end), special in zip(e.tokens, e.offsets, e.special, strict=True):
        if special:
            continue
        piece = text[start:end]
        assert piece, token
        assert token.strip().lower().startswith(piece.strip().lower()[:1]) or "[UNK]" in token or token.strip() == ""


async def test_concurrent_explanations_equal_sequential_ones(tiny_model_dir: Path) -> None:
    """32 callers at once get the same values as each alone, and their rounds share batches."""
    async with running(tiny_settings(tiny_model_dir, cache_entries=0)) as server:
        texts = [f"{TEXTS[i % len(TEXTS)]} (review {i})" for i in range(32)]
        async with client_for(server) as client:
            alone = [(await client.explain([t], max_evals=120))[0] for t in texts[:8]]
            batches_before = _batch_count(server)
            together = await asyncio.gather(*[client.explain([t], max_evals=120) for t in texts])
            batches_concurrent = _batch_count(server) - batches_before
        for a, (b,) in zip(alone, together[:8], strict=True):
            np.testing.assert_allclose(a.values, b.values, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(a.base_values, b.base_values, rtol=1e-5, atol=1e-7)
        total_rounds = sum(b.model_rows for (b,) in together) / 10  # ≤ 10 rows a round
        assert batches_concurrent < total_rounds / 2, "concurrent rounds did not share batches"


def _batch_count(server: Any) -> float:
    for metric in server.metrics.batch_rows.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return float(sample.value)
    return 0.0


async def test_cache_serves_repeats_and_keys_on_options(threaded_server: ServerThread) -> None:
    text = "the staff were friendly and the room was spotless"
    async with client_for(threaded_server) as client:
        (first,) = await client.explain([text], max_evals=80)
        (again,) = await client.explain([text], max_evals=80)
        (other,) = await client.explain([text], max_evals=90)
    assert not first.cached and again.cached and not other.cached
    assert again.model_rows == 0
    np.testing.assert_array_equal(first.values, again.values)
    assert threaded_server.server is not None and threaded_server.server.dataplane is not None
    cache = threaded_server.server.dataplane.cache
    assert cache.hits >= 1 and cache.misses >= 2


async def test_to_shap_gives_a_shap_explanation(threaded_server: ServerThread) -> None:
    async with client_for(threaded_server) as client:
        (one,) = await client.explain(["a short and sweet review"])
        (every,) = await client.explain(["a short and sweet review"], targets="all")
    exp = one.to_shap()
    assert isinstance(exp, shap.Explanation)
    np.testing.assert_array_equal(exp.values, one.values)
    assert "sweet" in shap.plots.text(exp, display=False)
    assert "sweet" in shap.plots.text(exp[:, 0], display=False)
    multi = every.to_shap()
    assert multi.values.shape == every.values.shape
    assert "sweet" in shap.plots.text(multi[:, 2], display=False)
    assert "sweet" in shap.plots.text(multi, display=False)


async def test_to_shap_slices_by_output_when_tokens_are_as_many_as_labels(threaded_server: ServerThread) -> None:
    # One word, all three labels: 3 tokens × 3 outputs, where shap's slicing cannot tell
    # the axes apart by length; e[:, k] must still be label k's values over the tokens.
    import matplotlib

    matplotlib.use("Agg")
    async with client_for(threaded_server) as client:
        (e,) = await client.explain(["good"], targets="all")
    assert e.values.shape == (3, 3)
    exp = e.to_shap()
    for k, label in enumerate(e.labels):
        column = exp[:, k]
        np.testing.assert_array_equal(column.values, e.values[:, k])
        assert list(column.data) == e.tokens and column.output_names == label
        names = column.feature_names  # none, or the tokens: never the characters of one of them
        assert names is None or list(names) == [t.strip() for t in e.tokens], names
        shap.plots.waterfall(column, show=False)  # no IndexError on the names' characters
        shap.plots.bar(column, show=False)
    assert "good" in shap.plots.text(exp[:, 1], display=False)
