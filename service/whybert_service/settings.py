"""Every knob of the server in one place.

Each field has a command-line flag (`--max-batch-tokens`) and an environment variable
(`WHYBERT_MAX_BATCH_TOKENS`); the flag wins over the variable, the variable over the
default. The help text of each flag is the field's `doc`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "WHYBERT_"


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": text, **extra}


@dataclass(frozen=True)
class ServerSettings:
    """Configuration of one whybert server process."""

    host: str = field(default="0.0.0.0", metadata=_doc("Address to listen on."))
    port: int = field(default=50051, metadata=_doc("gRPC port."))
    metrics_port: int = field(
        default=9464, metadata=_doc("Port of the Prometheus /metrics endpoint; 0 turns it off.")
    )
    model: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "A model to serve, NAME=PATH to a Hugging Face sequence-classification directory "
            "(safetensors). Repeatable; the variable takes a comma-separated list.",
            repeat=True,
        ),
    )
    default_model: str = field(
        default="",
        metadata=_doc("Model used when a request names none; empty means the built-in 'sentiment'."),
    )
    no_builtin_model: bool = field(
        default=False, metadata=_doc("Do not load the built-in 'sentiment' model.")
    )
    device: str = field(
        default="auto", metadata=_doc("auto, cpu, cuda or cuda:N.")
    )
    dtype: str = field(
        default="auto",
        metadata=_doc(
            "Weights' type: auto (bfloat16 on a GPU that has it, else float16; float32 on CPU), "
            "float32, bfloat16 or float16.",
            choices=("auto", "float32", "bfloat16", "float16"),
        ),
    )
    max_batch_tokens: int = field(
        default=8192,
        metadata=_doc("Token budget of one forward batch: longest row × rows, as TEI counts it."),
    )
    max_batch_delay_ms: float = field(
        default=4.0,
        metadata=_doc("Longest wait for more rows before an under-full batch runs."),
    )
    max_queued_rows: int = field(
        default=200_000,
        metadata=_doc("Rows a model's queue holds at most; beyond, RESOURCE_EXHAUSTED at once."),
    )
    max_concurrent_requests: int = field(
        default=512,
        metadata=_doc("Requests in progress at once; beyond, RESOURCE_EXHAUSTED at once."),
    )
    max_texts_per_request: int = field(default=64, metadata=_doc("Texts one request may carry."))
    max_chars_per_text: int = field(
        default=20_000, metadata=_doc("Characters (code points) one text may have.")
    )
    max_evals_limit: int = field(
        default=4000, metadata=_doc("Largest SHAP max_evals a request may ask for.")
    )
    max_lime_samples: int = field(
        default=10_000, metadata=_doc("Largest LIME num_samples a request may ask for.")
    )
    max_ig_steps: int = field(
        default=512, metadata=_doc("Largest integrated-gradients n_steps a request may ask for.")
    )
    max_rows_per_request: int = field(
        default=200_000, metadata=_doc("Model rows one request may cost in total.")
    )
    explain_threads: int = field(
        default=32,
        metadata=_doc(
            "LIME, integrated-gradient and faithfulness explanations computed at once (SHAP "
            "needs no thread: its rounds are scheduled work on the model's worker)."
        ),
    )
    cache_entries: int = field(
        default=4096, metadata=_doc("Finished explanations kept in memory; 0 turns the cache off.")
    )
    cache_bytes: int = field(
        default=256 * 1024 * 1024,
        metadata=_doc(
            "Estimated memory the cached explanations may hold, in bytes (least recently used "
            "go first); 0 turns the cache off."
        ),
    )
    reflection: bool = field(
        default=True, metadata=_doc("Serve gRPC server reflection.", negatable=True)
    )
    grace_seconds: float = field(
        default=10.0, metadata=_doc("On SIGTERM/SIGINT, time calls in flight get to finish.")
    )
    tls_cert: str = field(default="", metadata=_doc("PEM certificate chain: serve TLS."))
    tls_key: str = field(default="", metadata=_doc("PEM private key of --tls-cert."))
    tls_client_ca: str = field(
        default="", metadata=_doc("PEM CA bundle: require client certificates (mutual TLS).")
    )
    auth_tokens_file: str = field(
        default="",
        metadata=_doc("File of accepted bearer tokens, one a line: require authentication."),
    )
    auth_tokens: str = field(
        default="",
        metadata=_doc("Accepted bearer tokens, comma-separated (prefer the variable or a file)."),
    )
    max_message_bytes: int = field(
        default=8 * 1024 * 1024,
        metadata=_doc(
            "Largest gRPC message received or sent; an Explain whose reply could be larger is "
            "refused before any work."
        ),
    )
    max_watch_streams: int = field(
        default=64,
        metadata=_doc(
            "grpc.health.v1 Watch streams open at once (health needs no token); beyond, "
            "RESOURCE_EXHAUSTED at once."
        ),
    )
    log_level: str = field(
        default="warning",
        metadata=_doc("debug, info, warning or error.", choices=("debug", "info", "warning", "error")),
    )

    def model_paths(self) -> dict[str, str]:
        """Parse the NAME=PATH pairs of --model."""
        out: dict[str, str] = {}
        for spec in self.model:
            name, sep, path = spec.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"--model expects NAME=PATH, got {spec!r}")
            if name.strip() in out:
                raise ValueError(f"model {name.strip()!r} is given twice")
            out[name.strip()] = path.strip()
        return out


# Field types are strings (postponed annotations); those that argparse and the
# environment must convert.
_CONVERTERS: dict[str, Callable[[str], Any]] = {"int": int, "float": float}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_value(f: dataclasses.Field[Any], raw: str) -> Any:
    if f.metadata.get("repeat"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if f.type == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return _CONVERTERS.get(str(f.type), str)(raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per settings field; defaults stay unset so the environment can fill them."""
    for f in dataclasses.fields(ServerSettings):
        help_text = f"{f.metadata['doc']} [env {ENV_PREFIX}{f.name.upper()}; default {f.default!r}]"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if f.metadata.get("repeat"):
            parser.add_argument(_flag(f.name), action="append", metavar="NAME=PATH", **kwargs)
        elif f.type == "bool":
            action = argparse.BooleanOptionalAction if f.metadata.get("negatable") else "store_const"
            if action == "store_const":
                kwargs["const"] = True
            parser.add_argument(_flag(f.name), action=action, **kwargs)
        else:
            type_ = _CONVERTERS.get(str(f.type), str)
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            parser.add_argument(_flag(f.name), type=type_, **kwargs)


