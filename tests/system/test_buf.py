"""`scripts/check_breaking` (buf breaking against main, run by scripts/test): a breaking
change to the contract fails it, an added field does not, and a clone without main skips
with a message. Each case is a throwaway git repository holding a copy of the real protos."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
PROTO = Path("protos/whybert/v1/explainer.proto")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}

pytestmark = pytest.mark.skipif(
    not BUF.exists() or shutil.which("git") is None,
    reason="buf is not installed (scripts/test installs it into .tools) or git is missing",
)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository whose main branch holds today's contract and the check script."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "buf.yaml", root / "buf.yaml")
    shutil.copytree(ROOT / "protos", root / "protos")
    shutil.copy(ROOT / "scripts" / "check_breaking", root / "scripts" / "check_breaking")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the contract")
    return root


def check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["scripts/check_breaking"], cwd=repo, env={**os.environ, "BUF": str(BUF)},
                          capture_output=True, text=True, timeout=120)


def edit(repo: Path, old: str, new: str) -> None:
    path = repo / PROTO
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def test_unchanged_contract_passes(repo: Path) -> None:
    done = check(repo)
    assert done.returncode == 0, done.stderr
    assert "keeps the contract of refs/heads/main" in done.stdout


def test_added_field_passes(repo: Path) -> None:
    edit(repo, "  repeated string pairs = 10;\n}\n\n// PredictResponse",
         "  repeated string pairs = 10;\n  // A note.\n  string note = 3;\n}\n\n// PredictResponse")
    done = check(repo)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("old", "new", "rule"),
    [
        # Renumbering a field: old clients' field 2 would be read as something else.
        ("characters-per-text limits.\n  repeated string texts = 2;",
         "characters-per-text limits.\n  repeated string texts = 3;",
         'Previously present field "2" with name "texts" on message "PredictRequest" was deleted'),
        # Removing an RPC.
        ("  rpc ListModels(ListModelsRequest) returns (ListModelsResponse);\n", "",
         'Previously present RPC "ListModels" on service "Explainer" was deleted'),
        # Changing a field's type.
        ("  double probability = 2;", "  float probability = 2;",
         'changed type from "double" to "float"'),
    ],
    ids=["renumbered-field", "removed-rpc", "changed-type"],
)
def test_breaking_change_fails(repo: Path, old: str, new: str, rule: str) -> None:
    edit(repo, old, new)
    done = check(repo)
    assert done.returncode == 1
    assert rule in done.stderr
    assert "never renumber" in done.stderr


def test_clone_with_only_origin_main_still_checks(repo: Path, tmp_path: Path) -> None:
    """A CI checkout of a branch, shallow, with main only as origin/main."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--depth", "1", repo.as_uri(), str(clone)],
                   check=True, capture_output=True, timeout=60)
    git(clone, "checkout", "-q", "-b", "feature")
    git(clone, "branch", "-q", "-D", "main")
    edit(clone, "  double probability = 2;", "  float probability = 2;")
    done = check(clone)
    assert done.returncode == 1
    assert "refs/remotes/origin/main" in done.stderr


def test_clone_without_main_skips_with_a_message(repo: Path) -> None:
    git(repo, "branch", "-q", "-m", "main", "feature")
    edit(repo, "  double probability = 2;", "  float probability = 2;")
    done = check(repo)
    assert done.returncode == 0
    assert "skipped: no main branch" in done.stdout
