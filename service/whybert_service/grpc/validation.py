"""Protobuf requests in, typed parameters out: every field checked against the server's limits.

The transport's last step: below `grpc/`, code sees only the types of `types.py`. Checks
that need the model (its labels) belong to the explainers; the checks here that need the
model's size, the reply bound and the attention maps' layers and heads, are given the
model's labels, window and layer and head counts.

All violations of a request are collected and reported together, each with the path of
its field (`texts[3]`, `shap.max_evals`), as google.rpc.BadRequest field violations.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from whybert.v1 import explainer_pb2 as pb

from ..errors import InvalidArgument, ResourceExhausted
from ..settings import ServerSettings
from ..types import (
    AttentionParams,
    EntityChoice,
    ExplainerName,
    ExplainParams,
    IntegratedGradientsParams,
    LimeParams,
    OutputName,
    PredictParams,
    ShapParams,
    TargetModeName,
)
from . import convert

# Wire enums to the service's names; UNSPECIFIED means the default of types.py.
EXPLAINERS = {pb.EXPLAINER_KIND_UNSPECIFIED: ExplainParams.explainer, **convert.EXPLAINER_NAMES}
OUTPUTS = {pb.OUTPUT_SPACE_UNSPECIFIED: ExplainParams.output, **convert.OUTPUT_NAMES}
TARGET_MODES = {
    pb.TARGET_MODE_UNSPECIFIED: ExplainParams.target_mode,
    pb.TARGET_MODE_PREDICTED: TargetModeName.PREDICTED,
    pb.TARGET_MODE_ALL: TargetModeName.ALL,
    pb.TARGET_MODE_NAMED: TargetModeName.NAMED,
}
FIXED_CONTEXTS = {
    pb.FIXED_CONTEXT_UNSPECIFIED: None,
    pb.FIXED_CONTEXT_ZERO: 0,
    pb.FIXED_CONTEXT_ONE: 1,
}
# Characters that may not appear in a text: C0/C1 controls other than tab, newline and
# carriage return, and lone surrogates (which cannot come from valid UTF-8 anyway). One
# regex: validation runs on the event loop, and a per-character Python test of a long
# text would hold it for milliseconds.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class Limits:
    """The per-request limits validation enforces (a view of the settings)."""

    max_texts: int
    max_chars: int
    max_evals: int
    max_lime_samples: int
    max_ig_steps: int
    max_rows: int
    max_attention_cells: int = 1_048_576
    max_message_bytes: int = 8 * 1024 * 1024
    max_stream_texts: int = 10_000
    stream_window: int = 128
    stream_window_bytes: int = 32 * 1024 * 1024

    @classmethod
    def from_settings(cls, s: ServerSettings) -> Limits:
        return cls(
            max_texts=s.max_texts_per_request,
            max_chars=s.max_chars_per_text,
            max_evals=s.max_evals_limit,
            max_lime_samples=s.max_lime_samples,
            max_ig_steps=s.max_ig_steps,
            max_attention_cells=s.max_attention_cells,
            max_rows=s.max_rows_per_request,
            max_message_bytes=s.max_message_bytes,
            max_stream_texts=s.max_stream_texts,
            stream_window=s.stream_window,
            stream_window_bytes=s.stream_window_bytes,
        )


class _Violations:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def _check_texts(texts: list[str], limits: Limits, v: _Violations, stream: bool = False) -> None:
    if not texts:
        v.add("texts", "at least one text is required")
        return
    most, per = (limits.max_stream_texts, "stream") if stream else (limits.max_texts, "request")
    if len(texts) > most:
        v.add("texts", f"{len(texts)} texts given; at most {most} per {per}")
        return
    for i, text in enumerate(texts):
        _check_text(f"texts[{i}]", "text", text, limits, v)


def _check_text(field: str, what: str, text: str, limits: Limits, v: _Violations) -> None:
    """One text's rules: not blank, within the characters limit, no control characters."""
    if not text.strip():
        v.add(field, f"the {what} is empty or only white space")
    elif len(text) > limits.max_chars:
        v.add(field, f"{len(text)} characters; at most {limits.max_chars} per text")
    elif (bad := _FORBIDDEN.search(text)) is not None:
        v.add(field, f"contains the control character U+{ord(bad.group()):04X}")


