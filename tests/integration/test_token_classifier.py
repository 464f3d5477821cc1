"""Loading and running a token-classification directory: the kind the loader picks, the
tags it refuses, the logits of one position per row (explanations' rows, through the
worker) and of every position (Predict: queued rows, batched across callers under the
token budget, before explanation rows)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from whybert_service.batching.worker import ModelWorker, WorkerConfig
from whybert_service.context import Priority, RequestContext
from whybert_service.models.classifier import Launched
from whybert_service.models.loading import ModelLoadError, load_directory
from whybert_service.models.token_classifier import TokenClassifier


def test_a_token_classification_directory_loads_as_a_token_classifier(ner: TokenClassifier) -> None:
    assert ner.kind == "token"
    assert ner.entity_types == ["PER", "ORG", "LOC", "MISC"]
    assert ner.type_columns("ORG") == [3, 4]


def test_tags_that_are_not_bio_are_refused(ner_dir: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(ner_dir, odd)
    config = json.loads((odd / "config.json").read_text())
    config["id2label"] = {**config["id2label"], "1": "PERSON"}
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="BIO"):
        load_directory("odd", odd, torch.device("cpu"), torch.float32)


def test_rows_give_the_logits_of_their_position(ner: TokenClassifier) -> None:
    rows = [ner.window(t).ids for t in ("Angela Merkel visited Paris", "the United Nations said")]
    full = ner.token_logits(rows)
    with torch.no_grad():
        plain = ner.model(input_ids=torch.tensor([rows[0]])).logits[0].numpy()
    np.testing.assert_allclose(full[0], plain, atol=1e-5)
    for position in range(1, 4):
        picked = ner.forward(rows, [position, position])
        np.testing.assert_allclose(picked, np.stack([f[position] for f in full]), atol=1e-5)


def _counting_launches(ner: TokenClassifier, calls: list[tuple[str, int]]) -> None:
    """Record each forward pass the worker launches: its kind and the tokens the model
    computes (padded; the rows' own where the model packs them, as it does on the CPU)."""
    launch, launch_tokens = ner.launch, ner.launch_tokens

    def cost(rows: Sequence[Sequence[int]]) -> int:
        return sum(map(len, rows)) if ner.packer is not None else len(rows) * max(map(len, rows))

    def one(rows: Sequence[Sequence[int]], positions: Sequence[int | None] | None = None) -> Launched:
        calls.append(("positions", cost(rows)))
        return launch(rows, positions)

    def every(rows: Sequence[Sequence[int]]) -> Launched:
        calls.append(("every", cost(rows)))
        return launch_tokens(rows)

    ner.launch, ner.launch_tokens = one, every  # type: ignore[method-assign]


async def test_every_position_rows_are_batched_under_the_token_budget(ner: TokenClassifier) -> None:
    worker = ModelWorker(ner, WorkerConfig(max_batch_tokens=64, max_batch_seconds=None))
    calls: list[tuple[str, int]] = []
    _counting_launches(ner, calls)
    worker.start()
    try:
        texts = [("Angela Merkel visited Paris and " * (1 + i % 3)).strip() for i in range(9)]
        rows = [ner.window(t).ids for t in texts]
        ctx = RequestContext()
        got = await worker.run_tokens(rows, ctx)
        every = [c for k, c in calls if k == "every"]  # (the worker's warm-up pass is not one)
        assert len(every) > 1 and all(c <= 64 or c == max(len(r) for r in rows) for c in every)
        assert ctx.rows == len(rows)
        for row, logits in zip(rows, got, strict=True):
            assert logits.shape == (len(row), ner.num_labels)
            np.testing.assert_allclose(logits, ner.token_logits([row])[0], atol=1e-5)
    finally:
        worker.stop()
        del ner.launch, ner.launch_tokens


async def test_predict_rows_of_several_callers_share_a_batch_and_go_before_explanations(
    ner: TokenClassifier,
) -> None:
    # A token model's Predict rows are queued like a sequence model's: concurrent callers'
    # rows run in one forward pass, ahead of explanation rows queued before them.
    worker = ModelWorker(ner, WorkerConfig(max_batch_tokens=4096, max_batch_seconds=None, max_batch_delay_s=0.2))
    calls: list[tuple[str, int]] = []
    _counting_launches(ner, calls)
    worker.start()
    try:
        rows = [ner.window(t).ids for t in ("Angela Merkel visited Paris", "the United Nations said", "Siemens")]
        explained = worker.submit([rows[0]] * 40, RequestContext(priority=Priority.EXPLAIN), position=1)
        got = await asyncio.gather(*(worker.run_tokens([r], RequestContext()) for r in rows))
        three = 3 * max(map(len, rows)) if ner.packer is None else sum(map(len, rows))
        predict = ("every", three)  # one pass for the three callers ...
        assert [k for k, _ in calls].count("every") == 1 and predict in calls
        for row, (logits,) in zip(rows, got, strict=True):
            np.testing.assert_allclose(logits, ner.token_logits([row])[0], atol=1e-5)
        np.testing.assert_allclose(
            (await asyncio.wrap_future(explained)).logits, ner.forward([rows[0]] * 40, [1] * 40), atol=1e-5
        )
        assert calls.index(predict) < calls.index(("positions", 40 * len(rows[0])))  # ... before these
    finally:
        worker.stop()
        del ner.launch, ner.launch_tokens
