"""Padding-free forward passes on the CPU: a batch's rows as one sequence, attention per length.

Rows of different lengths padded to the longest spend the padding's share of every matrix
product on nothing: a tenth of a busy server's SHAP batches (the rounds of several texts
together), up to half of a Predict batch of mixed texts. Packed, the rows lie end to end in
one sequence (each row's positions counted from 0), so the projections and the feed-forward
layers, almost all of the work at these lengths, read real tokens only. Attention, registered
with transformers as the implementation `whybert_packed`, runs per block of rows of one
length (the rows are sorted by length, so each block is a slice of the sequence), with no
mask. text-embeddings-inference does the same on a GPU with variable-length flash attention;
on a GPU whybert keeps padding: a batch under ~256 rows there is bound by its kernel launches
(measured on an H200), and every length would add its own.

Only models whose heads are known here are packed (BERT, DistilBERT, ELECTRA, RoBERTa and
XLM-RoBERTa, sequence and token classification), and only once a probe at load has shown
that packed rows get the logits each gets alone; any other runs padded. A call without
blocks (integrated gradients, attention maps, rows of one length) runs PyTorch's SDPA
exactly as `sdpa` does.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

log = logging.getLogger(__name__)

PACKED_ATTENTION = "whybert_packed"
# The keyword that carries a packed call's blocks through the model to `packed_attention`.
BLOCKS = "whybert_blocks"
# A packed call's attention mask: transformers passes a 4-D mask on untouched (instead of
# building one from the position ids), and `packed_attention` needs none.
_NO_MASK = torch.ones(1, 1, 1, 1, dtype=torch.bool)

Block = tuple[int, int, int]  # (first token, end token, row length) of rows of one length


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of a packed sequence, block by block ([1, heads, tokens, size] in,
    [1, tokens, heads, size] out, as transformers' attention functions); SDPA's own when
    the call carries no blocks."""
    blocks: list[Block] | None = kwargs.pop(BLOCKS, None)
    if blocks is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [tokens, heads, size]
    tokens, heads, size = q.shape
    out = q.new_empty(tokens, heads, size)
    for start, stop, length in blocks:
        shape = ((stop - start) // length, length, heads, size)
        qb, kb, vb = (x[start:stop].reshape(shape).transpose(1, 2) for x in (q, k, v))  # [rows, heads, length, size]
        attended = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, dropout_p=dropout, scale=scaling)
        out[start:stop] = attended.transpose(1, 2).reshape(stop - start, heads, size)
    return out.unsqueeze(0), None


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # padded calls: SDPA's mask


@dataclass(frozen=True)
class Packed:
    """Rows laid end to end, sorted by length (stable): the tensors a packed forward reads,
    and where each row (in the caller's order) landed."""

    ids: np.ndarray  # [tokens]
    positions: np.ndarray  # [tokens]: each row counts from 0
    starts: np.ndarray  # [rows]: the first token of each row
    lengths: np.ndarray  # [rows]
    blocks: list[Block]

    @property
    def tokens(self) -> int:
        return len(self.ids)

    def token_index(self) -> np.ndarray:
        """Every row's tokens, row after row in the caller's order: where they lie packed."""
        return np.repeat(self.starts, self.lengths) + _ranks(self.lengths)

    def padded(self, values: torch.Tensor) -> torch.Tensor:
        """Per-token values in the packed order laid out as padded rows (rows × longest × …,
        in the caller's order, zeros past each row's end)."""
        rows, width = len(self.lengths), int(self.lengths.max())
        out = values.new_zeros((rows * width, *values.shape[1:]))
        grid = np.repeat(np.arange(rows) * width, self.lengths) + _ranks(self.lengths)
        out[torch.from_numpy(grid).to(out.device)] = values[torch.from_numpy(self.token_index()).to(values.device)]
        return out.view(rows, width, *values.shape[1:])

    def segments(self, sep_id: int) -> np.ndarray:
        """Segment ids of a pair model's rows: 1 after each row's first separator, as the
        tokenizer gives them (`PairClassifier.token_types` for padded rows)."""
        is_sep = (self.ids == sep_id).astype(np.int64)
        before = np.cumsum(is_sep) - is_sep  # separators before each token, whole sequence
        row_begin = np.arange(self.tokens) - self.positions
        types: np.ndarray = ((before - before[row_begin]) > 0).astype(np.int64)
        return types