def _check_pairs(pairs: list[str], texts: list[str], limits: Limits, v: _Violations) -> None:
    """Pair texts (text-pair models): none, or one per text, each under the text rules."""
    if not pairs:
        return
    if len(pairs) != len(texts):
        v.add("pairs", f"{len(pairs)} pair texts for {len(texts)} texts: give one per text")
        return
    for i, text in enumerate(pairs):
        _check_text(f"pairs[{i}]", "pair text", text, limits, v)


def _check_model_name(name: str, v: _Violations) -> None:
    if len(name) > 256:
        v.add("model", "the model name is longer than 256 characters")


# The stream requests carry the same fields (same names and numbers) as the unary ones, so
# one validation serves both; a stream's texts are counted against the stream limit, and
# the per-request row budget applies to each of its texts.
AnyPredictRequest = pb.PredictRequest | pb.PredictStreamRequest
AnyExplainRequest = pb.ExplainRequest | pb.ExplainStreamRequest


def predict_params(request: AnyPredictRequest, limits: Limits) -> PredictParams:
    """Validate a PredictRequest or a PredictStreamRequest."""
    v = _Violations()
    _check_model_name(request.model, v)
    texts = list(request.texts)
    _check_texts(texts, limits, v, stream=isinstance(request, pb.PredictStreamRequest))
    pairs = list(request.pairs)
    _check_pairs(pairs, texts, limits, v)
    v.raise_if_any()
    return PredictParams(model=request.model, texts=tuple(texts), pairs=tuple(pairs))


def _enum(value: int, table: Mapping[Any, object], field: str, v: _Violations) -> object | None:
    if value not in table:
        v.add(field, f"unknown value {value}")
        return None
    return table[value]


def explain_params(request: AnyExplainRequest, limits: Limits) -> ExplainParams:
    """Validate an ExplainRequest or an ExplainStreamRequest (labels are checked later,
    against the model)."""
    v = _Violations()
    _check_model_name(request.model, v)
    texts = list(request.texts)
    stream = isinstance(request, pb.ExplainStreamRequest)
    _check_texts(texts, limits, v, stream)
    pairs = list(request.pairs)
    _check_pairs(pairs, texts, limits, v)
    explainer = _enum(request.explainer, EXPLAINERS, "explainer", v)
    output = _enum(request.output, OUTPUTS, "output", v)
    mode = _enum(request.target_mode, TARGET_MODES, "target_mode", v)
    labels = tuple(request.target_labels)
    if mode is TargetModeName.NAMED:
        if not labels:
            v.add("target_labels", "TARGET_MODE_NAMED needs at least one label")
        elif len(set(labels)) != len(labels):
            v.add("target_labels", "a label is named twice")
    elif labels:
        v.add("target_labels", "labels may only be named with TARGET_MODE_NAMED")
    shap = _shap_params(request, limits, v)
    lime = _lime_params(request, limits, v)
    ig = _ig_params(request, limits, v)
    attention = _attention_params(request, v)
    if explainer is ExplainerName.SHAP_PARTITION and shap is not None:
        _check_total_rows(len(texts), shap.max_evals, "shap.max_evals", stream, limits, v)
    if explainer is ExplainerName.LIME and lime is not None:
        _check_total_rows(len(texts), lime.num_samples, "lime.num_samples", stream, limits, v)
    if explainer is ExplainerName.INTEGRATED_GRADIENTS and ig is not None:
        _check_total_rows(len(texts), ig.n_steps, "integrated_gradients.n_steps", stream, limits, v)
    entity = _entity_choice(request, v)
    v.raise_if_any()
    assert isinstance(explainer, ExplainerName) and isinstance(output, OutputName)
    assert isinstance(mode, TargetModeName) and shap and lime and ig
    return ExplainParams(
        model=request.model,
        texts=tuple(texts),
        explainer=explainer,
        output=output,
        target_mode=mode,
        target_labels=labels,
        shap=shap,
        lime=lime,
        integrated_gradients=ig,
        attention=attention,
        faithfulness=request.faithfulness,
        entity=entity,
        pairs=tuple(pairs),
    )


