"""Prometheus's config and alert rules pass promtool (the static checks of the same files:
unit/test_deploy.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from _deploy import PROMETHEUS, RULES


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing (scripts/test installs prometheus)"
)
def test_prometheus_config_and_rules_pass_promtool() -> None:
    for command in (["check", "config", str(PROMETHEUS)], ["check", "rules", str(RULES)]):
        done = subprocess.run(["promtool", *command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
