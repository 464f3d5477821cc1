"""The deployment files and what can be read from them, shared by the static checks
(unit/test_deploy.py), promtool's (system/test_promtool.py) and a real Prometheus's
(system/test_prometheus.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from whybert.v1 import explainer_pb2 as pb
from whybert_service.metrics import Metrics
from whybert_service.settings import ServerSettings

ROOT = Path(__file__).resolve().parent.parent  # tests/.. is the repository
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "deploy" / "compose.replicas.yml"]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "whybert.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
ENVOY = ROOT / "deploy" / "envoy" / "envoy.yaml"
DEFAULTS = ServerSettings()
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
# Series Prometheus makes itself for every target; alerts may use them.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def exported_metric_names() -> set[str]:
    """Every series name a whybert server can expose: counters with `_total`, histograms
    with `_bucket`, `_sum` and `_count` (read from a live registry, not a list)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def metric_family_names() -> set[str]:
    """The names as written in the docs: counters with `_total`, histograms bare."""
    return {
        family.name + ("_total" if family.type == "counter" else "")
        for family in Metrics().registry.collect()
    }


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = match.group()
        if word.lower() in _PROMQL_WORDS or expr[match.end() :].lstrip().startswith("("):
            continue  # a keyword, or a function / aggregation being called
        names.add(word)
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def rule_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data