def _entity_choice(request: AnyExplainRequest, v: _Violations) -> EntityChoice | None:
    """The request's EntitySelector (None when unset): exactly one of index, the span
    (start and end together, start < end) or all."""
    if not request.HasField("entity"):
        return None
    sel = request.entity
    has_index, has_start, has_end = sel.HasField("index"), sel.HasField("start"), sel.HasField("end")
    if has_start != has_end:
        v.add("entity.end" if has_start else "entity.start", "a span needs both start and end")
        return None
    chosen = int(has_index) + int(has_start) + int(sel.all)
    if chosen != 1:
        v.add("entity", "set exactly one of index, the span (start and end) or all")
        return None
    if has_start:
        if sel.end <= sel.start:
            v.add("entity.end", f"must be greater than entity.start ({sel.start})")
            return None
        return EntityChoice(span=(int(sel.start), int(sel.end)))
    if has_index:
        return EntityChoice(index=int(sel.index))
    return EntityChoice(all=True)


def _bounded(value: int, low: int, high: int, field: str, v: _Violations) -> bool:
    if not low <= value <= high:
        v.add(field, f"{value} is out of range; allowed {low} to {high}")
        return False
    return True


def _shap_params(request: AnyExplainRequest, limits: Limits, v: _Violations) -> ShapParams | None:
    opts = request.shap
    ok = True
    # An option left out takes its default, or the server's limit where that is lower (an
    # operator who lowers a limit must not make every request that omits it invalid).
    max_evals = opts.max_evals if opts.HasField("max_evals") else min(ShapParams.max_evals, limits.max_evals)
    ok &= _bounded(max_evals, 3, limits.max_evals, "shap.max_evals", v)
    batch_size = opts.batch_size if opts.HasField("batch_size") else None
    if batch_size is not None:
        ok &= _bounded(batch_size, 1, 1024, "shap.batch_size", v)
    fixed = _enum(opts.fixed_context, FIXED_CONTEXTS, "shap.fixed_context", v)
    ok &= opts.fixed_context in FIXED_CONTEXTS
    if not ok:
        return None
    assert fixed is None or isinstance(fixed, int)
    return ShapParams(max_evals=max_evals, fixed_context=fixed, batch_size=batch_size)


def _lime_params(request: AnyExplainRequest, limits: Limits, v: _Violations) -> LimeParams | None:
    opts = request.lime
    ok = True
    samples = opts.num_samples if opts.HasField("num_samples") else min(LimeParams.num_samples, limits.max_lime_samples)
    ok &= _bounded(samples, 10, limits.max_lime_samples, "lime.num_samples", v)
    features = opts.num_features if opts.HasField("num_features") else None
    if features is not None:
        ok &= _bounded(features, 1, 10_000, "lime.num_features", v)
    seed = opts.random_seed if opts.HasField("random_seed") else LimeParams.random_seed
    return LimeParams(num_samples=samples, num_features=features, random_seed=seed) if ok else None


def _ig_params(
    request: AnyExplainRequest, limits: Limits, v: _Violations
) -> IntegratedGradientsParams | None:
    opts = request.integrated_gradients
    steps = opts.n_steps if opts.HasField("n_steps") else min(IntegratedGradientsParams.n_steps, limits.max_ig_steps)
    if not _bounded(steps, 2, limits.max_ig_steps, "integrated_gradients.n_steps", v):
        return None
    return IntegratedGradientsParams(n_steps=steps)


def _attention_params(request: AnyExplainRequest, v: _Violations) -> AttentionParams:
    """The attention options on their own (the model's layer and head counts are checked in
    `resolve_attention`): layers and heads distinct, and only with `raw`."""
    opts = request.attention
    layers, heads = tuple(int(x) for x in opts.layers), tuple(int(x) for x in opts.heads)
    for name, chosen in (("layers", layers), ("heads", heads)):
        if chosen and not opts.raw:
            v.add(f"attention.{name}", "only with attention.raw (they choose the raw maps returned)")
        if len(set(chosen)) != len(chosen):
            v.add(f"attention.{name}", f"a {name[:-1]} is named twice")
    return AttentionParams(raw=opts.raw, layers=layers, heads=heads)


