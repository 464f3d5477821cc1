"""The client's core, shared by `Client` and `AsyncClient`: configuration, channel options
and opening, request building and response parsing. It does no I/O (channels connect
lazily, on the first call)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from ._exceptions import ResourceExhaustedError, WhybertError, from_rpc_error
from ._types import (
    EXPLAINER_ALIASES,
    EXPLAINER_KINDS,
    OUTPUT_SPACES,
    Explanation,
    ModelInfo,
    Prediction,
    Progress,
)
from .v1 import explainer_pb2 as pb
from .v1 import explainer_pb2_grpc as pb_grpc

SERVICE = "whybert.v1.Explainer"
DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT = 120.0


class _UseClientDefault:
    """Marks a `timeout=` left out, as opposed to `timeout=None` (wait forever)."""

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT: Any = _UseClientDefault()

FIXED_CONTEXTS = {None: pb.FIXED_CONTEXT_UNSPECIFIED, 0: pb.FIXED_CONTEXT_ZERO, 1: pb.FIXED_CONTEXT_ONE}
EXPLAIN_OPTIONS = (
    "max_evals", "fixed_context", "batch_size",      # shap-partition
    "num_samples", "num_features", "random_seed",    # lime
    "n_steps",                                       # integrated-gradients
    "raw_attention", "attention_layers", "attention_heads",  # attention
    "output", "targets", "faithfulness",             # every explainer
    "entity",                                        # token models: 0 | (start, end) | "all"
    "pairs",                                         # text-pair models: one second text per text
)


def service_config(retries: int) -> str:
    """Round-robin over every address, and retry UNAVAILABLE with exponential backoff."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retries > 0:
        config["methodConfig"] = [
            {
                "name": [{"service": SERVICE}, {"service": "grpc.health.v1.Health"}],
                "retryPolicy": {
                    "maxAttempts": min(retries + 1, 5),
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def channel_target(targets: str | Sequence[str]) -> str:
    """One gRPC target for one or several `host:port` addresses.

    Several IP addresses become an `ipv4:`/`ipv6:` list, which the round-robin policy
    spreads calls over; a single name is passed as is (DNS may give several addresses).
    """
    items = _as_list(targets)
    if not items:
        raise ValueError("no target given")
    if len(items) == 1:
        return items[0]
    families = {_family(t) for t in items}
    if families == {"ipv4"}:
        return "ipv4:" + ",".join(items)
    if families == {"ipv6"}:
        return "ipv6:" + ",".join(items)
    raise ValueError(
        "several targets must all be IPv4 or all IPv6 addresses (host:port); for names, "
        "use one DNS name that resolves to every replica (dns:///name:port)"
    )


def _family(target: str) -> str:
    host = target.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return "ipv4" if target.startswith("localhost") else "name"
    try:
        return "ipv6" if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address) else "ipv4"
    except ValueError:
        return "name"


@dataclass(frozen=True)
class TLSConfig:
    """Client-side TLS: the CA that signed the server, and a client pair for mutual TLS."""

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_cert),
            private_key=read(self.client_key),
            certificate_chain=read(self.client_cert),
        )


