"""The .proto contract through the tools: the generated stubs are in sync with the proto
(scripts/gen_protos.py --check) and buf's STANDARD lint is clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = shutil.which("buf") or str(ROOT / ".tools/node_modules/.bin/buf")


def test_generated_stubs_match_the_proto() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not Path(BUF).exists(), reason="buf is installed by scripts/test")
def test_buf_standard_lint_is_clean() -> None:
    result = subprocess.run([BUF, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