def resolve_attention(
    params: ExplainParams, model_layers: int, model_heads: int, limits: Limits
) -> ExplainParams:
    """The attention explainer's raw maps checked against the model (each layer and head in
    range), with empty choices made explicit (every layer, every head). The cells (layers ×
    heads × tokens²) are checked against --max-attention-cells by the explainer once a text
    is tokenized, before its forward pass: a bound from the text's bytes would refuse texts
    whose maps fit."""
    if params.explainer is not ExplainerName.ATTENTION or not params.attention.raw:
        return params
    v = _Violations()
    opts = params.attention
    for name, picked, count in (("layers", opts.layers, model_layers), ("heads", opts.heads, model_heads)):
        for i, x in enumerate(picked):
            if x >= count:
                v.add(f"attention.{name}[{i}]", f"{x} is out of range; the model has {count} {name} (0 to {count - 1})")
    v.raise_if_any()
    layers = opts.layers or tuple(range(model_layers))
    heads = opts.heads or tuple(range(model_heads))
    chosen = AttentionParams(raw=True, layers=layers, heads=heads, max_cells=limits.max_attention_cells)
    return dataclasses.replace(params, attention=chosen)


def _check_total_rows(
    n_texts: int, per_text: int, option: str, stream: bool, limits: Limits, v: _Violations
) -> None:
    if stream:  # each text of a stream has the per-request budget to itself
        if per_text > limits.max_rows:
            v.add(option, f"{per_text} model rows per text; at most {limits.max_rows} per text of a stream")
        return
    total = n_texts * per_text
    if total > limits.max_rows:
        v.add(
            "texts",
            f"{n_texts} texts × {per_text} evaluations = {total} model rows; at most "
            f"{limits.max_rows} per request (send fewer texts or a smaller budget)",
        )


# ---- the size of an Explain reply ---------------------------------------------------------
# Upper bounds, in bytes on the wire, of the parts of a TextExplanation (explainer.proto).
# One Token: its framing (tag, length), its text's tag and length, start and end (tag and
# varint each) and `special`; its text itself is counted apart (a slice of the request text).
TOKEN_WIRE_BYTES = 26
VALUE_BYTES = 8  # one packed double
# Special tokens a tokenizer adds to one text ([CLS], [SEP], <s>, …) and the length of the
# name each carries as its text, at most.
SPECIAL_TOKENS = 4
SPECIAL_TOKEN_TEXT_BYTES = 32
# One TextExplanation's framing and scalars (additivity, rows, times, flags, enums,
# truncation, faithfulness, the prediction's own), its packed arrays' framing: about 140
# bytes today, with room for a few more fields.
EXPLANATION_WIRE_BYTES = 256
LABEL_WIRE_BYTES = 6  # a string's tag and length
SCORE_WIRE_BYTES = 6 + 2 * (1 + VALUE_BYTES)  # a LabelScore's framing and its two doubles
STREAM_INDEX_BYTES = 6  # ExplainStreamResponse.index: a tag and a 32-bit varint
FLOAT_BYTES = 4  # one packed float (AttentionMaps.weights)
ATTENTION_MAPS_WIRE_BYTES = 32  # AttentionMaps' framing, its token count, attention_position
ATTENTION_INDEX_BYTES = 12  # a layer and a head index of one map, at most (packed varints)


def explained_label_count(params: ExplainParams, labels: Sequence[str]) -> int:
    """How many of the model's labels each text's explanation covers."""
    if params.target_mode is TargetModeName.ALL:
        return len(labels)
    if params.target_mode is TargetModeName.NAMED:
        return len(params.target_labels)
    return 1


def token_bound(text: str, max_tokens: int) -> int:
    """At most how many tokens an explanation of `text` carries: the model reads (and
    whybert explains) at most `max_tokens`, and a short text bounds them too, since every
    token but the special ones covers at least one byte of the text."""
    return min(max_tokens, len(text.encode("utf-8")) + SPECIAL_TOKENS)


