"""Low-rank adapters (LoRA) in plain torch: train a few parameters, ship a small file.

An adapter artefact is one safetensors file of two kinds of tensors, named after the plain
model's parameters:

- `<linear>.lora_A` (rank × in) and `<linear>.lora_B` (out × rank): the weight of that
  linear layer becomes `W + scaling · B @ A` when merged;
- any other name (a LayerNorm, a bias, the pooler, the classification head): the tensor
  that replaces the model's parameter of that name outright.

Merging gives an ordinary model with no trace of LoRA, so serving and exporting need
neither peft nor this module's layer class.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

LORA_A = "lora_A"
LORA_B = "lora_B"


class AdapterError(ValueError):
    """An adapter does not fit the model it is merged onto."""


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update, scaled by alpha / rank."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()
        out: torch.Tensor = self.base(x) + update * self.scaling
        return out

    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight."""
        with torch.no_grad():
            self.base.weight += self.scaling * (self.lora_B @ self.lora_A)
        self.base.weight.requires_grad_(True)
        return self.base


def _is_norm(name: str) -> bool:
    lowered = name.lower()
    return "layernorm" in lowered or "layer_norm" in lowered


def fully_trained(name: str, base_prefix: str) -> bool:
    """Parameters trained outright besides the adapters: head, pooler, norms and biases.

    They are few (about 0.2 M for a MiniLM) and let the model move its
    representation's scale and offset, which rank-limited updates do poorly.
    """
    in_head = not name.startswith(base_prefix + ".")
    return in_head or "pooler" in name or _is_norm(name) or name.endswith(".bias")


_LAYER_INDEX = re.compile(r"\.layers?\.(\d+)\.")


def below(name: str, frozen_layers: int) -> bool:
    """Whether a parameter or module sits in the embeddings or the bottom `frozen_layers` layers.

    Nothing there is trained, so backpropagation stops above them: each frozen layer saves
    about a sixth of a MiniLM's backward pass.
    """
    if frozen_layers <= 0:
        return False
    if ".embeddings." in name:
        return True
    found = _LAYER_INDEX.search(name)
    return found is not None and int(found.group(1)) < frozen_layers


def lora_targets(model: nn.Module, base_prefix: str, frozen_layers: int = 0) -> list[str]:
    """Every linear layer of the encoder proper (attention and feed-forward projections)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.startswith(base_prefix + ".")
        and "pooler" not in name
        and not below(name, frozen_layers)
    ]


def inject(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float,
    targets: Iterable[str],
    frozen_layers: int = 0,
) -> list[str]:
    """Freeze the model, wrap `targets` in LoRA layers and unfreeze the fully-trained rest."""
    base_prefix = str(getattr(model, "base_model_prefix", ""))
    for name, param in model.named_parameters():
        param.requires_grad_(fully_trained(name, base_prefix) and not below(name, frozen_layers))
    wrapped = []
    for name in targets:
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        linear = getattr(holder, child)
        if not isinstance(linear, nn.Linear):
            raise AdapterError(f"{name} is not a linear layer")
        setattr(holder, child, LoRALinear(linear, rank, alpha, dropout))
        wrapped.append(name)
    return wrapped


def plain_name(name: str) -> str:
    """A parameter's name in the plain model: `x.query.base.bias` → `x.query.bias`."""
    return name.replace(".base.", ".")


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The artefact's tensors: every trainable parameter, under its plain-model name."""
    return {
        plain_name(name): param.detach().to("cpu", torch.float32).contiguous().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def merge_in_place(model: nn.Module) -> nn.Module:
    """Replace each LoRA layer by its merged plain linear layer."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, _, child = name.rpartition(".")
            holder = model.get_submodule(parent) if parent else model
            setattr(holder, child, module.merged())
    return model


@torch.no_grad()
def merge_adapter(model: nn.Module, tensors: Mapping[str, torch.Tensor], scaling: float) -> None:
    """Put an adapter artefact onto a plain model: add LoRA deltas, replace the rest.

    Every tensor must find its parameter with the right shape; anything else is an
    `AdapterError`, never a silently half-applied adapter.
    """
    params = dict(model.named_parameters())
    for key, tensor in tensors.items():
        if key.endswith("." + LORA_B):
            continue
        if key.endswith("." + LORA_A):
            layer = key[: -len(LORA_A) - 1]
            weight = _param(params, layer + ".weight", key)
            up = tensors.get(layer + "." + LORA_B)
            if up is None:
                raise AdapterError(f"adapter has {key} but no {layer}.{LORA_B}")
            delta = scaling * (up.to(torch.float32) @ tensor.to(torch.float32))
            weight.add_(_fit(delta, weight, key))
        else:
            target = _param(params, key, key)
            target.copy_(_fit(tensor, target, key))
    orphans = [k for k in tensors if k.endswith("." + LORA_B) and k[: -len(LORA_B)] + LORA_A not in tensors]
    if orphans:
        raise AdapterError(f"adapter has {orphans[0]} but no matching {LORA_A}")


def _param(params: Mapping[str, nn.Parameter], name: str, key: str) -> nn.Parameter:
    if name not in params:
        raise AdapterError(f"adapter tensor {key} has no parameter {name} in the model")
    return params[name]


def _fit(tensor: torch.Tensor, target: torch.Tensor, key: str) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(target.shape):
        raise AdapterError(
            f"adapter tensor {key} has shape {tuple(tensor.shape)}, the model wants {tuple(target.shape)}"
        )
    return tensor.to(target.device, target.dtype)
