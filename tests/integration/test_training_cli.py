"""`whybert train` end to end on a tiny CSV and a tiny random BERT, and the data split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from whybert_service.models import adapter
from whybert_service.training import cli, data, lora

POSITIVE = ["good", "great", "love", "lovely", "happy", "nice", "superb", "excellent"]
NEGATIVE = ["bad", "awful", "hate", "terrible", "sad", "nasty", "poor", "dreadful"]
FILLER = ["the", "movie", "was", "food", "service", "really", "so", "day"]


def tiny_base(path: Path) -> Path:
    """A random 2-layer BERT (hidden 32) with a WordPiece vocabulary of the test's words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    wordpiece = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    specials = {f"{n}_token": f"[{n.upper()}]" for n in ("unk", "pad", "cls", "sep", "mask")}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, model_max_length=64, **specials)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path, safe_serialization=True)
    return path


def tiny_csv(path: Path, rows: int = 120) -> Path:
    """Positive and negative sentences; a few with a byte that is not UTF-8."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(rows):
        words = POSITIVE if i % 2 else NEGATIVE
        text = " ".join([*rng.choice(FILLER, 3), *rng.choice(words, 2)])
        lines.append({"review": text, "stars": "pos" if i % 2 else "neg", "conf": f"{0.5 + (i % 5) / 10}"})
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["review", "stars", "conf"])
        writer.writeheader()
        writer.writerows(lines)
    with path.open("ab") as fh:
        fh.write(b"the food \xd1 was great great,pos,0.9\r\n")
    return path


def train_args(csv_path: Path, base: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(csv_path), "--text-column", "review", "--label-column", "stars",
        "--confidence-column", "conf", "--confidence-weighting", "--base", str(base),
        "--out", str(out), "--epochs", "10", "--batch-size", "8", "--max-length", "16",
        "--lr", "3e-3", "--device", "cpu", "--threads", "1", "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    base = tiny_base(root / "base")
    csv_path = tiny_csv(root / "reviews.csv")
    hf_out, adapter_out = root / "hf", root / "adapter"
    assert cli.main(train_args(csv_path, base, hf_out)) == 0
    assert cli.main(train_args(csv_path, base, adapter_out, "--format", "adapter")) == 0
    return {"base": base, "csv": csv_path, "hf": hf_out, "adapter": adapter_out}


def test_train_writes_a_loadable_model(tiny_run: dict[str, Path]) -> None:
    from whybert_service.models.loading import load_directory

    classifier = load_directory("tiny", tiny_run["hf"], torch.device("cpu"), torch.float32)
    assert classifier.labels == ["neg", "pos"]
    assert not any("lora" in name for name, _ in classifier.model.named_parameters())
    logits = classifier.forward(classifier.encode(["great lovely day", "awful dreadful food"]).ids)
    assert logits.shape == (2, 2) and np.isfinite(logits).all()
    report = json.loads((tiny_run["hf"] / "training_report.json").read_text())
    assert report["labels"] == ["neg", "pos"]
    assert report["split"]["train"] + report["split"]["validation"] + report["split"]["test"] == 121
    assert report["best"] is not None and report["test"]["rows"] == report["split"]["test"]
    assert report["validations"][-1]["epoch"] == 10
    assert "reviews.csv" in report["command"] and str(tiny_run["base"].parent) not in report["data"]["csv"]


def test_the_model_learns_the_tiny_task(tiny_run: dict[str, Path]) -> None:
    from whybert_service.models.loading import load_directory

    classifier = load_directory("tiny", tiny_run["hf"], torch.device("cpu"), torch.float32)
    texts = ["so good great", "love happy nice", "bad awful", "terrible hate sad"]
    pred = classifier.forward(classifier.encode(texts).ids).argmax(axis=1)
    assert pred.tolist() == [1, 1, 0, 0]


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # inside peft
def test_adapter_format_merges_onto_its_base_like_the_hf_output(tiny_run: dict[str, Path]) -> None:
    """The same seeded run written both ways: base + adapter, merged without peft, must equal
    the model peft merged; and peft itself reads the adapter as the same model."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification
    from whybert_service.models.builtin import file_hashes

    info = json.loads((tiny_run["adapter"] / adapter.ADAPTER_INFO).read_text())
    assert info["labels"] == ["neg", "pos"] and info["encoder"]["sha256"] == file_hashes(tiny_run["base"])
    settings, tensors = adapter.read_adapter(tiny_run["adapter"])
    assert (settings.rank, settings.scaling) == (16, 2.0)
    assert "base_model.model.classifier.weight" in tensors
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in tensors
    merged = AutoModelForSequenceClassification.from_pretrained(tiny_run["hf"]).eval()
    rebuilt = AutoModelForSequenceClassification.from_pretrained(tiny_run["base"], num_labels=2).eval()
    adapter.merge_adapter(rebuilt, tensors, settings.scaling)
    by_peft = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(tiny_run["base"], num_labels=2), tiny_run["adapter"]
    ).eval()
    ids = torch.tensor([[2, 5, 6, 3], [2, 13, 14, 3]])
    with torch.no_grad():
        want = merged(input_ids=ids).logits
        torch.testing.assert_close(rebuilt(input_ids=ids).logits, want)
        torch.testing.assert_close(by_peft(input_ids=ids).logits, want)