@dataclass(frozen=True)
class _ReplyBound:
    """The parts of the reply bound: a message's header, each text's fixed part and each
    token's part."""

    header: int
    per_text: int
    per_token: int
    max_tokens: int
    attention_maps: int = 0  # raw attention maps per text (layers × heads)
    max_attention_cells: int = 0

    @classmethod
    def of(
        cls, params: ExplainParams, labels: Sequence[str], max_tokens: int, max_attention_cells: int = 0
    ) -> _ReplyBound:
        explained = explained_label_count(params, labels)
        label_names = sum(len(label.encode("utf-8")) + LABEL_WIRE_BYTES for label in labels)
        per_text = (
            EXPLANATION_WIRE_BYTES
            + 3 * label_names  # the explained labels, the prediction's label and its scores' labels
            + len(labels) * SCORE_WIRE_BYTES
            + 3 * explained * VALUE_BYTES  # base_values, output_values, convergence_delta
            + SPECIAL_TOKENS * SPECIAL_TOKEN_TEXT_BYTES
        )
        per_token = TOKEN_WIRE_BYTES + explained * VALUE_BYTES
        header = 2 * LABEL_WIRE_BYTES + len(params.model.encode("utf-8"))
        maps = 0
        if params.explainer is ExplainerName.ATTENTION and params.attention.raw:
            maps = len(params.attention.layers) * len(params.attention.heads)
            per_text += ATTENTION_MAPS_WIRE_BYTES + maps * ATTENTION_INDEX_BYTES
        return cls(header, per_text, per_token, max_tokens, maps, max_attention_cells)

    def text(self, text: str) -> int:
        """One text's explanation: its tokens (at most `token_bound`) and their texts (slices
        of the text, so at most its UTF-8 bytes), its fixed part and its raw attention maps
        (maps × tokens² floats, at most --max-attention-cells: the explainer refuses more)."""
        tokens = token_bound(text, self.max_tokens)
        cells = min(self.attention_maps * tokens * tokens, self.max_attention_cells) if self.attention_maps else 0
        return self.per_text + tokens * self.per_token + len(text.encode("utf-8")) + cells * FLOAT_BYTES


def reply_bytes_bound(
    params: ExplainParams,
    labels: Sequence[str],
    max_tokens: int,
    max_attention_cells: int = 0,
    explanations: Sequence[int] | None = None,
) -> int:
    """An upper bound of the serialized ExplainResponse: per text, its tokens × (a Token's
    framing + one value per explained label), the tokens' texts (slices of the text, so at
    most its UTF-8 bytes) and the per-explanation parts that grow with the labels; times
    `explanations[i]`, the explanations of text i (one each by default; a token model's
    `entity.all` gives one per entity, known once its entities are)."""
    bound = _ReplyBound.of(params, labels, max_tokens, max_attention_cells)
    inputs = _inputs(params)
    counts = [1] * len(inputs) if explanations is None else explanations
    return bound.header + sum(n * bound.text(text) for n, text in zip(counts, inputs, strict=True))


def _inputs(params: ExplainParams) -> list[str]:
    """Each input's characters: a text, or a text and its pair text (whose tokens and
    token texts the explanation carries as well)."""
    if not params.pairs:
        return list(params.texts)
    return [text + pair for text, pair in zip(params.texts, params.pairs, strict=True)]


