"""The training loop: length-bucketed batches, AdamW with warm-up, validation, the best state.

Batches are cut from rows of similar length (dynamic padding), which on a CPU roughly
halves the cost of an epoch of tweets compared with padding everything to --max-length.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.classifier import pad_rows
from .data import Example

log = logging.getLogger(__name__)

CONFIDENT = 0.7  # the label-confidence threshold of the "confident rows" accuracy


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run (all of them, so a report can show them)."""

    epochs: float = 2.0
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    max_length: int = 64
    seed: int = 13
    confidence_weighting: bool = False
    balance_classes: bool = False
    label_smoothing: float = 0.0
    evals_per_epoch: int = 1


@dataclass
class EvalScores:
    """Classification figures of one evaluation (not the server's Prometheus `Metrics`)."""

    rows: int
    accuracy: float
    macro_f1: float
    per_label_f1: dict[str, float]
    confident_rows: int = 0
    confident_accuracy: float | None = None
    loss: float = 0.0

    def summary(self) -> str:
        text = f"acc {self.accuracy:.4f}  macro-F1 {self.macro_f1:.4f}"
        if self.confident_accuracy is not None:
            text += f"  acc(conf≥{CONFIDENT}) {self.confident_accuracy:.4f}"
        return text


@dataclass
class Evaluation:
    """One validation pass during training."""

    epoch: float
    step: int
    scores: EvalScores


@dataclass
class TrainResult:
    """What a run did: its evaluations, the best one, and how long it took."""

    evaluations: list[Evaluation] = field(default_factory=list)
    best: Evaluation | None = None
    seconds: float = 0.0
    steps: int = 0


