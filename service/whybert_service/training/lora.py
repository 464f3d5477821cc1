"""LoRA for training, with peft: which layers get adapters, which are trained outright.

The recipe: LoRA on every linear layer of the encoder proper above the frozen layers (the
attention and feed-forward projections, not the pooler); trained outright besides, because
they are few (about 0.2 M values for a MiniLM) and move the representation's scale and
offset, which rank-limited updates do poorly: those layers' biases (peft's
`bias="lora_only"`), their LayerNorms, the pooler and the classification head (peft's
`modules_to_save`). The embeddings and the bottom `frozen_layers` layers stay untouched.

The adapter files peft writes, and serving's merge of them without peft, are described in
`whybert_service.models.adapter`.
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from torch import nn

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


def _prefix(model: nn.Module) -> str:
    return str(getattr(model, "base_model_prefix", "")) + "."


def lora_targets(model: nn.Module, frozen_layers: int = 0) -> list[str]:
    """Every linear layer of the encoder proper (attention and feed-forward projections)."""
    prefix = _prefix(model)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.startswith(prefix)
        and "pooler" not in name
        and not below(name, frozen_layers)
    ]


def trained_whole(model: nn.Module, frozen_layers: int = 0) -> list[str]:
    """Modules trained outright: LayerNorms above the frozen layers, the pooler, the head."""
    prefix = _prefix(model)
    norms = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.LayerNorm) and name.startswith(prefix) and not below(name, frozen_layers)
    ]
    poolers = [
        name
        for name, module in model.named_modules()
        if name.startswith(prefix) and name.rsplit(".", 1)[-1] == "pooler" and any(True for _ in module.parameters())
    ]
    head = [
        name
        for name, module in model.named_children()
        if name != prefix[:-1] and any(True for _ in module.parameters())
    ]
    return norms + poolers + head


def lora_config(model: nn.Module, rank: int, alpha: float, dropout: float, frozen_layers: int = 0) -> LoraConfig:
    """peft's config for the recipe above, naming every target and saved module in full."""
    return LoraConfig(
        task_type="SEQ_CLS",
        r=rank,
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,  # type: ignore[arg-type]  # peft says int; it divides
        lora_dropout=dropout,
        target_modules=lora_targets(model, frozen_layers),
        bias="lora_only",
        modules_to_save=trained_whole(model, frozen_layers),
    )


def with_lora(model: nn.Module, config: LoraConfig) -> PeftModel:
    """The model wrapped by peft: only the adapters and the modules trained outright train."""
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in favour of another
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        wrapped = get_peft_model(model, config)
    assert isinstance(wrapped, PeftModel)
    return wrapped


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What peft saves of the model (its key names), as float32 CPU tensors."""
    if not isinstance(model, PeftModel):
        raise TypeError("not a model wrapped by with_lora")
    return {
        key: value.detach().to("cpu", torch.float32).contiguous().clone()
        for key, value in get_peft_model_state_dict(model).items()
    }


def config_json(model: nn.Module, base_name: str | None) -> str:
    """`adapter_config.json` as peft's `save_pretrained` writes it, but reproducible: sets
    (the target names) sorted, the head that peft appends to `modules_to_save` listed once,
    and `base_model_name_or_path` as given (peft would record the base's local path)."""
    config = model.peft_config["default"] if isinstance(model, PeftModel) else None
    if not isinstance(config, LoraConfig):
        raise TypeError("not a model wrapped by with_lora")
    out: dict[str, Any] = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    if out.get("modules_to_save"):
        out["modules_to_save"] = list(dict.fromkeys(out["modules_to_save"]))
    out["base_model_name_or_path"] = base_name
    out["inference_mode"] = True  # as peft saves it
    return json.dumps(out, indent=2, sort_keys=True) + "\n"


def merged(model: nn.Module) -> nn.Module:
    """A plain model: the adapters folded into the weights, the saved modules in place."""
    if isinstance(model, PeftModel):
        plain: nn.Module = model.merge_and_unload()
        return plain
    return model