def check_reply_size(
    params: ExplainParams,
    labels: Sequence[str],
    max_tokens: int,
    limits: Limits,
    explanations: Sequence[int] | None = None,
) -> None:
    """Refuse, before any work, an Explain whose reply could exceed the message limit: it
    would be computed in full and then fail to send. With `explanations` (per text, once a
    token model's entities are known): the same check for `entity.all`, after the Predict
    pass that finds the entities and before any explanation work."""
    bound = reply_bytes_bound(params, labels, max_tokens, limits.max_attention_cells, explanations)
    if bound <= limits.max_message_bytes:
        return
    longest = max(token_bound(text, max_tokens) for text in _inputs(params))
    explained = explained_label_count(params, labels)
    count = f"{len(params.texts)} texts"
    if explanations is not None:
        count = f"{sum(explanations)} entity explanations of {len(params.texts)} texts"
        explained = 1
    raise InvalidArgument(
        [
            (
                "texts",
                f"the reply could reach {bound} bytes ({count} × up to "
                f"{longest} tokens × {explained} labels), more than the server's message "
                f"limit of {limits.max_message_bytes} bytes (--max-message-bytes); send "
                "fewer or shorter texts, or explain fewer labels or entities",
            )
        ]
    )


def check_stream_reply_sizes(
    params: ExplainParams, labels: Sequence[str], max_tokens: int, limits: Limits
) -> int:
    """The same refusal for an ExplainStream, where each text's explanation is a message of
    its own: every text whose message could exceed the limit is named (`texts[12]`). The
    largest message any text could make, for the stream's window (`stream_window`)."""
    bound = _ReplyBound.of(params, labels, max_tokens, limits.max_attention_cells)
    header = bound.header + STREAM_INDEX_BYTES
    v = _Violations()
    largest = 0
    for i, text in enumerate(_inputs(params)):
        size = header + bound.text(text)
        largest = max(largest, size)
        if size > limits.max_message_bytes:
            v.add(
                f"texts[{i}]",
                f"its explanation could reach {size} bytes, more than the server's message limit "
                f"of {limits.max_message_bytes} bytes (--max-message-bytes); send a shorter text "
                "or explain fewer labels",
            )
    v.raise_if_any()
    return largest


def stream_window(largest_reply: int, limits: Limits) -> int:
    """Texts an ExplainStream works on at once: `--stream-window`, fewer where that many
    finished replies of the largest size its texts could make would hold more than
    `--stream-window-bytes` (a reader that stops reading leaves them all in memory)."""
    return max(1, min(limits.stream_window, limits.stream_window_bytes // max(1, largest_reply)))


def check_reply_sent(size: int, limits: Limits) -> None:
    """The backstop after the work: a reply the transport would refuse to send becomes a
    clear RESOURCE_EXHAUSTED (not a failed send and a traceback in the log)."""
    if size > limits.max_message_bytes:
        raise ResourceExhausted(
            f"the reply is {size} bytes, more than the server's message limit of "
            f"{limits.max_message_bytes} bytes (--max-message-bytes); send fewer or shorter "
            "texts, or explain fewer labels"
        )


# ---- ExplainProgressive -------------------------------------------------------------------
DEFAULT_INTERVAL_MS = 100
MIN_INTERVAL_MS = 0  # 0: after every round (a slow reader still gets only the newest)
MAX_INTERVAL_MS = 60_000


def progressive_params(request: pb.ExplainProgressiveRequest, limits: Limits) -> tuple[ExplainParams, float]:
    """Validate an ExplainProgressiveRequest as the one-text SHAP Explain it is, with its
    own field names (`text`, not `texts[0]`); returns the parameters and the interval in s."""
    single = pb.ExplainRequest(
        model=request.model,
        texts=[request.text],
        explainer=pb.EXPLAINER_KIND_SHAP_PARTITION,
        output=request.output,
        target_mode=request.target_mode,
        target_labels=request.target_labels,
        shap=request.shap,
        pairs=[request.pair] if request.pair else [],
    )
    if request.HasField("entity"):
        single.entity.CopyFrom(request.entity)
    v = _Violations()
    interval = request.interval_ms if request.HasField("interval_ms") else DEFAULT_INTERVAL_MS
    _bounded(interval, MIN_INTERVAL_MS, MAX_INTERVAL_MS, "interval_ms", v)
    try:
        params = explain_params(single, limits)
    except InvalidArgument as exc:
        names = {"texts": "text", "texts[0]": "text", "pairs[0]": "pair"}
        renamed = [(names.get(f, f), d) for f, d in exc.violations]
        raise InvalidArgument(renamed + v.items) from None
    v.raise_if_any()
    return params, interval / 1000.0