class Tokenized:
    """Token ids of examples, cut to `max_length`, ready for length-bucketed batching."""

    def __init__(self, tokenizer: Any, examples: Sequence[Example], max_length: int) -> None:
        texts = [ex.text for ex in examples]
        self.ids: list[list[int]] = (
            tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if texts else []
        )
        self.labels = np.array([ex.label for ex in examples], dtype=np.int64)
        conf = [ex.confidence for ex in examples]
        known = [c for c in conf if c is not None]
        fill = float(np.median(known)) if known else 1.0
        self.weights = np.array([fill if c is None else c for c in conf], dtype=np.float32)
        self.confidence = np.array([np.nan if c is None else c for c in conf], dtype=np.float32)
        self.pad_id = int(tokenizer.pad_token_id or 0)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: Sequence[int], device: torch.device | None = None) -> dict[str, torch.Tensor]:
        ids, mask = pad_rows([self.ids[r] for r in rows], self.pad_id)
        tensors = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(self.labels[list(rows)]),
            "weights": torch.from_numpy(self.weights[list(rows)]),
        }
        return {k: v.to(device) for k, v in tensors.items()} if device else tensors


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Batches of rows of similar length; shuffled when `rng` is given, sorted otherwise.

    Shuffled: rows are shuffled, sorted by length inside pools of 50 batches, cut, and the
    batches shuffled again, so each batch is random but padding stays small.
    """
    order = list(range(len(lengths)))
    if rng is None:
        order.sort(key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    pool = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


@torch.inference_mode()
def predict(model: nn.Module, data: Tokenized, batch_size: int = 128) -> np.ndarray:
    """Logits of every row, in row order."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    out = np.zeros((len(data), 0), dtype=np.float32)
    parts: list[tuple[list[int], np.ndarray]] = []
    for rows in length_batches([len(r) for r in data.ids], batch_size, None):
        batch = data.batch(rows, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        parts.append((rows, logits.float().cpu().numpy()))
    if parts:
        out = np.zeros((len(data), parts[0][1].shape[1]), dtype=np.float32)
        for rows, logits in parts:
            out[rows] = logits
    model.train(was_training)
    return out


def score(
    logits: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    confidence: np.ndarray | None = None,
) -> EvalScores:
    """Accuracy, macro-F1 over all labels, and accuracy on rows with confidence ≥ 0.7."""
    pred = logits.argmax(axis=1)
    f1s: dict[str, float] = {}
    for k, name in enumerate(names):
        tp = int(((pred == k) & (labels == k)).sum())
        fp = int(((pred == k) & (labels != k)).sum())
        fn = int(((pred != k) & (labels == k)).sum())
        f1s[name] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    scores = EvalScores(
        rows=len(labels),
        accuracy=float((pred == labels).mean()) if len(labels) else 0.0,
        macro_f1=float(np.mean(list(f1s.values()))),
        per_label_f1=f1s,
    )
    if confidence is not None and not np.isnan(confidence).all():
        sure = confidence >= CONFIDENT
        scores.confident_rows = int(sure.sum())
        scores.confident_accuracy = float((pred[sure] == labels[sure]).mean()) if sure.any() else None
    if len(labels):
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        scores.loss = float(-log_probs[np.arange(len(labels)), labels].mean())
    return scores


def evaluate(model: nn.Module, data: Tokenized, names: Sequence[str]) -> EvalScores:
    return score(predict(model, data), data.labels, names, data.confidence)


def train(
    model: nn.Module,
    train_data: Tokenized,
    validation: Tokenized,
    names: Sequence[str],
    config: TrainConfig,
    on_evaluation: Callable[[Evaluation, bool], None],
    progress: Callable[[int], Any] | None = None,
) -> TrainResult:
    """Train the model's trainable parameters, validating `evals_per_epoch` times an epoch.

    `on_evaluation(evaluation, is_best)` follows each validation; the caller keeps the best.

    The best evaluation is the one of highest validation accuracy (macro-F1 breaks ties).
    With no validation rows, every evaluation counts as the best, so the last one is kept.
    """
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    lengths = [len(r) for r in train_data.ids]
    per_epoch = math.ceil(len(train_data) / config.batch_size)
    total = max(1, math.ceil(per_epoch * config.epochs))
    warmup = int(total * config.warmup_fraction)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, total))
    eval_every = max(1, per_epoch // max(1, config.evals_per_epoch))
    device = _device_of(model)
    loss_fn = nn.CrossEntropyLoss(
        weight=_class_weights(train_data.labels, len(names)).to(device) if config.balance_classes else None,
        reduction="none",
        label_smoothing=config.label_smoothing,
    )
    result = TrainResult()
    bar = progress(total) if progress else None
    started = time.monotonic()
    step = 0
    model.train()
    while step < total:
        for rows in length_batches(lengths, config.batch_size, rng):
            batch = train_data.batch(rows, device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            losses = loss_fn(logits.float(), batch["labels"])
            weights = batch["weights"] if config.confidence_weighting else torch.ones_like(losses)
            loss = (losses * weights).sum() / weights.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if step % eval_every == 0 or step == total:
                _validate(model, validation, names, step / per_epoch, step, result, on_evaluation)
            if step >= total:
                break
    if bar is not None:
        bar.close()
    result.seconds = time.monotonic() - started
    result.steps = step
    return result


def _class_weights(labels: np.ndarray, n: int) -> torch.Tensor:
    """Inverse label frequency, mean 1 over rows: every label weighs as much in the loss."""
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    weights = len(labels) / (n * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _validate(
    model: nn.Module,
    validation: Tokenized,
    names: Sequence[str],
    epoch: float,
    step: int,
    result: TrainResult,
    on_evaluation: Callable[[Evaluation, bool], None],
) -> None:
    scores = evaluate(model, validation, names)
    evaluation = Evaluation(epoch=round(epoch, 3), step=step, scores=scores)
    result.evaluations.append(evaluation)
    log.info("epoch %.2f step %d validation %s", epoch, step, scores.summary())
    best = result.best
    better = (
        best is None
        or not len(validation)
        or ((scores.accuracy, scores.macro_f1) > (best.scores.accuracy, best.scores.macro_f1))
    )
    if better:
        result.best = evaluation
    on_evaluation(evaluation, better)
