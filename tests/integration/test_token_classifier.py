"""Loading and running a token-classification directory: the kind the loader picks, the
tags it refuses, the logits of one position per row (explanations' rows, through the
worker) and of every position (Predict, through worker jobs cut under the token budget)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from whybert_service.batching.worker import ModelWorker, WorkerConfig
from whybert_service.context import RequestContext
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


async def test_the_worker_runs_every_position_in_jobs_under_the_token_budget(ner: TokenClassifier) -> None:
    worker = ModelWorker(ner, WorkerConfig(max_batch_tokens=64, max_batch_seconds=None))
    worker.start()
    try:
        texts = [("Angela Merkel visited Paris and " * (1 + i % 3)).strip() for i in range(9)]
        rows = [ner.window(t).ids for t in texts]
        calls: list[int] = []
        original = ner.token_logits

        def counted(chunk: list[list[int]]) -> list[np.ndarray]:
            calls.append(len(chunk) * max(len(r) for r in chunk))
            return original(chunk)

        ner.token_logits = counted  # type: ignore[method-assign]
        try:
            ctx = RequestContext()
            got = await worker.run_tokens(rows, ctx)
        finally:
            del ner.token_logits
        assert len(calls) > 1 and all(c <= 64 or c == max(len(r) for r in rows) for c in calls)
        assert ctx.rows == len(rows)
        for row, logits in zip(rows, got, strict=True):
            np.testing.assert_allclose(logits, original([row])[0], atol=1e-5)
    finally:
        worker.stop()
