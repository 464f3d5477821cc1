"""Loading a model directory (models/loading.py) never unpickles and never runs the
model's own code."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from whybert_service.models.loading import ModelLoadError, load_directory


class _Trap:
    """Unpickling this writes a file: proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (shutil.copyfile, (__file__, str(self.marker)))


def test_model_loading_never_unpickles(tiny_model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    trapped = tmp_path / "trapped"
    shutil.copytree(tiny_model_dir, trapped)
    (trapped / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    (trapped / "training_args.bin").write_bytes(pickle.dumps(_Trap(marker)))
    classifier = load_directory("trapped", trapped, torch.device("cpu"), torch.float32)
    assert classifier.labels == ["negative", "neutral", "positive"]
    assert not marker.exists()

    for weights in trapped.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(
        ModelLoadError, match=r"no \.safetensors weights .*pytorch_model\.bin.*never unpickles"
    ):
        load_directory("trapped", trapped, torch.device("cpu"), torch.float32)
    assert not marker.exists()


def test_model_loading_refuses_remote_code(tiny_model_dir: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    with pytest.raises(ModelLoadError, match="remote code"):
        load_directory("remote", remote, torch.device("cpu"), torch.float32)
    assert not (tmp_path / "ran").exists()
