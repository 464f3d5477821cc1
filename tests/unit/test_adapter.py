"""Serving's merge of a peft LoRA adapter without peft (`models/adapter.py`), on a tiny random
BERT and tensors in peft's documented format: the LoRA product added at its scaling, saved
tensors replaced, peft's settings read and what the merge cannot do refused, and whatever
does not fit refused before any weight changes. (Equality with peft's own `merge_and_unload`
is checked in tests/integration/test_lora.py, where peft is imported anyway.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification
from whybert_service.models import adapter
from whybert_service.models.adapter import AdapterError, LoraSettings, lora_settings, merge_adapter, read_adapter

QUERY = "bert.encoder.layer.0.attention.self.query"
P = adapter.PEFT_PREFIX


def _tiny() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return BertForSequenceClassification(config).eval()


def _peft_state() -> dict[str, torch.Tensor]:
    """An adapter as peft saves one, written by hand: LoRA (rank 2) on the first layer's
    query, a trained bias of that wrapped layer, and the head saved whole."""
    g = torch.Generator().manual_seed(1)
    return {
        f"{P}{QUERY}{adapter.LORA_A}": torch.randn(2, 16, generator=g),
        f"{P}{QUERY}{adapter.LORA_B}": torch.randn(16, 2, generator=g),
        f"{P}{QUERY}{adapter.BASE_LAYER}bias": torch.randn(16, generator=g),
        f"{P}classifier.weight": torch.randn(3, 16, generator=g),
        f"{P}classifier.bias": torch.randn(3, generator=g),
    }


def test_the_merge_adds_the_scaled_lora_product_and_replaces_saved_tensors() -> None:
    """W + scaling · B @ A, as peft defines the merge; the rest replaced, nothing else touched."""
    base, state = _tiny(), _peft_state()
    merged = copy.deepcopy(base)
    merge_adapter(merged, state, scaling=1.5)
    params, before = dict(merged.named_parameters()), dict(base.named_parameters())
    delta = 1.5 * state[f"{P}{QUERY}{adapter.LORA_B}"] @ state[f"{P}{QUERY}{adapter.LORA_A}"]
    torch.testing.assert_close(params[f"{QUERY}.weight"], before[f"{QUERY}.weight"] + delta)
    torch.testing.assert_close(params[f"{QUERY}.bias"], state[f"{P}{QUERY}{adapter.BASE_LAYER}bias"])
    torch.testing.assert_close(params["classifier.weight"], state[f"{P}classifier.weight"])
    torch.testing.assert_close(params["classifier.bias"], state[f"{P}classifier.bias"])
    untouched = [n for n in params if not n.startswith((QUERY, "classifier"))]
    assert untouched and all(torch.equal(params[n], before[n]) for n in untouched)


def test_scaling_follows_peft() -> None:
    assert LoraSettings(rank=4, alpha=8).scaling == 2.0
    assert LoraSettings(rank=4, alpha=8, use_rslora=True).scaling == 4.0  # alpha / sqrt(rank)
    assert lora_settings({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": True}).scaling == 4.0


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"peft_type": "IA3", "r": 2, "lora_alpha": 4}, "not 'LORA'"),
        ({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_dora": True}, "use_dora"),
        ({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "rank_pattern": {"query": 4}}, "rank_pattern"),
        ({"peft_type": "LORA", "lora_alpha": 4}, "r / lora_alpha"),
        ({"peft_type": "LORA", "r": 0, "lora_alpha": 4}, "not positive"),
    ],
)
def test_settings_refuse_what_the_merge_cannot_do(raw: dict[str, object], match: str) -> None:
    with pytest.raises(AdapterError, match=match):
        lora_settings(raw)


def _mismatches(state: dict[str, torch.Tensor]) -> list[tuple[dict[str, torch.Tensor], str]]:
    a_key, b_key = f"{P}{QUERY}{adapter.LORA_A}", f"{P}{QUERY}{adapter.LORA_B}"
    return [
        ({k: v for k, v in state.items() if k != b_key}, "no matching lora_B"),
        ({k: v for k, v in state.items() if k != a_key}, "no matching lora_A"),
        ({**state, f"{P}classifier.weight": torch.zeros(5, 5)}, "has shape"),
        ({**state, a_key: torch.zeros(2, 7)}, "has shape"),  # B @ A does not fit the weight
        ({**state, f"{P}bert.nowhere.weight": torch.zeros(1)}, "no parameter"),
        ({k.removeprefix(P): v for k, v in state.items()}, "not in peft's format"),
        ({**state, a_key.replace("lora_A", "lora_embedding_A"): torch.zeros(1)}, "kind of LoRA tensor"),
    ]


def test_what_does_not_fit_is_refused_and_the_model_left_as_it_was() -> None:
    base = _tiny()
    for broken, match in _mismatches(_peft_state()):
        model = copy.deepcopy(base)
        with pytest.raises(AdapterError, match=match):
            merge_adapter(model, broken, 2.0)
        for (name, before), after in zip(base.state_dict().items(), model.state_dict().values(), strict=True):
            assert torch.equal(before, after), f"{match}: {name} changed"


def test_read_adapter_reads_peft_files_and_says_what_is_wrong(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = _peft_state()
    (tmp_path / adapter.ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 6}))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / adapter.ADAPTER_WEIGHTS))
    settings, tensors = read_adapter(tmp_path)
    assert settings == LoraSettings(rank=2, alpha=6.0) and settings.scaling == 3.0
    assert set(tensors) == set(state) and all(torch.equal(tensors[k], state[k]) for k in state)
    (tmp_path / adapter.ADAPTER_CONFIG).write_text("[1, 2]")
    with pytest.raises(AdapterError, match="not a JSON object"):
        read_adapter(tmp_path)
    (tmp_path / adapter.ADAPTER_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(AdapterError, match="cannot read the adapter"):
        read_adapter(tmp_path)
    with pytest.raises(AdapterError, match="cannot read the adapter"):
        read_adapter(tmp_path / "missing")
