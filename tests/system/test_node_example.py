"""The Node.js example client (examples/node) against a real server: it loads the .proto
with @grpc/proto-loader, calls Predict and Explain, and gets what the Python client gets."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import whybert

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
NODE, NPM = shutil.which("node"), shutil.which("npm")
TEXTS = ["the food was great", "the service was slow and the staff rude"]

pytestmark = pytest.mark.skipif(NODE is None or NPM is None, reason="Node.js is not installed")


@pytest.fixture(scope="module")
def node_client() -> Path:
    """examples/node with its locked packages installed (scripts/test runs npm ci first)."""
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(
            [str(NPM), "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, timeout=300,
            capture_output=True,
        )
    return EXAMPLE / "client.js"


def run_node(client_js: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NODE), str(client_js), *args], capture_output=True, text=True, timeout=180
    )


def test_node_client_predicts_and_explains_like_the_python_client(
    node_client: Path, target: str
) -> None:
    done = run_node(node_client, "--target", target, "--model", "tiny", "--max-evals", "80",
                    "--json", *TEXTS)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    with whybert.Client(target) as client:
        predictions = client.predict(TEXTS, model="tiny")
        explanations = client.explain(TEXTS, model="tiny", max_evals=80)
    assert out["model"] == "tiny"
    for got, p in zip(out["predictions"], predictions, strict=True):
        assert got["label"] == p.label
        assert got["scores"] == pytest.approx(p.scores, abs=1e-12)
    for got, e in zip(out["explanations"], explanations, strict=True):
        assert got["labels"] == e.labels and got["label"] == e.prediction.label
        assert [t["text"] for t in got["tokens"]] == e.tokens
        assert [(t["start"], t["end"]) for t in got["tokens"]] == e.offsets
        np.testing.assert_allclose([t["values"] for t in got["tokens"]], e.values, atol=1e-12)
        np.testing.assert_allclose(got["base_values"], e.base_values, atol=1e-12)
        assert [t["token"] for t in got["top"]] == [tok for tok, _ in e.top_tokens(None, 5)]


def test_node_client_prints_a_readable_summary(node_client: Path, target: str) -> None:
    done = run_node(node_client, "--target", target, "--model", "tiny", "--max-evals", "80",
                    TEXTS[0])
    assert done.returncode == 0, done.stderr
    with whybert.Client(target) as client:
        label = client.predict(TEXTS[0], model="tiny")[0].label
    lines = done.stdout.splitlines()
    assert lines[0] == "model: tiny"
    assert lines[1].startswith(f'predict  "{TEXTS[0]}": {label} (')
    assert lines[2].startswith(f'explain  "{TEXTS[0]}": why {label}: ')


def test_node_client_reports_grpc_errors(node_client: Path, target: str) -> None:
    done = run_node(node_client, "--target", target, "--model", "nope", "x")
    assert done.returncode == 1
    assert done.stderr.startswith("error: NOT_FOUND: model 'nope' is not served here")
    done = run_node(node_client, "--target", target, "--model", "tiny", "  ")
    assert done.returncode == 1
    assert done.stderr.startswith("error: INVALID_ARGUMENT: texts[0]")
