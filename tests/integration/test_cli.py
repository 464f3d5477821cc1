"""The `whybert` command as a person uses it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from whybert import cli


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_prints_a_table_and_json(threaded_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    target = ["--target", threaded_server.target]
    code, out, _ = run_cli(["predict", "the food was great", "awful", *target], capsys)
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split()[:2] == ["text", "label"] and "positive" in header
    assert len(rows) == 2 and rows[0].startswith("the food was great")
    code, out, _ = run_cli(["predict", "the food was great", "--json", *target], capsys)
    (item,) = json.loads(out)
    assert item["text"] == "the food was great" and abs(sum(item["scores"].values()) - 1) < 1e-6


def test_models_health_and_explain(threaded_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    target = ["--target", threaded_server.target]
    code, out, _ = run_cli(["models", *target], capsys)
    assert code == 0 and out.startswith("tiny (default): labels negative, neutral, positive")
    code, out, _ = run_cli(["health", *target], capsys)
    assert code == 0 and out.strip() == "SERVING"
    code, out, _ = run_cli(["explain", "the food was great", "--max-evals", "40", "--json", *target], capsys)
    (item,) = json.loads(out)
    assert item["tokens"][1:-1] == ["the ", "food ", "was ", "great"]
    assert len(item["values"]) == len(item["tokens"]) and item["additivity_error"] < 1e-6
    code, out, _ = run_cli(["explain", "the food was great", "--max-evals", "40", "--targets", "all", *target], capsys)
    assert code == 0 and out.count("prediction:") == 3 and "explaining 'neutral'" in out


def test_errors_are_reported_not_raised(threaded_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    target = ["--target", threaded_server.target]
    code, _, err = run_cli(["predict", "", *target], capsys)
    assert code == 1 and "INVALID_ARGUMENT" in err and "texts[0]" in err
    code, _, err = run_cli(["predict", "x", "--model", "nope", *target], capsys)
    assert code == 1 and "NOT_FOUND" in err


def test_server_commands_without_the_server_extra_say_how_to_install_it(tmp_path: Any) -> None:
    # A Python that cannot import torch: the command must explain, not crash.
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'whybert_service'):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, _Block())
    """))
    env = {"PYTHONPATH": str(tmp_path), "PATH": ""}
    for command in ("serve", "train", "export-model"):
        result = subprocess.run(
            [sys.executable, "-c", "import whybert.cli, sys; sys.exit(whybert.cli.main())", command],
            capture_output=True, text=True, env=env,
        )
        assert result.returncode == 2
        assert 'pip install "whybert[server]"' in result.stderr


def test_server_commands_without_torch_say_how_to_install_it(tmp_path: Any) -> None:
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'torch':
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, _Block())
    """))
    result = subprocess.run(
        [sys.executable, "-c", "import whybert.cli, sys; sys.exit(whybert.cli.main())", "serve"],
        capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path), "PATH": ""},
    )
    assert result.returncode == 2, result.stderr
    assert 'pip install "whybert[server]"' in result.stderr and "torch" in result.stderr


def test_serve_refuses_a_pickled_model_with_a_clear_message(tmp_path: Any) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    result = subprocess.run(
        [sys.executable, "-m", "whybert_service.cli", "serve", "--no-builtin-model", "--model", f"bad={tmp_path}",
         "--port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "no .safetensors weights" in result.stderr and "never unpickles" in result.stderr
    assert "Traceback" not in result.stderr