def from_sources(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> ServerSettings:
    """Build settings from parsed flags, then the environment, then the defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServerSettings):
        given = getattr(args, f.name, None) if args is not None else None
        env_raw = environ.get(ENV_PREFIX + f.name.upper())
        if given is not None:
            values[f.name] = tuple(given) if isinstance(given, list) else given
        elif env_raw is not None and env_raw != "":
            try:
                values[f.name] = _env_value(f, env_raw)
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={env_raw!r}: {exc}") from exc
    settings = ServerSettings(**values)
    validate(settings)
    return settings


def validate(settings: ServerSettings) -> None:
    """Refuse settings that cannot work, with the flag's name in the message."""
    positive = (
        "max_batch_tokens",
        "max_queued_rows",
        "max_concurrent_requests",
        "max_texts_per_request",
        "max_chars_per_text",
        "max_evals_limit",
        "max_lime_samples",
        "max_ig_steps",
        "max_rows_per_request",
        "explain_threads",
        "max_message_bytes",
        "max_watch_streams",
    )
    for name in positive:
        if getattr(settings, name) <= 0:
            raise ValueError(f"{_flag(name)} must be positive")
    for name in ("cache_entries", "cache_bytes"):
        if getattr(settings, name) < 0:
            raise ValueError(f"{_flag(name)} must not be negative (0 turns the cache off)")
    if settings.max_batch_delay_ms < 0 or settings.grace_seconds < 0:
        raise ValueError("--max-batch-delay-ms and --grace-seconds must not be negative")
    if not settings.device == "auto" and not settings.device.startswith(("cpu", "cuda")):
        raise ValueError("--device must be auto, cpu, cuda or cuda:N")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if settings.tls_client_ca and not settings.tls_cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    settings.model_paths()


def describe(settings: ServerSettings) -> Sequence[tuple[str, Any]]:
    """The settings as (name, value) pairs, secrets hidden, for the start-up log line."""
    hidden = {"auth_tokens"}
    return [
        (f.name, "***" if f.name in hidden and getattr(settings, f.name) else getattr(settings, f.name))
        for f in dataclasses.fields(ServerSettings)
    ]