class BaseClient:
    """Everything both faces share; subclasses add only the calls."""

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        token: str | None = None,
        tls: TLSConfig | bool | None = None,
        retries: int = 4,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.target = channel_target(target)
        self.timeout = timeout
        self.token = token
        self.tls = TLSConfig() if tls is True else (tls or None)
        self.retries = retries
        self.max_message_bytes = max_message_bytes

    def _open(self, secure: Callable[..., Any], insecure: Callable[..., Any]) -> None:
        """Open the channel, its stub and the health call, with `grpc.*` or `grpc.aio.*`
        channel constructors (`secure_channel`, `insecure_channel`)."""
        creds = self.credentials()
        options = self.channel_options()
        self._channel = (
            secure(self.target, creds, options=options)
            if creds is not None
            else insecure(self.target, options=options)
        )
        self._stub = pb_grpc.ExplainerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel).Check

    def channel_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.service_config", service_config(self.retries)),
            ("grpc.enable_retries", 1 if self.retries > 0 else 0),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", 120_000),
        ]

    def credentials(self) -> grpc.ChannelCredentials | None:
        return None if self.tls is None else self.tls.credentials()

    def metadata(self) -> list[tuple[str, str]] | None:
        """The bearer token travels as call metadata (on plain channels too, unlike call
        credentials); use TLS wherever the network is not trusted."""
        return [("authorization", f"Bearer {self.token}")] if self.token else None

    def call_timeout(self, timeout: Any) -> float | None:
        return self.timeout if timeout is USE_CLIENT_DEFAULT else timeout

    def stream_timeout(self, timeout: Any, request: Any) -> float | None:
        """A stream's deadline: the one given, or by default the client's timeout for each of
        the request's texts (a stream of thousands of texts runs far longer than one call
        may; a progressive explanation is one text)."""
        if timeout is not USE_CLIENT_DEFAULT:
            return timeout
        return None if self.timeout is None else self.timeout * max(1, len(getattr(request, "texts", ())))

    # ---- requests ------------------------------------------------------------------------

    @staticmethod
    def predict_request(
        texts: Sequence[str] | str, model: str | None, pairs: Sequence[str] | str | None = None
    ) -> pb.PredictRequest:
        return pb.PredictRequest(model=model or "", texts=_texts(texts), pairs=_pairs(pairs))

    def predict_stream_request(
        self, texts: Iterable[str] | str, model: str | None, pairs: Iterable[str] | str | None = None
    ) -> pb.PredictStreamRequest:
        request = pb.PredictStreamRequest(model=model or "", texts=_texts(texts), pairs=_pairs(pairs))
        self.check_request_size(request)
        return request

    @staticmethod
    def explain_request(
        texts: Sequence[str] | str, model: str | None, explainer: str, options: dict[str, Any]
    ) -> pb.ExplainRequest:
        req = pb.ExplainRequest()
        _fill_explain_request(req, texts, model, explainer, options)
        return req

    def explain_stream_request(
        self, texts: Iterable[str] | str, model: str | None, explainer: str, options: dict[str, Any]
    ) -> pb.ExplainStreamRequest:
        req = pb.ExplainStreamRequest()
        _fill_explain_request(req, texts, model, explainer, options)
        self.check_request_size(req)
        return req

    @staticmethod
    def progressive_request(
        text: str, model: str | None, interval: float | None, options: dict[str, Any]
    ) -> pb.ExplainProgressiveRequest:
        """One text, SHAP Partition's options (output, targets, max_evals, batch_size,
        fixed_context), and the least time between messages in seconds."""
        allowed = {"output", "targets", "max_evals", "batch_size", "fixed_context", "entity", "pair"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise TypeError(f"unknown option(s) of a progressive explanation: {', '.join(unknown)}")
        single = pb.ExplainRequest()
        pair = options.get("pair")
        rest = {k: v for k, v in options.items() if k != "pair"}
        _fill_explain_request(single, [text], model, "shap-partition", rest)
        req = pb.ExplainProgressiveRequest(
            model=single.model, text=text, output=single.output, target_mode=single.target_mode,
            target_labels=single.target_labels, shap=single.shap, pair=_pairs(pair)[0] if pair is not None else "",
        )
        if single.HasField("entity"):
            req.entity.CopyFrom(single.entity)
        if interval is not None:
            req.interval_ms = max(0, round(interval * 1000))
        return req

    def check_request_size(self, request: pb.PredictStreamRequest | pb.ExplainStreamRequest) -> None:
        """A stream's texts all travel in its one request message: refuse, before sending, one
        larger than this client's message limit (the server's, `--max-message-bytes`, 8 MiB
        by default, may be smaller: `stream_error` explains that refusal)."""
        size = request.ByteSize()
        if size > self.max_message_bytes:
            raise ValueError(
                f"the request is {size} bytes ({len(request.texts)} texts), more than this client's "
                f"message limit of {self.max_message_bytes} bytes (max_message_bytes=); the server's "
                "--max-message-bytes bounds it too: split the texts over several calls"
            )

    @staticmethod
    def stream_error(
        error: grpc.RpcError, request: pb.PredictStreamRequest | pb.ExplainStreamRequest | pb.ExplainProgressiveRequest
    ) -> WhybertError:
        """A stream's failure as a WhybertError; a request the server refused as too large
        says so in words (gRPC itself only says "Received message larger than max")."""
        exc = from_rpc_error(error)
        if isinstance(exc, ResourceExhaustedError) and "larger than max" in exc.message:
            hint = (
                f"{exc.message} (the request of {len(getattr(request, 'texts', [0]))} texts is "
                f"{request.ByteSize()} bytes, "
                "more than the server accepts in one message: its --max-message-bytes; split the texts "
                "over several calls)"
            )
            return ResourceExhaustedError(exc.code, hint, exc.field_violations)
        return exc

    # ---- responses -----------------------------------------------------------------------

    @staticmethod
    def predictions(response: pb.PredictResponse) -> list[Prediction]:
        return [Prediction.from_proto(p) for p in response.predictions]

    @staticmethod
    def explanations(request: pb.ExplainRequest, response: pb.ExplainResponse) -> list[Explanation]:
        if request.HasField("entity"):  # entity explanations: none, one or several per text
            return [Explanation.from_proto(request.texts[e.text_index], e) for e in response.explanations]
        pairs: list[str | None] = list(request.pairs) or [None] * len(request.texts)
        return [
            Explanation.from_proto(t, e, pair)
            for t, e, pair in zip(request.texts, response.explanations, pairs, strict=True)
        ]

    @staticmethod
    def streamed_progress(request: pb.ExplainProgressiveRequest, response: pb.ExplainProgressiveResponse) -> Progress:
        return Progress.from_proto(request.text, response, request.pair or None)

    @staticmethod
    def streamed_prediction(response: pb.PredictStreamResponse) -> tuple[int, Prediction]:
        return response.index, Prediction.from_proto(response.prediction)

    @staticmethod
    def streamed_explanation(
        request: pb.ExplainStreamRequest, response: pb.ExplainStreamResponse
    ) -> tuple[int, Explanation]:
        pair = request.pairs[response.index] if request.pairs else None
        return response.index, Explanation.from_proto(request.texts[response.index], response.explanation, pair)

    @staticmethod
    def models(response: pb.ListModelsResponse) -> list[ModelInfo]:
        return [ModelInfo.from_proto(m) for m in response.models]


def _as_list(items: str | Iterable[str]) -> list[Any]:
    """One string as a list of one; any other iterable as a list."""
    return [items] if isinstance(items, str) else list(items)


def _texts(texts: Iterable[str] | str) -> list[str]:
    items = _as_list(texts)
    bad = [type(t).__name__ for t in items if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings, got {', '.join(sorted(set(bad)))}")
    return items


def _pairs(pairs: Iterable[str] | str | None) -> list[str]:
    """The second texts of text-pair inputs (none for single texts), checked like texts."""
    if pairs is None:
        return []
    items = _as_list(pairs)
    bad = [type(t).__name__ for t in items if not isinstance(t, str)]
    if bad:
        raise TypeError(f"pairs must be strings, got {', '.join(sorted(set(bad)))}")
    return items


def _fill_explain_request(
    req: pb.ExplainRequest | pb.ExplainStreamRequest,
    texts: Iterable[str] | str,
    model: str | None,
    explainer: str,
    options: dict[str, Any],
) -> None:
    """Set an Explain or ExplainStream request's fields (the two have the same ones)."""
    unknown = sorted(set(options) - set(EXPLAIN_OPTIONS))
    if unknown:
        raise TypeError(f"unknown explain option(s): {', '.join(unknown)}; known: {', '.join(EXPLAIN_OPTIONS)}")
    kind = EXPLAINER_KINDS.get(EXPLAINER_ALIASES.get(explainer, explainer))
    if kind is None:
        known = ", ".join([*EXPLAINER_KINDS, *EXPLAINER_ALIASES])
        raise ValueError(f"unknown explainer {explainer!r}; known: {known}")
    req.model = model or ""
    req.texts.extend(_texts(texts))
    req.pairs.extend(_pairs(options.get("pairs")))
    if req.pairs and len(req.pairs) != len(req.texts):
        raise ValueError(f"{len(req.pairs)} pairs for {len(req.texts)} texts: give one pair text per text")
    req.explainer = kind
    output = options.get("output")
    if output is not None:
        if output not in OUTPUT_SPACES:
            raise ValueError(f"output must be one of {', '.join(OUTPUT_SPACES)}, not {output!r}")
        req.output = OUTPUT_SPACES[output]
    _set_targets(req, options.get("targets"))
    if options.get("fixed_context") not in FIXED_CONTEXTS:
        raise ValueError("fixed_context must be None, 0 or 1")
    req.shap.fixed_context = FIXED_CONTEXTS[options.get("fixed_context")]
    for name, message in (
        ("max_evals", req.shap), ("batch_size", req.shap),
        ("num_samples", req.lime), ("num_features", req.lime), ("random_seed", req.lime),
        ("n_steps", req.integrated_gradients),
    ):
        value = options.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
            setattr(message, name, value)
    req.faithfulness = _flag(options, "faithfulness")
    _set_entity(req, options.get("entity"))
    _set_attention(req, options)


def _set_attention(req: pb.ExplainRequest | pb.ExplainStreamRequest, options: dict[str, Any]) -> None:
    """The attention explainer's raw maps: `raw_attention=True` (every layer and head), or
    the `attention_layers` / `attention_heads` to return (either implies raw maps)."""
    for name, field in (("attention_layers", req.attention.layers), ("attention_heads", req.attention.heads)):
        chosen = options.get(name)
        if chosen is None:
            continue
        chosen = [chosen] if isinstance(chosen, int) else list(chosen)
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in chosen):
            raise ValueError(f"{name} must be non-negative integers, not {options[name]!r}")
        field.extend(chosen)
    req.attention.raw = _flag(options, "raw_attention") or bool(req.attention.layers) or bool(req.attention.heads)


def _flag(options: dict[str, Any], name: str) -> bool:
    """A yes-or-no option: True, False or left out (None); "no" is not False, so refused."""
    value = options.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise TypeError(f"{name} must be True or False, not {value!r}")


def _set_entity(req: pb.ExplainRequest | pb.ExplainStreamRequest, entity: Any) -> None:
    """A token model's entity to explain: its index, its (start, end) span, or "all"."""
    if entity is None:
        return
    if entity == "all":
        req.entity.all = True
    elif isinstance(entity, int) and not isinstance(entity, bool) and entity >= 0:
        req.entity.index = entity
    elif (
        isinstance(entity, (tuple, list))
        and len(entity) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entity)
    ):
        req.entity.start, req.entity.end = int(entity[0]), int(entity[1])
    else:
        raise ValueError(f'entity must be an index, a (start, end) span or "all", not {entity!r}')


def _set_targets(req: pb.ExplainRequest | pb.ExplainStreamRequest, targets: Any) -> None:
    if targets is None or targets == "predicted":
        req.target_mode = pb.TARGET_MODE_PREDICTED
    elif targets == "all":
        req.target_mode = pb.TARGET_MODE_ALL
    else:
        names = _as_list(targets) if isinstance(targets, str | list | tuple) else []
        if not names or not all(isinstance(n, str) for n in names):
            raise TypeError(f'targets must be "predicted", "all", a label or a list of labels, not {targets!r}')
        req.target_mode = pb.TARGET_MODE_NAMED
        req.target_labels.extend(names)
