"""`whybert train --task entities`: the built-in `entities` model, LoRA on MiniLM, CoNLL-2003.

Labelling follows what serving's grouping (transformers' pipeline with
`aggregation_strategy="first"`) reads: a word's tag sits on its first word piece, every
other piece (and [CLS]/[SEP]) gets -100 and is ignored by the loss. Evaluation predicts a
word's tag from its first piece and scores whole entities with seqeval (exact span and
type, micro-averaged over entities, per type), as the CoNLL shared task does.

The recipe (see `default_entities_model/MODEL_CARD.md`): peft LoRA on every linear layer of
the encoder, with those layers' biases, the LayerNorms and the token-classification head
trained outright; AdamW with linear warm-up and decay; the dev split picks the best epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import conll
from .conll import LABELS, Sentence

log = logging.getLogger(__name__)

IGNORE = -100  # the label of pieces that the loss skips


@dataclass(frozen=True)
class Encoded:
    """One sentence as word pieces: ids, labels (-100 off first pieces) and each word's first piece."""

    ids: list[int]
    labels: list[int]
    first_piece: list[int]  # per word; -1 when the word fell beyond max_length or has no piece


def encode(tokenizer: Any, sentence: Sentence, max_length: int) -> Encoded:
    """Tokenise pre-split words and put each word's tag on its first piece."""
    label_id = {label: i for i, label in enumerate(LABELS)}
    enc = tokenizer(list(sentence.words), is_split_into_words=True, truncation=True, max_length=max_length)
    word_ids = enc.word_ids()
    labels = [IGNORE] * len(word_ids)
    first = [-1] * len(sentence.words)
    previous: int | None = None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            labels[position] = label_id[sentence.tags[word]]
            first[word] = position
        previous = word
    return Encoded(list(enc["input_ids"]), labels, first)


