"""A loaded sequence classifier: tokenization (any thread) and forward passes (its worker)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .graphs import GRAPH_MODEL_TYPES, GraphedForward
from .packing import Packed, Packer, enable_packing, pack


@dataclass(frozen=True)
class Launched:
    """A forward pass on its way: its logits (rows × labels, float32, on the host; in
    pinned memory on a GPU, filled once `done` has fired) and the event that says so."""

    logits: torch.Tensor
    done: torch.cuda.Event | None = None


@dataclass(frozen=True)
class Encoded:
    """Token ids of some texts, each cut to the model's maximum, and which were cut."""

    ids: list[list[int]]
    truncated: list[bool]


class Classifier:
    """One sequence-classification model on one device.

    `encode` may be called from any thread: it never changes the tokenizer's truncation or
    padding settings (truncation is done here, on the id lists), which is what makes the
    Rust tokenizer safe to share. `forward` must only be called by the model's worker.
    """

    kind = "sequence"  # what the model computes (ListModels' ModelKind)

    def __init__(
        self,
        *,
        name: str,
        model: torch.nn.Module,
        tokenizer: Any,
        labels: Sequence[str],
        device: torch.device,
        weights_sha256: str,
        source: str,
        max_length: int | None = None,
    ) -> None:
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.device = device
        self.weights_sha256 = weights_sha256
        self.source = source
        self.dtype: torch.dtype = next(model.parameters()).dtype
        self.max_length = max_length or _model_max_length(model, tokenizer)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        # Special tokens a single text carries after its own tokens (kept when a row is cut).
        self._suffix = _special_suffix(tokenizer)
        # whybert cuts every row to the window itself: transformers' warning that a long text's
        # ids exceed it ("will result in indexing errors") would only mislead operators.
        warned = getattr(tokenizer, "deprecation_warnings", None)
        if isinstance(warned, dict):
            warned["sequence-length-is-longer-than-the-specified-maximum"] = True
        # On the CPU, rows of different lengths run end to end instead of padded (`packing`).
        self.packer: Packer | None = enable_packing(self.model) if device.type == "cpu" else None
        # On a GPU, recurring batch shapes replayed from CUDA graphs (`use_graphs`).
        self.graphs: GraphedForward | None = None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Tokenize with special tokens; cut rows longer than the model's maximum (a long
        text is read from a whole-word prefix that still overflows the window: `head`)."""
        probes = [head(self.tokenizer, t, self.max_length) for t in texts]
        short = [t for t, enc in probes if enc is None]  # tokenized together; long ones are already
        batch = iter(self.tokenizer(short, add_special_tokens=True)["input_ids"] if short else ())
        raw = [next(batch) if enc is None else enc["input_ids"] for _, enc in probes]
        keep = self.max_length - self._suffix
        ids = [r if len(r) <= self.max_length else r[:keep] + r[len(r) - self._suffix :] for r in raw]
        return Encoded(ids=ids, truncated=[len(r) > self.max_length for r in raw])

    def readable_prefix(self, text: str) -> tuple[str, bool]:
        """The prefix of `text` the model reads (the text itself when it fits), and whether
        the text went on past it: explanations cover only what the model sees."""
        text, truncated, _ = read_window(self.tokenizer, text, self.max_length, self._suffix)
        return text, truncated

    def forward(self, rows: Sequence[Sequence[int]], positions: Sequence[int | None] | None = None) -> np.ndarray:
        """Logits (rows × labels, float32) of already-encoded rows, padded to the longest
        (`positions`: which token's logits each row gives, for token models)."""
        return self.collect(self.launch(rows, positions))

    @torch.inference_mode()
    def launch(self, rows: Sequence[Sequence[int]], positions: Sequence[int | None] | None = None) -> Launched:
        """Start the forward pass of `rows`; `collect` gives its logits. On a GPU this only
        queues the kernels and a copy into pinned host memory, so the caller can prepare
        the next batch while the device computes this one."""
        packed = self.packed(rows)
        if packed is not None:
            packer, layout = packed
            return self.to_host(packer.logits(layout, self.packed_token_types(layout)).float())
        return self.to_host(self.padded_logits(rows).float())

    def extra_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the model reads of padded rows beyond their ids and mask: nothing here; a
        text pair's segments (`PairClassifier`). Every pass over padded ids takes it from
        here: the batches, their graphs, integrated gradients, the attention explainer."""
        return {}

    def packed_token_types(self, layout: Packed) -> np.ndarray | None:
        """The same for rows packed end to end: their segment ids, or None."""
        return None

    def padded_logits(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """The model's output for `rows` padded, on its device: replayed from a graph where
        one holds their shape, else the plain pass."""
        if self.graphs is not None:
            out = self.graphs.logits(rows)
            if out is not None:
                return out
        return self.plain_logits(rows)

    def plain_logits(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """The model's output for `rows` right-padded, one eager pass."""
        return self.logits_of(*self.pad(rows))

    def logits_of(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The model's output for padded ids and their mask (2-D, a ready 4-D additive one
        as a graph captures it, or None for rows of one length)."""
        extra = self.extra_inputs(input_ids)
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=mask, **extra).logits
        return logits

    def use_graphs(self, *, capture: bool = True) -> bool:
        """Replay recurring batch shapes from CUDA graphs (`graphs.py`), where the model
        runs on a GPU, is of an architecture known to run without asking the host anything
        (`GRAPH_MODEL_TYPES`) and attends with SDPA or eager attention (both take a ready
        4-D mask as it is). `capture=False` runs the same buckets and static tensors
        eagerly, on any device: how the tests hold this path to the plain one. Whether
        graphs are now on."""
        config: Any = getattr(self.model, "config", None)
        attention = getattr(config, "_attn_implementation", None)
        known = getattr(config, "model_type", None) in GRAPH_MODEL_TYPES
        if (capture and self.device.type != "cuda") or not known or attention not in ("sdpa", "eager"):
            return False
        self.graphs = GraphedForward(
            self.logits_of,
            self.plain_logits,
            device=self.device,
            dtype=self.dtype,
            pad_id=self.pad_id,
            max_width=self.max_length,
            capture=capture,
        )
        return True

    def packed(self, rows: Sequence[Sequence[int]]) -> tuple[Packer, Packed] | None:
        """The packer and `rows` laid end to end, where this model packs and the rows are
        not all of one length (then padding costs nothing, and the plain pass runs)."""
        if self.packer is None or len(rows) < 2:
            return None
        first = len(rows[0])
        if all(len(r) == first for r in rows):
            return None
        return self.packer, pack(rows)

    def launch_tokens(self, rows: Sequence[Sequence[int]]) -> Launched:
        """Every position's logits: only token models have them (`TokenClassifier`)."""
        raise TypeError(f"model {self.name!r} gives no logits per token")

    def to_host(self, logits: torch.Tensor) -> Launched:
        """Launched logits on their way to the host: on a GPU a queued copy into pinned
        memory and an event recorded after it (`collect` waits for that event only, not
        for a batch launched after this one), elsewhere the tensor itself."""
        if self.device.type != "cuda":
            return Launched(logits)
        host = torch.empty(logits.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(logits, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return Launched(host, done)

    def collect(self, launched: Launched) -> np.ndarray:
        """The logits of a launched forward pass, once the device has finished it."""
        if launched.done is not None:
            launched.done.synchronize()
        out: np.ndarray = launched.logits.numpy()
        return out

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Right-pad rows into (ids, attention mask) tensors on the model's device; no mask
        when the rows are of one length (as a SHAP explanation's rows are): the model then
        skips building one, and on a GPU it cannot ask the device whether the mask holds
        any padding, a wait on every batch in flight that stalls the next launch."""
        ids, mask = pad_rows(rows, self.pad_id)
        ids_t = torch.from_numpy(ids)
        mask_t = None if bool(mask.all()) else torch.from_numpy(mask)
        if self.device.type != "cuda":
            return ids_t, mask_t
        # Pinned host memory: the copies overlap the GPU's work.
        ids_d = ids_t.pin_memory().to(self.device, non_blocking=True)
        return ids_d, None if mask_t is None else mask_t.pin_memory().to(self.device, non_blocking=True)

    def input_embeddings(self) -> torch.nn.Module:
        """The token-embedding layer, which integrated gradients attributes to."""
        layer: torch.nn.Module = getattr(self.model, "get_input_embeddings")()  # noqa: B009 - typed as Module
        return layer


def read_window(tokenizer: Any, text: str, max_tokens: int, suffix: int, **options: bool) -> tuple[str, bool, Any]:
    """The prefix of `text` a model of `max_tokens` reads, whether the text went on past
    it, and the prefix's encoding (`tokenizer(prefix, return_offsets_mapping=True,
    **options)`). The text is cut where the last piece that fits before the `suffix`
    special tokens ends."""
    text, enc = head(tokenizer, text, max_tokens, return_offsets_mapping=True, **options)
    if enc is None:
        enc = tokenizer(text, return_offsets_mapping=True, **options)
    truncated = False
    while len(enc["input_ids"]) > max_tokens:
        last = enc["offset_mapping"][max_tokens - suffix - 1]
        cut = min(0 if last is None else int(last[1]), len(text) - 1)
        text, truncated = text[:cut], True
        enc = tokenizer(text, return_offsets_mapping=True, **options)
    return text, truncated, enc


# A token seldom covers more characters than this: where `head` first looks for a prefix.
HEAD_CHARS_PER_TOKEN = 8


def head(tokenizer: Any, text: str, max_tokens: int, **options: bool) -> tuple[str, Any]:
    """A prefix of `text` whose first `max_tokens` tokens are the whole text's, so that a
    long text (20,000 characters is a hundred windows) need not be tokenized whole: it ends
    just before a space, so every word in it is whole (every tokenizer whybert serves splits
    words at a space, and a word's pieces do not depend on what follows the space), and it
    holds more than `max_tokens` tokens, so it overflows the window as the text does; with
    its encoding (`tokenizer(prefix, **options)`), which the caller need not compute again.
    The text itself and None when it is short or no such prefix is found."""
    limit = HEAD_CHARS_PER_TOKEN * max_tokens
    while limit < len(text):
        space = text.find(" ", limit)
        if space < 0:
            break
        prefix = text[:space]
        enc = tokenizer(prefix, **options)
        if len(enc["input_ids"]) > max_tokens:
            return prefix, enc
        limit *= 4
    return text, None


def _model_max_length(model: torch.nn.Module, tokenizer: Any) -> int:
    """The most tokens the model reads: its position table or the tokenizer's limit."""
    config: Any = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # RoBERTa's position ids start after the padding index
    usable = [v for v in (positions, tokenizer.model_max_length) if isinstance(v, int) and 0 < v < 1_000_000]
    return min(usable) if usable else 512


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad rows of token ids to the longest: (ids, attention mask), both int64.

    One concatenation and one scatter, not a Python loop over rows: rows of equal length
    (every row of a SHAP explanation, as a rule) stack directly."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max())
    if int(lengths.min()) == width:
        ids = np.array(rows, dtype=np.int64).reshape(len(rows), width)
        return ids, np.ones_like(ids)
    mask = (np.arange(width) < lengths[:, None]).astype(np.int64)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    ids[mask.astype(bool)] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return ids, mask


def _special_suffix(tokenizer: Any) -> int:
    """How many special tokens come after a text's own tokens."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    if not bare:
        return 0
    start = next((i for i in range(len(probe)) if probe[i : i + len(bare)] == bare), 0)
    return len(probe) - start - len(bare)
