"""`whybert export-model NAME --out DIR`: any model the server knows, as a plain HF directory.

The built-in `sentiment` model is written with its adapter merged onto the encoder, so
`AutoModelForSequenceClassification.from_pretrained(DIR)` gives the logits the server
gives, anywhere, with no whybert installed. A `--model NAME=PATH` model is loaded as the
server loads it and written back out (safetensors, fast tokenizer).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from .builtin import BUILTIN_NAME, ENTITIES_NAME
from .loading import ModelLoadError, load_pretrained


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `whybert export-model`; --model and --no-builtin-model are the server's."""
    parser.add_argument("name", metavar="NAME", help=f"Model to export ({BUILTIN_NAME!r} or a --model NAME).")
    parser.add_argument("--out", metavar="DIR", required=True, help="Directory to write (empty or new).")
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME=PATH",
        help="A model as the server takes it (repeatable) [env WHYBERT_MODEL].",
    )
    parser.add_argument(
        "--no-builtin-model",
        action="store_const",
        const=True,
        default=None,
        help=f"Do not offer the built-in {BUILTIN_NAME!r} model [env WHYBERT_NO_BUILTIN_MODEL].",
    )
    parser.add_argument("--force", action="store_true", help="Write into a non-empty --out.")


def run_export(args: argparse.Namespace) -> int:
    """Export one model; 0 on success, 2 when the name or the output is wrong."""
    from ..settings import from_sources

    try:
        settings = from_sources(argparse.Namespace(model=args.model, no_builtin_model=args.no_builtin_model))
        paths = settings.model_paths()
        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not args.force:
            raise ValueError(f"{out} is not empty (use --force to write into it)")
        model, tokenizer, readme = _resolve(args.name, paths, not settings.no_builtin_model)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        if readme is not None and readme.is_file():
            shutil.copyfile(readme, out / "README.md")
    except (ModelLoadError, ValueError, OSError) as exc:
        print(f"whybert export-model: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.name!r} to {out}")
    return 0


def _resolve(name: str, paths: dict[str, str], builtin: bool) -> tuple[Any, Any, Path | None]:
    """The named model in float32 on the CPU, its tokenizer, and a model card to copy."""
    if name in paths:
        loaded = load_pretrained(name, paths[name], torch.device("cpu"), torch.float32)
        return loaded.model, loaded.tokenizer, None
    if name == BUILTIN_NAME and builtin:
        from .builtin import ADAPTER_DIR, build_builtin

        built = build_builtin()
        return built.model, built.tokenizer, ADAPTER_DIR / "MODEL_CARD.md"
    if name == ENTITIES_NAME and builtin:
        from .builtin import ENTITIES_ADAPTER_DIR, build_builtin

        built = build_builtin(ENTITIES_ADAPTER_DIR, token_classification=True)
        return built.model, built.tokenizer, ENTITIES_ADAPTER_DIR / "MODEL_CARD.md"
    known = sorted(paths) + ([BUILTIN_NAME, ENTITIES_NAME] if builtin else [])
    raise ValueError(f"no model named {name!r} (known: {', '.join(known) or 'none'})")
