"""Loading Hugging Face classifier directories safely: safetensors only, no remote code, offline."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .classifier import Classifier
from .pair_classifier import PairClassifier, is_text_pair
from .token_classifier import TokenClassifier

log = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelLoadError(RuntimeError):
    """A model directory cannot be served; the message says why and what to do."""


def resolve_device(spec: str) -> torch.device:
    """`auto` picks the first GPU when there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {spec}: no CUDA device is available")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """Half precision on a GPU (bfloat16 where supported), float32 on the CPU."""
    if spec == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtype: torch.dtype = getattr(torch, spec)
    if device.type == "cpu" and dtype == torch.float16:
        raise ModelLoadError("--dtype float16 is not supported on the CPU; use float32 or bfloat16")
    return dtype


def sha256_files(paths: Iterable[Path], extra: bytes = b"") -> str:
    """One SHA-256 over the given files' bytes (in the order given) and `extra`."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    digest.update(extra)
    return digest.hexdigest()


def check_directory(path: Path) -> list[Path]:
    """Refuse directories that would need pickle or remote code; return the weight files."""
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model directory")
    config = json.loads(config_file.read_text())
    if "auto_map" in config:
        raise ModelLoadError(f"{path} needs remote code (auto_map in config.json); whybert never runs it")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = [p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES]
        hint = f" (found {', '.join(pickled)}: convert them to safetensors)" if pickled else ""
        raise ModelLoadError(f"{path} has no .safetensors weights{hint}; whybert never unpickles")
    return weights


def labels_of(config: Any) -> list[str]:
    """The model's label names in output order."""
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    n = int(config.num_labels)
    return [id2label.get(i, f"LABEL_{i}") for i in range(n)]


# The fastest attention that transformers offers without extra packages: PyTorch's SDPA.
ATTENTION_IMPLEMENTATION = "sdpa"
# Local files only and no remote code, for every model and tokenizer whybert loads.
_LOCAL: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}


def model_load_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    """`from_pretrained` arguments of a model: local files, no remote code, safetensors only, SDPA."""
    return {**_LOCAL, "use_safetensors": True, "dtype": dtype, "attn_implementation": ATTENTION_IMPLEMENTATION}


@dataclass(frozen=True)
class LoadedDirectory:
    """A checked model directory's model (on its device) and fast tokenizer."""

    root: Path
    weights: list[Path]
    model: torch.nn.Module
    tokenizer: Any


def is_token_classification(root: Path) -> bool:
    """Whether a checked directory holds a token-classification model (`*ForTokenClassification`)."""
    config = json.loads((root / "config.json").read_text())
    return any(str(a).endswith("ForTokenClassification") for a in config.get("architectures") or [])


def load_pretrained(
    name: str, path: str | Path, device: torch.device, dtype: torch.dtype, *, token: bool = False
) -> LoadedDirectory:
    """Check a sequence- (or, with `token`, token-) classification directory and load its
    model and fast tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    root = Path(path).expanduser().resolve()
    weights = check_directory(root)
    auto = AutoModelForTokenClassification if token else AutoModelForSequenceClassification
    try:
        tokenizer = AutoTokenizer.from_pretrained(root, use_fast=True, **_LOCAL)
        model = _from_pretrained(auto, root, dtype, device)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model {name!r} from {root}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"model {name!r}: whybert needs a fast (Rust) tokenizer in {root}")
    return LoadedDirectory(root=root, weights=weights, model=model, tokenizer=tokenizer)


def load_directory(name: str, path: str | Path, device: torch.device, dtype: torch.dtype) -> Classifier:
    """Load a sequence-classification directory as a `Classifier` (a `PairClassifier` when
    its config.json marks a text-pair model), or a token-classification one (its config's
    architecture `*ForTokenClassification`) as a `TokenClassifier`."""
    root = Path(path).expanduser().resolve()
    check_directory(root)
    if is_token_classification(root):
        return load_token_directory(name, root, device, dtype)
    loaded = load_pretrained(name, path, device, dtype)
    kind = PairClassifier if is_text_pair(root) else Classifier  # pairs: see pair_classifier
    return kind(
        name=name,
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        labels=labels_of(loaded.model.config),
        device=device,
        weights_sha256=sha256_files(loaded.weights),
        source=str(loaded.root),
    )


def load_token_directory(name: str, path: str | Path, device: torch.device, dtype: torch.dtype) -> TokenClassifier:
    """Load a token-classification directory (BIO/IOB2 tags) as a `TokenClassifier`."""
    loaded = load_pretrained(name, path, device, dtype, token=True)
    labels = labels_of(loaded.model.config)
    odd = [label for label in labels if label != "O" and not label.startswith(("B-", "I-"))]
    if odd:
        raise ModelLoadError(f"model {name!r}: tags {odd[:5]} are not BIO/IOB2 (O, B-TYPE, I-TYPE)")
    return TokenClassifier(
        name=name,
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        labels=labels,
        device=device,
        weights_sha256=sha256_files(loaded.weights),
        source=str(loaded.root),
    )


def _from_pretrained(cls: Any, root: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    kwargs = model_load_kwargs(dtype)
    try:
        model = cls.from_pretrained(root, **kwargs)
    except (ValueError, ImportError):
        log.info("model at %s has no SDPA attention; using the eager one", root)
        model = cls.from_pretrained(root, **{**kwargs, "attn_implementation": "eager"})
    module: torch.nn.Module = model.to(device).eval()
    return module
