"""Training's LoRA recipe (`training/lora.py`) on a tiny random BERT: which modules get
adapters, which train outright, what stays frozen, and that what it saves merges (with peft's
own merge and with serving's, `models/adapter.py`) into the same plain model. Here rather than
in tests/unit only because importing peft costs seconds the unit layer's budget lacks."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

peft = pytest.importorskip("peft")

from whybert_service.models import adapter  # noqa: E402
from whybert_service.models.adapter import lora_settings, merge_adapter  # noqa: E402
from whybert_service.training import lora  # noqa: E402


def _tiny(layers: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    return BertForSequenceClassification(config).eval()


@pytest.mark.parametrize(
    ("name", "frozen", "expected"),
    [
        ("bert.encoder.layer.0.attention.self.query", 1, True),
        ("bert.encoder.layer.1.attention.self.query", 1, False),
        ("bert.encoder.layer.10.output.dense", 2, False),  # 10, not 1 followed by 0
        ("bert.embeddings.word_embeddings", 1, True),
        ("bert.embeddings.word_embeddings", 0, False),
        ("model.layers.0.mlp", 1, True),
        ("classifier", 3, False),
    ],
)
def test_below_is_the_embeddings_and_the_bottom_layers(name: str, frozen: int, expected: bool) -> None:
    assert lora.below(name, frozen) is expected


def test_targets_are_the_encoder_linears_above_the_frozen_layers() -> None:
    model = _tiny()
    targets = lora.lora_targets(model, frozen_layers=1)
    assert targets and all(isinstance(model.get_submodule(t), torch.nn.Linear) for t in targets)
    assert not any("pooler" in t or "classifier" in t or ".layer.0." in t for t in targets)
    assert {t.split(".")[3] for t in targets} == {"1", "2"}
    assert len(lora.lora_targets(model)) == len(targets) * 3 // 2  # 6 linears a layer, 3 layers


def test_trained_whole_are_norms_above_frozen_the_pooler_and_the_head() -> None:
    whole = lora.trained_whole(_tiny(), frozen_layers=1)
    assert "classifier" in whole and "bert.pooler" in whole
    norms = [n for n in whole if n.endswith("LayerNorm")]
    assert norms and not any(".layer.0." in n or "embeddings" in n for n in norms)
    assert "bert.encoder.layer.2.output.LayerNorm" in whole


def test_only_the_recipe_trains() -> None:
    model = _tiny()
    wrapped = lora.with_lora(model, lora.lora_config(model, rank=2, alpha=4.0, dropout=0.0, frozen_layers=1))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert not any("embeddings" in n or ".layer.0." in n for n in trainable)
    biases = [n for n in trainable if n.endswith("bias") and "attention.self.query" in n]
    assert biases and all(".layer.0." not in n for n in biases)  # bias="lora_only": the adapted layers' biases


def test_saved_adapter_merges_like_peft_and_its_config_is_reproducible() -> None:
    model = _tiny()
    base = copy.deepcopy(model)
    wrapped = lora.with_lora(model, lora.lora_config(model, rank=2, alpha=3.0, dropout=0.0, frozen_layers=1))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in wrapped.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    state = lora.adapter_state(wrapped)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
    text = lora.config_json(wrapped, "whybert/minilm")
    assert text == lora.config_json(wrapped, "whybert/minilm")
    config = json.loads(text)
    assert config["base_model_name_or_path"] == "whybert/minilm" and config["inference_mode"] is True
    assert config["target_modules"] == sorted(config["target_modules"])
    assert len(config["modules_to_save"]) == len(set(config["modules_to_save"]))
    merge_adapter(base, state, lora_settings(config).scaling)
    plain = lora.merged(wrapped)
    assert not isinstance(plain, peft.PeftModel)
    ids = torch.tensor([[2, 5, 9, 3]])
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_plain_models_are_refused_or_passed_through() -> None:
    model = _tiny(layers=1)
    with pytest.raises(TypeError):
        lora.adapter_state(model)
    with pytest.raises(TypeError):
        lora.config_json(model, None)
    assert lora.merged(model) is model


def _trained_adapter(base: torch.nn.Module, rslora: bool) -> tuple[torch.nn.Module, dict[str, torch.Tensor], float]:
    """peft's wrapping of a copy of `base`, every trainable tensor moved (lora_B starts at 0)."""
    config = peft.LoraConfig(
        r=2, lora_alpha=6, use_rslora=rslora, target_modules=["query", "value", "intermediate.dense"],
        bias="lora_only", modules_to_save=["classifier"],
    )  # fmt: skip
    wrapped = peft.get_peft_model(copy.deepcopy(base), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in wrapped.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    state = {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(wrapped).items()}
    settings = lora_settings(config.to_dict() | {"peft_type": "LORA"})
    return wrapped.merge_and_unload(), state, settings.scaling


@pytest.mark.parametrize("rslora", [False, True])
def test_servings_merge_equals_peft_merge_and_unload(rslora: bool) -> None:
    """models/adapter.py's peft-free merge against peft's own, LoRA, wrapped biases and saved
    modules all moved off their initial values."""
    base = _tiny(layers=2)
    reference, state, scaling = _trained_adapter(base, rslora)
    assert any(k.endswith(adapter.LORA_A) for k in state) and any(adapter.BASE_LAYER in k for k in state)
    ours = copy.deepcopy(base)
    merge_adapter(ours, state, scaling)
    ids = torch.tensor([[2, 5, 9, 11, 3], [2, 7, 7, 30, 3]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(base(input_ids=ids).logits, reference(input_ids=ids).logits)  # the adapter mattered
    reference_params = dict(reference.named_parameters())
    for name, value in ours.named_parameters():
        torch.testing.assert_close(value, reference_params[name], rtol=1e-5, atol=1e-6, msg=name)
