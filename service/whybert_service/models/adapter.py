"""LoRA adapters in peft's format, merged into a plain model without importing peft.

Training writes adapters with peft; serving needs only their arithmetic, so the server's
install carries neither peft nor accelerate and what it serves is an ordinary model.

An adapter folder holds:

- `adapter_config.json`: peft's `LoraConfig` (rank `r`, `lora_alpha`, `use_rslora`, ...);
- `adapter_model.safetensors`: peft's tensors, every key prefixed `base_model.model.`:
  `<linear>.lora_A.weight` (rank × in) and `<linear>.lora_B.weight` (out × rank), whose
  layer's weight becomes `W + scaling · B @ A` (scaling = alpha / rank, or alpha / √rank
  with rsLoRA); `<linear>.base_layer.<param>`, a trained parameter of a wrapped layer
  (`bias="lora_only"`); any other key, a parameter of a module saved whole
  (`modules_to_save`: the head, the pooler, LayerNorms) that replaces the model's own;
- `whybert_adapter.json`: what peft has no field for (the label names, the base encoder's
  file hashes); see `whybert_service.models.builtin`.

Only what whybert's training writes is supported; any other peft feature that changes the
merge (DoRA, per-layer ranks, ...) is refused, never half-applied.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_INFO = "whybert_adapter.json"
PEFT_PREFIX = "base_model.model."
LORA_A = ".lora_A.weight"
LORA_B = ".lora_B.weight"
BASE_LAYER = ".base_layer."
# LoraConfig fields that would change what merging means; a truthy value is refused.
UNSUPPORTED = (
    "use_dora",
    "fan_in_fan_out",
    "lora_bias",
    "rank_pattern",
    "alpha_pattern",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
)


class AdapterError(ValueError):
    """An adapter cannot be read, or does not fit the model it is merged onto."""


@dataclass(frozen=True)
class LoraSettings:
    """The parts of peft's `adapter_config.json` that the merge needs."""

    rank: int
    alpha: float
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        """What peft multiplies `B @ A` by."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


def lora_settings(raw: Mapping[str, Any]) -> LoraSettings:
    """Validate peft's LoRA config: plain LoRA only, with a positive rank."""
    if raw.get("peft_type") != "LORA":
        raise AdapterError(f"peft_type is {raw.get('peft_type')!r}, not 'LORA'")
    used = [name for name in UNSUPPORTED if raw.get(name)]
    if used:
        raise AdapterError(f"the adapter uses {', '.join(used)}, which whybert's merge does not implement")
    try:
        settings = LoraSettings(int(raw["r"]), float(raw["lora_alpha"]), bool(raw.get("use_rslora", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(f"no usable r / lora_alpha: {exc!r}") from exc
    if settings.rank <= 0:
        raise AdapterError(f"rank r={settings.rank} is not positive")
    return settings


def read_adapter(adapter_dir: Path) -> tuple[LoraSettings, dict[str, torch.Tensor]]:
    """The LoRA settings and tensors of a peft adapter folder (safetensors only, no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        raw = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
        tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    except (OSError, ValueError, SafetensorError) as exc:
        raise AdapterError(f"cannot read the adapter in {adapter_dir}: {exc}") from exc
    if not isinstance(raw, dict):
        raise AdapterError(f"{adapter_dir / ADAPTER_CONFIG} is not a JSON object")
    return lora_settings(raw), tensors


@torch.no_grad()
def merge_adapter(model: nn.Module, tensors: Mapping[str, torch.Tensor], scaling: float) -> None:
    """Fold a peft adapter's tensors into a plain model: add the LoRA deltas, replace the rest.

    Everything is checked before any weight changes: each tensor must find its parameter
    with the right shape, or the model is left as it was and `AdapterError` says why.
    """
    params = dict(model.named_parameters())
    plain = {_strip(key): tensor for key, tensor in tensors.items()}
    adds: list[tuple[nn.Parameter, torch.Tensor]] = []
    copies: list[tuple[nn.Parameter, torch.Tensor]] = []
    for key, tensor in plain.items():
        if key.endswith(LORA_B):
            if key[: -len(LORA_B)] + LORA_A not in plain:
                raise AdapterError(f"adapter has {PEFT_PREFIX}{key} but no matching lora_A")
        elif key.endswith(LORA_A):
            layer = key[: -len(LORA_A)]
            up = plain.get(layer + LORA_B)
            if up is None:
                raise AdapterError(f"adapter has {PEFT_PREFIX}{key} but no matching lora_B")
            weight = _param(params, layer + ".weight", key)
            delta = scaling * (up.to(torch.float32) @ tensor.to(torch.float32))
            adds.append((weight, _fit(delta, weight, key)))
        elif any(part.startswith("lora_") for part in key.split(".")):
            raise AdapterError(f"adapter tensor {PEFT_PREFIX}{key} is a kind of LoRA tensor this merge does not handle")
        else:
            target = _param(params, key.replace(BASE_LAYER, "."), key)
            copies.append((target, _fit(tensor, target, key)))
    for weight, delta in adds:
        weight.add_(delta)
    for target, value in copies:
        target.copy_(value)


def _strip(key: str) -> str:
    if not key.startswith(PEFT_PREFIX):
        raise AdapterError(f"adapter tensor {key} is not in peft's format (no {PEFT_PREFIX!r} prefix)")
    return key[len(PEFT_PREFIX) :]


def _param(params: Mapping[str, nn.Parameter], name: str, key: str) -> nn.Parameter:
    if name not in params:
        raise AdapterError(f"adapter tensor {PEFT_PREFIX}{key} has no parameter {name} in the model")
    return params[name]


def _fit(tensor: torch.Tensor, target: torch.Tensor, key: str) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(target.shape):
        raise AdapterError(
            f"adapter tensor {PEFT_PREFIX}{key} has shape {tuple(tensor.shape)}, the model wants {tuple(target.shape)}"
        )
    return tensor.to(target.device, target.dtype)