def _batch(rows: Sequence[Encoded], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.ids)
        ids[i, :n] = torch.tensor(row.ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(row.labels)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


@torch.no_grad()
def predict_tags(
    model: nn.Module, rows: Sequence[Encoded], pad_id: int, device: torch.device, batch_size: int = 64
) -> list[list[str]]:
    """Each word's tag, read from its first piece (O for a word the model never saw)."""
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    out: list[list[str]] = [[] for _ in rows]
    for start in range(0, len(order), batch_size):
        chunk = [rows[i] for i in order[start : start + batch_size]]
        batch = _batch(chunk, pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        best = logits.argmax(-1).cpu().tolist()
        for index, row, predicted in zip(order[start : start + batch_size], chunk, best, strict=True):
            out[index] = [LABELS[predicted[p]] if p >= 0 else "O" for p in row.first_piece]
    return out


def score(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, Any]:
    """seqeval's entity-level figures: micro precision / recall / F1 and F1 per type."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    report = classification_report(list(map(list, gold)), list(map(list, predicted)), output_dict=True, zero_division=0)
    per_type = {
        kind: {
            "precision": round(float(v["precision"]), 4),
            "recall": round(float(v["recall"]), 4),
            "f1": round(float(v["f1-score"]), 4),
            "support": int(v["support"]),
        }
        for kind, v in sorted(report.items())
        if not kind.endswith(" avg")
    }
    g, p = list(map(list, gold)), list(map(list, predicted))
    return {
        "sentences": len(gold),
        "precision": round(float(precision_score(g, p, zero_division=0)), 4),
        "recall": round(float(recall_score(g, p, zero_division=0)), 4),
        "f1": round(float(f1_score(g, p, zero_division=0)), 4),
        "per_type": per_type,
    }


def evaluate(
    model: nn.Module, tokenizer: Any, sentences: Sequence[Sentence], device: torch.device, max_length: int
) -> dict[str, Any]:
    rows = [encode(tokenizer, s, max_length) for s in sentences]
    predicted = predict_tags(model, rows, tokenizer.pad_token_id, device)
    return score([s.tags for s in sentences], predicted)


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one run (all recorded in the report)."""

    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    max_length: int = 128
    eval_max_length: int = 256
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    seed: int = 13


def load_base(base: Path) -> tuple[Any, nn.Module]:
    """Tokenizer and a fresh `BertForTokenClassification` (head initialised) on the encoder."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ..models.loading import model_load_kwargs

    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True, use_fast=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "classifier weights newly initialised" is expected
    hf_logging.disable_progress_bar()  # the weight-loading bar; training has its own
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            base,
            **model_load_kwargs(torch.float32),
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id={label: i for i, label in enumerate(LABELS)},
            ignore_mismatched_sizes=True,  # a base that is itself a classifier gets a new head
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return tokenizer, model


def with_lora(model: nn.Module, recipe: Recipe) -> nn.Module:
    """peft LoRA on every encoder linear layer; biases, LayerNorms and the head trained whole."""
    from peft import LoraConfig

    from .lora import lora_targets, trained_whole
    from .lora import with_lora as wrap

    config = LoraConfig(
        task_type="TOKEN_CLS",
        r=recipe.lora_rank,
        lora_alpha=int(recipe.lora_alpha) if float(recipe.lora_alpha).is_integer() else recipe.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=recipe.lora_dropout,
        target_modules=lora_targets(model),
        bias="lora_only",
        modules_to_save=trained_whole(model),
    )
    return wrap(model, config)


def train(
    model: nn.Module,
    rows: Sequence[Encoded],
    pad_id: int,
    recipe: Recipe,
    device: torch.device,
    on_epoch: Callable[[int], None],
    progress: bool = True,
) -> float:
    """AdamW over shuffled length-bucketed batches; `on_epoch(epoch)` after each epoch; seconds."""
    from tqdm import tqdm

    rng = random.Random(recipe.seed)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in params if ".classifier." in n]
    rest = [p for n, p in params if ".classifier." not in n]
    optimizer = torch.optim.AdamW(
        [{"params": rest, "lr": recipe.lr}, {"params": head, "lr": recipe.head_lr}],
        weight_decay=recipe.weight_decay,
    )
    per_epoch = math.ceil(len(rows) / recipe.batch_size)
    total = per_epoch * recipe.epochs
    warmup = max(1, int(total * recipe.warmup_fraction))

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    started = time.monotonic()
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress)
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        order = sorted(range(len(rows)), key=lambda i: (len(rows[i].ids), rng.random()))
        batches = [order[i : i + recipe.batch_size] for i in range(0, len(order), recipe.batch_size)]
        rng.shuffle(batches)
        for indices in batches:
            batch = _batch([rows[i] for i in indices], pad_id, device)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            optimizer.step()
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        on_epoch(epoch)
    bar.close()
    return time.monotonic() - started


def run(args: argparse.Namespace) -> int:
    """Train, keep the best dev epoch, write the adapter (or a merged model) and the report."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from ..models.adapter import ADAPTER_CONFIG, ADAPTER_INFO, ADAPTER_WEIGHTS
    from ..models.builtin import describe_encoder, encoder_dir, file_hashes
    from ..models.loading import resolve_device
    from .lora import adapter_state, config_json, merged

    recipe = Recipe(
        epochs=max(1, int(args.epochs)),
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else Recipe.lr,
        head_lr=args.lr if args.lr is not None else Recipe.head_lr,
        weight_decay=args.weight_decay,
        warmup_fraction=args.warmup_fraction,
        max_length=args.max_length,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        seed=args.seed,
    )
    if recipe.lora_rank <= 0:
        raise ValueError("--task entities trains LoRA adapters: --lora-rank must be > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    corpus = conll.read_corpus(Path(args.corpus_cache) if getattr(args, "corpus_cache", None) else None)
    train_sentences = corpus["train"][: args.max_train_rows] if args.max_train_rows else corpus["train"]
    tqdm.write(
        f"CoNLL-2003: train {len(train_sentences)}, dev {len(corpus['valid'])}, test {len(corpus['test'])} sentences"
    )
    base = Path(args.base) if args.base else encoder_dir()
    device = resolve_device(args.device)
    torch.manual_seed(recipe.seed)
    tokenizer, plain = load_base(base)
    model = with_lora(plain, recipe).to(device)
    rows = [encode(tokenizer, s, recipe.max_length) for s in train_sentences]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"f1": -1.0}
    encoder = describe_encoder(base) if not args.base else {"path": str(args.base), "sha256": file_hashes(base)}
    info = {
        "format": "whybert-peft-adapter/2",
        "task": "token-classification",
        "labels": list(LABELS),
        "encoder": encoder,
        "frozen_layers": 0,
        "train_max_length": recipe.max_length,
    }

    def on_epoch(epoch: int) -> None:
        dev = evaluate(model, tokenizer, corpus["valid"], device, recipe.eval_max_length)
        history.append({"epoch": epoch, "dev": dev})
        is_best = dev["f1"] > best["f1"]
        tqdm.write(f"epoch {epoch}: dev F1 {dev['f1']:.4f}" + ("  (best so far, saved)" if is_best else ""))
        if is_best:
            best.update(f1=dev["f1"], epoch=epoch, state=adapter_state(model))
            if args.format == "adapter":
                save_file(best["state"], str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
                (out / ADAPTER_CONFIG).write_text(config_json(model, None))
                (out / ADAPTER_INFO).write_text(json.dumps(info, indent=2) + "\n")

    seconds = train(model, rows, tokenizer.pad_token_id, recipe, device, on_epoch, not args.no_progress)
    _restore(model, best["state"])
    final = merged(model).eval()
    if args.format == "hf":
        final.to("cpu").save_pretrained(out, safe_serialization=True)  # type: ignore[operator]
        tokenizer.save_pretrained(out)
        final.to(device)
    figures = {
        name: evaluate(final, tokenizer, corpus[name], device, recipe.eval_max_length) for name in ("valid", "test")
    }
    report = {
        "command": args.command if hasattr(args, "command") else None,
        "task": "entities",
        "data": {
            "corpus": f"{conll.DISTRIBUTION}=={conll.VERSION}:{conll.MEMBER_DIR}/{{train,valid,test}}.txt",
            "sha256": {name: sha for name, (sha, _) in conll.SPLITS.items()},
            "sentences": {"train": len(train_sentences), "valid": len(corpus["valid"]), "test": len(corpus["test"])},
            "licence": conll.LICENCE,
        },
        "labels": list(LABELS),
        "recipe": asdict(recipe),
        "epochs": history,
        "best_epoch": best["epoch"],
        "dev": figures["valid"],
        "test": figures["test"],
        "train_seconds": round(seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "machine": {
            "device": str(device),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    tqdm.write(f"dev F1 {figures['valid']['f1']:.4f}, test F1 {figures['test']['f1']:.4f}; wrote {out}")
    return 0


@torch.no_grad()
def _restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put peft's saved tensors (adapter_state's keys) back into the wrapped model."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, state)