def test_lora_trains_the_adapters_norms_biases_pooler_and_head_above_frozen_layers(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_base(tmp_path / "base"), num_labels=2)
    wrapped = lora.with_lora(model, lora.lora_config(model, 4, 8.0, 0.0, frozen_layers=1))
    trained = {
        n.removeprefix("base_model.model.").replace(".modules_to_save.default.", ".").replace(".default.", ".")
        for n, p in wrapped.named_parameters()
        if p.requires_grad
    }
    assert trained, "nothing would train"
    assert not any("embeddings" in n or ".layer.0." in n for n in trained)
    assert "bert.encoder.layer.1.attention.self.query.lora_A.weight" in trained
    assert "bert.encoder.layer.1.attention.self.query.base_layer.bias" in trained
    assert "bert.encoder.layer.1.output.LayerNorm.weight" in trained
    assert {"bert.pooler.dense.weight", "classifier.weight", "classifier.bias"} <= trained
    assert not any(n.endswith("query.base_layer.weight") for n in trained)  # the frozen weight itself


def test_full_fine_tune_with_rank_zero(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    from whybert_service.models.loading import load_directory

    out = tmp_path / "full"
    assert cli.main(train_args(tiny_run["csv"], tiny_run["base"], out, "--lora-rank", "0", "--epochs", "1")) == 0
    assert load_directory("full", out, torch.device("cpu"), torch.float32).labels == ["neg", "pos"]


def test_bad_input_is_a_clear_error(
    tiny_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = train_args(tiny_run["csv"], tiny_run["base"], tmp_path / "x")
    args[args.index("review")] = "body"
    assert cli.main(args) == 2
    assert "no column body" in capsys.readouterr().err
    rank0 = train_args(tiny_run["csv"], tiny_run["base"], tmp_path / "y", "--format", "adapter", "--lora-rank", "0")
    assert cli.main(rank0) == 2


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["--task", "entities", "--data", "x.csv", "--labels", "a,b"], "--data, --labels apply to --task sentiment"),
        (["--task", "entities", "--balance-classes", "--test-fraction", "0.2"], "--test-fraction, --balance-classes"),
        (["--corpus-cache", "somewhere"], "--corpus-cache applies to --task entities only"),
    ],
)
def test_a_flag_of_the_other_task_is_refused_not_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], refused: str
) -> None:
    assert cli.main(["--out", str(tmp_path / "out"), *args]) == 2
    assert refused in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_merge_adapter_refuses_what_does_not_fit(tiny_run: dict[str, Path]) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_run["base"], num_labels=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    query = "base_model.model.bert.encoder.layer.0.attention.self.query"
    good = {query + ".lora_A.weight": torch.ones(4, 32), query + ".lora_B.weight": torch.ones(32, 4)}
    cases = [
        ({**good, "base_model.model.classifier.weight": torch.zeros(3, 32)}, "shape"),
        ({**good, "base_model.model.head.weight": torch.zeros(2, 32)}, "no parameter"),
        ({query + ".lora_A.weight": torch.zeros(4, 32)}, "lora_B"),
        ({query + ".lora_B.weight": torch.zeros(32, 4)}, "lora_A"),
        ({query + ".lora_magnitude_vector": torch.zeros(32)}, "does not handle"),
        ({"classifier.weight": torch.zeros(2, 32)}, "peft's format"),
    ]
    for tensors, message in cases:
        with pytest.raises(adapter.AdapterError, match=message):
            adapter.merge_adapter(model, tensors, 1.0)
    # Refused means untouched: the good LoRA pair of the first two cases was not applied.
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, before[name], rtol=0, atol=0)


def test_lora_settings_follow_peft_and_refuse_what_the_merge_cannot_do() -> None:
    assert adapter.lora_settings({"peft_type": "LORA", "r": 16, "lora_alpha": 32}).scaling == 2.0
    rslora = adapter.lora_settings({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "use_rslora": True})
    assert rslora.scaling == 8.0
    with pytest.raises(adapter.AdapterError, match="use_dora"):
        adapter.lora_settings({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "use_dora": True})
    with pytest.raises(adapter.AdapterError, match="rank_pattern"):
        adapter.lora_settings({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "rank_pattern": {"query": 8}})
    with pytest.raises(adapter.AdapterError, match="LORA"):
        adapter.lora_settings({"peft_type": "IA3"})


def test_split_is_fixed_stratified_and_disjoint() -> None:
    examples = [data.Example(f"text {i}", i % 3) for i in range(300)]
    examples += [data.Example("text 7", 1)]  # a duplicate is kept once
    split = data.split_stratified(examples, seed=5)
    again = data.split_stratified(list(reversed(examples)), seed=5)
    assert split.sizes() == {"train": 240, "validation": 30, "test": 30}
    assert [e.text for e in split.test] == [e.text for e in again.test]
    assert sorted(e.label for e in split.test) == [0] * 10 + [1] * 10 + [2] * 10
    texts = [{e.text for e in part} for part in (split.train, split.validation, split.test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert [e.text for e in data.split_stratified(examples, seed=6).test] != [e.text for e in split.test]


def test_default_corpus_split_is_documented() -> None:
    """The numbers the model card gives for the corpus and its split."""
    dataset, split = data.default_split()
    assert dataset.labels == ["negative", "neutral", "positive"]
    assert len(dataset.examples) == 38158
    assert split.sizes() == {"train": 29795, "validation": 3724, "test": 3724}
