"""Every knob of the server in one place: a pydantic-settings model.

Each field has a command-line flag (`--max-batch-tokens`) and an environment variable
(`WHYBERT_MAX_BATCH_TOKENS`); the flag wins over the variable, the variable over the
default. The flags are generated from the fields (the help text is the field's
description) and the constraints live on the fields, so a new setting is one field.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, get_args, get_origin

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "WHYBERT_"
LOOPBACK = "127.0.0.1"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class SettingsError(ValueError):
    """Settings that cannot work; the message is one line that names the flag."""


class ServerSettings(BaseSettings):
    """Configuration of one whybert server process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,  # WHYBERT_X= (empty) means "not set", as it always has
        frozen=True,
        extra="forbid",
    )

    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port.")
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 turns it off."
    )
    metrics_host: str = Field(
        "",
        description=(
            "Address of the /metrics endpoint; empty means --host, except 127.0.0.1 when TLS or "
            "tokens are on (HTTPS with the server's certificate under --tls-cert)."
        ),
    )
    model: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description=(
            "A model to serve, NAME=PATH to a Hugging Face sequence-classification directory "
            "(safetensors). Repeatable; the variable takes a comma-separated list."
        ),
        json_schema_extra={"metavar": "NAME=PATH"},
    )
    default_model: str = Field(
        "", description="Model used when a request names none; empty means the built-in 'sentiment'."
    )
    no_builtin_model: bool = Field(
        False, description="Do not load the built-in models ('sentiment' and 'entities')."
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description=(
            "Weights' type: auto (bfloat16 on a GPU that has it, else float16; float32 on CPU), "
            "float32, bfloat16 or float16."
        ),
    )
    cuda_graphs: bool = Field(
        True,
        description=(
            "On a GPU, replay the forward passes of recurring batch shapes from CUDA graphs: a "
            "batch of a few hundred short rows is otherwise bound by launching its kernels."
        ),
    )
    max_batch_tokens: PositiveInt = Field(
        8192,
        description="Token budget of one forward batch: longest row × rows, as TEI counts it (the rows' "
        "own tokens where a CPU model runs them packed).",
    )
    max_batch_ms: float = Field(
        200.0,
        ge=0,
        allow_inf_nan=False,
        description=(
            "Time one forward batch should take at most, learnt from the batches run: where "
            "the device is slow the token budget shrinks below --max-batch-tokens, so a "
            "Predict or a small explanation waits at most about this long behind heavy work. "
            "0: the token budget alone."
        ),
    )
    max_batch_delay_ms: float = Field(
        4.0, ge=0, allow_inf_nan=False, description="Longest wait for more rows before an under-full batch runs."
    )
    max_queued_rows: PositiveInt = Field(
        200_000, description="Rows a model's queue holds at most; beyond, RESOURCE_EXHAUSTED at once."
    )
    max_concurrent_requests: PositiveInt = Field(
        512, description="Requests in progress at once; beyond, RESOURCE_EXHAUSTED at once."
    )
    max_texts_per_request: PositiveInt = Field(64, description="Texts one request may carry.")
    max_chars_per_text: PositiveInt = Field(20_000, description="Characters (code points) one text may have.")
    max_evals_limit: PositiveInt = Field(4000, description="Largest SHAP max_evals a request may ask for.")
    max_lime_samples: PositiveInt = Field(10_000, description="Largest LIME num_samples a request may ask for.")
    max_ig_steps: PositiveInt = Field(512, description="Largest integrated-gradients n_steps a request may ask for.")
    max_attention_cells: PositiveInt = Field(
        1_048_576,
        description=(
            "Most raw attention weights (layers × heads × tokens²) one text's explanation may "
            "return (4 bytes each on the wire)."
        ),
    )
    max_rows_per_request: PositiveInt = Field(200_000, description="Model rows one request may cost in total.")
    max_stream_texts: PositiveInt = Field(
        10_000,
        description=(
            "Texts one PredictStream or ExplainStream request may carry; each text is held to "
            "the per-text limits and to the per-request row budget on its own."
        ),
    )
    stream_window: PositiveInt = Field(
        128,
        description=(
            "Texts one stream works on at once (started, result not yet sent): the next text "
            "starts only once a result has been written, so a slow reader slows its stream."
        ),
    )
    stream_window_bytes: PositiveInt = Field(
        32 * 1024 * 1024,
        description=(
            "Bytes the finished, unsent results of one ExplainStream may hold at most, as their "
            "replies are bounded before any work: a stream of large replies (raw attention maps) "
            "works on fewer texts at once than --stream-window."
        ),
    )
    explain_threads: PositiveInt = Field(
        32,
        description=(
            "LIME, integrated-gradient and faithfulness explanations computed at once (SHAP "
            "needs no thread: its rounds are scheduled work on the model's worker)."
        ),
    )
    cache_entries: NonNegativeInt = Field(
        4096, description="Finished explanations kept in memory; 0 turns the cache off."
    )
    cache_bytes: NonNegativeInt = Field(
        256 * 1024 * 1024,
        description=(
            "Estimated memory the cached explanations may hold, in bytes (least recently used "
            "go first); 0 turns the cache off."
        ),
    )
    reflection: bool = Field(True, description="Serve gRPC server reflection.")
    grace_seconds: float = Field(
        10.0, ge=0, allow_inf_nan=False, description="On SIGTERM/SIGINT, time calls in flight get to finish."
    )
    tls_cert: str = Field("", description="PEM certificate chain: serve TLS.")
    tls_key: str = Field("", description="PEM private key of --tls-cert.")
    tls_client_ca: str = Field("", description="PEM CA bundle: require client certificates (mutual TLS).")
    auth_tokens_file: str = Field(
        "", description="File of accepted bearer tokens, one a line: require authentication."
    )
    auth_tokens: SecretStr = Field(
        SecretStr(""), description="Accepted bearer tokens, comma-separated (prefer the variable or a file)."
    )
    max_message_bytes: PositiveInt = Field(
        8 * 1024 * 1024,
        description=(
            "Largest gRPC message received or sent; an Explain whose reply could be larger is "
            "refused before any work."
        ),
    )
    max_watch_streams: PositiveInt = Field(
        64,
        description=(
            "grpc.health.v1 Watch streams open at once (health needs no token); beyond, "
            "RESOURCE_EXHAUSTED at once."
        ),
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "warning", description="debug, info, warning or error."
    )

    @field_validator("model", mode="before")
    @classmethod
    def _split_model_list(cls, value: object) -> object:
        """The variable is one comma-separated string; the flag gives one pair per use."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("model")
    @classmethod
    def _check_model_pairs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Refuse a bad pair at start-up, before any model loads."""
        _model_paths(value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        """WHYBERT_LOG_LEVEL=INFO has always worked (logging's own spelling)."""
        return value.lower() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        """A typo must stop the start, not fall back to some device."""
        if not _DEVICE.fullmatch(value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        """A certificate without its key (or a client CA without TLS) cannot serve."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return self

    def model_paths(self) -> dict[str, str]:
        """The NAME=PATH pairs of --model, as a dict."""
        return _model_paths(self.model)

    def secured(self) -> bool:
        """Whether the gRPC side is locked (TLS or tokens), so /metrics should be too."""
        tokens = any(t.strip() for t in self.auth_tokens.get_secret_value().split(","))
        return bool(self.tls_cert or self.auth_tokens_file or tokens)

    def metrics_address(self) -> str:
        """Where /metrics listens: --metrics-host; else --host, but loopback on a secured
        server, whose metrics should not be open to everyone its gRPC port refuses."""
        if self.metrics_host:
            return self.metrics_host
        return LOOPBACK if self.secured() else self.host

    def describe(self) -> dict[str, Any]:
        """The settings for the start-up log line, secrets masked."""
        return self.model_dump(mode="json")


def _model_paths(specs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"expects NAME=PATH, got {spec!r}")
        if name.strip() in out:
            raise ValueError(f"model {name.strip()!r} is given twice")
        out[name.strip()] = path.strip()
    return out


def flag(name: str) -> str:
    """The command-line flag of a field."""
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    """The environment variable of a field."""
    return ENV_PREFIX + name.upper()


def _argument(name: str, info: FieldInfo) -> dict[str, Any]:
    """argparse keywords for one field. Unset flags stay None, so the environment and the
    default can fill them; values stay strings, so pydantic converts and checks them all."""
    default = info.default.get_secret_value() if isinstance(info.default, SecretStr) else info.default
    help_text = f"{info.description} [env {env_name(name)}; default {default!r}]"
    kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text.replace("%", "%%")}
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "metavar" in extra:
        kwargs["metavar"] = extra["metavar"]
    if info.annotation is bool:
        # A switch that is on by default gets --no-X as well; one off by default is a flag.
        if default:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(action="store_const", const=True)
    elif get_origin(info.annotation) is tuple:
        kwargs["action"] = "append"
    elif get_origin(info.annotation) is Literal:
        kwargs["choices"] = get_args(info.annotation)
    return kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per settings field."""
    for name, info in ServerSettings.model_fields.items():
        parser.add_argument(flag(name), **_argument(name, info))


def from_sources(args: argparse.Namespace | None = None) -> ServerSettings:
    """Settings from the parsed flags, then the WHYBERT_* variables, then the defaults.

    Raises SettingsError, one line naming the flag (and the variable when the value came
    from it), instead of pydantic's multi-line report.
    """
    given = {
        name: getattr(args, name)
        for name in ServerSettings.model_fields
        if getattr(args, name, None) is not None
    }
    try:
        return ServerSettings(**given)
    except ValidationError as exc:
        raise SettingsError("; ".join(_explain(e, given, os.environ) for e in exc.errors())) from None


def _explain(error: ErrorDetails, given: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """One problem as 'where: what', where being the flag, or the variable and its flag."""
    cause = (error.get("ctx") or {}).get("error")
    what = str(cause) if error["type"] == "value_error" and cause is not None else error["msg"]
    if not error["loc"]:
        return what  # a cross-field check, whose message names the flags
    name = str(error["loc"][0])
    info = ServerSettings.model_fields.get(name)
    secret = info is not None and info.annotation is SecretStr
    if name in given:
        shown = f" {given[name]!r}" if isinstance(given[name], str) and not secret else ""
        return f"{flag(name)}{shown}: {what}"
    if env_name(name) in environ:
        shown = "" if secret else f"={environ[env_name(name)]!r}"
        return f"{env_name(name)}{shown} ({flag(name)}): {what}"
    return f"{flag(name)}: {what}"