def pack(rows: Sequence[Sequence[int]]) -> Packed:
    """Lay `rows` end to end, shortest first, each length's rows one block."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order]
    ends = np.cumsum(ordered)
    begins = ends - ordered
    total = int(ends[-1]) if len(rows) else 0
    ids = np.fromiter(itertools.chain.from_iterable(rows[i] for i in order), dtype=np.int64, count=total)
    starts = np.empty_like(lengths)
    starts[order] = begins
    cuts = np.flatnonzero(np.diff(ordered)) + 1
    blocks = [
        (int(begins[a]), int(ends[b - 1]), int(ordered[a]))
        for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(rows)])), strict=True)
        if ordered[a] > 0  # an empty row has no tokens to attend over
    ]
    return Packed(ids=ids, positions=_ranks(ordered), starts=starts, lengths=lengths, blocks=blocks)


def _ranks(lengths: np.ndarray) -> np.ndarray:
    """0, 1, … len-1 for each length in turn."""
    ends = np.cumsum(lengths)
    return np.arange(int(ends[-1]) if len(lengths) else 0) - np.repeat(ends - lengths, lengths)


@dataclass(frozen=True)
class Packer:
    """How one model runs packed: its encoder, how it numbers positions, and its head."""

    encoder: torch.nn.Module
    # RoBERTa's padding index: it numbers a row's tokens from there + 1, skipping (and
    # giving that index to) any padding id in the row; None: positions count from 0 (BERT).
    padding_idx: int | None
    head: Callable[[torch.Tensor], torch.Tensor]  # hidden states → logits
    per_token: bool  # the head reads every token (token classification), or each row's first

    def position_ids(self, packed: Packed) -> np.ndarray:
        """The position of every packed token as the model numbers it in a row alone."""
        if self.padding_idx is None:
            return packed.positions
        # RoBERTa's `create_position_ids_from_input_ids`, row by row: the running count of
        # the row's real tokens, offset by the padding index; padding ids get the index.
        real = (packed.ids != self.padding_idx).astype(np.int64)
        counted = np.cumsum(real)
        begin = np.arange(packed.tokens) - packed.positions
        before = counted[begin] - real[begin]  # real tokens before each token's row
        positions: np.ndarray = np.where(real == 1, counted - before + self.padding_idx, self.padding_idx)
        return positions

    def logits(self, packed: Packed, token_types: np.ndarray | None = None) -> torch.Tensor:
        """The model's logits of packed rows: one row each in the caller's order, or (per
        token) one per token in the packed order."""
        device = next(self.encoder.parameters()).device
        extra = {} if token_types is None else {"token_type_ids": torch.from_numpy(token_types)[None].to(device)}
        hidden = self.encoder(
            input_ids=torch.from_numpy(packed.ids)[None].to(device),
            position_ids=torch.from_numpy(self.position_ids(packed))[None].to(device),
            attention_mask=_NO_MASK.to(device),
            **extra,
            **{BLOCKS: packed.blocks},
        ).last_hidden_state[0]
        if self.per_token:
            return self.head(hidden)
        return self.head(hidden[torch.from_numpy(packed.starts).to(device)])


def enable_packing(model: torch.nn.Module) -> Packer | None:
    """A `Packer` for `model` where its architecture's head is known, it runs SDPA and a
    packed pass of two probe rows gives what each gives alone (the model is switched to
    `whybert_packed`, which is SDPA for every other call); None otherwise (it stays padded)."""
    head = _HEADS.get(type(model).__name__)
    switch = getattr(model, "set_attn_implementation", None)
    running = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if head is None or not callable(switch) or running not in ("sdpa", PACKED_ATTENTION):
        return None
    encoder_name, per_token, make = head
    encoder = getattr(model, encoder_name, None)
    if not isinstance(encoder, torch.nn.Module):
        return None
    embeddings: Any = getattr(encoder, "embeddings", None)
    padding_idx = int(embeddings.padding_idx) if encoder_name == "roberta" else None
    switch(PACKED_ATTENTION)
    packer = Packer(encoder=encoder, padding_idx=padding_idx, head=make(model), per_token=per_token)
    try:
        agrees = _agrees(model, packer)
    except Exception as exc:  # a variant of the architecture this packing does not fit
        log.warning("model %s cannot run packed rows (%r); its batches stay padded", type(model).__name__, exc)
        agrees = False
    if not agrees:
        switch("sdpa")
        return None
    return packer


def _agrees(model: torch.nn.Module, packer: Packer) -> bool:
    """Whether probe rows of two lengths (one holding the padding id) get, packed, the
    logits each gets alone: a variant of a known architecture (another position scheme,
    another head) is caught here, at load, instead of answering wrong."""
    config: Any = getattr(model, "config", None)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    pad = int(getattr(config, "pad_token_id", 0) or 0)
    if vocab < 8:
        return False
    ids = [i for i in range(2, vocab) if i != pad][:5]
    rows = [ids[:3], [ids[0], ids[3], pad, ids[4], ids[1], ids[2]]]
    dtype = next(model.parameters()).dtype
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    with torch.inference_mode():
        layout = pack(rows)
        packed = packer.logits(layout).float()
        if packer.per_token:
            packed = layout.padded(packed)
        for i, row in enumerate(rows):
            alone = model(input_ids=torch.tensor([row], device=packed.device)).logits[0].float()
            got = packed[i, : len(row)] if packer.per_token else packed[i]
            if not torch.allclose(got, alone, rtol=tolerance, atol=tolerance):
                log.warning("model %s gives other logits packed than alone: batches stay padded", type(model).__name__)
                return False
    return True


def _bert_sequence(m: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda first: m.classifier(m.dropout(m.bert.pooler(first[:, None])))


def _roberta_sequence(m: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda first: m.classifier(first[:, None])  # its head (and ELECTRA's) reads [:, 0] itself


def _distilbert_sequence(m: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda first: m.classifier(m.dropout(torch.relu(m.pre_classifier(first))))


def _per_token(m: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda hidden: m.classifier(m.dropout(hidden))


# Architecture → (encoder attribute, head reads every token, the head after the encoder).
_HEADS: dict[str, tuple[str, bool, Callable[[Any], Callable[[torch.Tensor], torch.Tensor]]]] = {
    "BertForSequenceClassification": ("bert", False, _bert_sequence),
    "BertForTokenClassification": ("bert", True, _per_token),
    "DistilBertForSequenceClassification": ("distilbert", False, _distilbert_sequence),
    "DistilBertForTokenClassification": ("distilbert", True, _per_token),
    "ElectraForSequenceClassification": ("electra", False, _roberta_sequence),  # the same head shape
    "ElectraForTokenClassification": ("electra", True, _per_token),
    "RobertaForSequenceClassification": ("roberta", False, _roberta_sequence),
    "RobertaForTokenClassification": ("roberta", True, _per_token),
    "XLMRobertaForSequenceClassification": ("roberta", False, _roberta_sequence),
    "XLMRobertaForTokenClassification": ("roberta", True, _per_token),
}
