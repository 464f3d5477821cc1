"""The deployment files, checked without a Docker engine: the compose files parse and
everything they build, mount and publish exists and agrees; the Dockerfile copies only what
its context holds and runs unprivileged with a gRPC health check; Envoy's config balances
gRPC over healthy replicas; every PromQL expression of the dashboard and the alerts names a
metric that whybert exports. (promtool's check of the Prometheus files runs a subprocess:
system/test_promtool.py.)"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import pytest
from _deploy import (
    COMPOSE_FILES,
    DASHBOARD,
    DEFAULTS,
    ENVOY,
    PROMETHEUS,
    PROMETHEUS_SERIES,
    ROOT,
    SERVICE_NAME,
    dashboard_exprs,
    exported_metric_names,
    load_yaml,
    metric_family_names,
    promql_metric_names,
    rule_exprs,
)
from whybert_service.settings import ServerSettings, env_name

# ---- the PromQL checker itself --------------------------------------------------------


def test_promql_names_are_found_and_functions_labels_keywords_are_not() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, grpc_method) "
        '(rate(grpc_server_handling_seconds_bucket{grpc_service="whybert.v1.Explainer", '
        'grpc_code!~"OK|x"}[$__rate_interval]))) '
        "/ on (instance) group_left whybert_queue_rows offset 5m > bool 1e3 "
        "or sum without (model) (whybert_rows_total)"
    )
    assert promql_metric_names(expr) == {
        "grpc_server_handling_seconds_bucket", "whybert_queue_rows", "whybert_rows_total",
    }  # fmt: skip
    assert "grpc_server_handled_total" in exported_metric_names()
    assert "whybert_queue_wait_seconds_bucket" in exported_metric_names()
    assert "whybert_queue_wait_seconds" not in exported_metric_names()


# ---- docker-compose --------------------------------------------------------------------


def services(path: Path) -> dict[str, dict[str, Any]]:
    compose = load_yaml(path)
    assert compose.get("services"), f"{path.name} has no services"
    return {name: spec for name, spec in compose["services"].items()}


def whybert_services(path: Path) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services(path).items() if n.startswith("whybert")}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_services_build_or_pull_and_their_mounts_exist(path: Path) -> None:
    compose = load_yaml(path)
    named_volumes = set(compose.get("volumes") or {})
    for name, spec in services(path).items():
        assert "image" in spec or "build" in spec, f"{name}: neither image nor build"
        if "build" in spec:
            context = (path.parent / spec["build"]["context"]).resolve()
            assert context == ROOT, f"{name}: build context is not the repository root"
            assert (context / spec["build"].get("dockerfile", "Dockerfile")).is_file()
        for volume in spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target.startswith("/"), f"{name}: {volume}"
            if source.startswith("."):
                assert (path.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named_volumes, f"{name}: volume {source} is not declared"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_ports_match_what_the_containers_listen_on(path: Path) -> None:
    exposed = dockerfile_exposed_ports()
    listening = {
        "prometheus": {9090}, "grafana": {3000},
        "envoy": {listener_port(), envoy_admin_port()},
    }  # fmt: skip
    published_by_profile: dict[str, list[int]] = {}
    for name, spec in services(path).items():
        expected = exposed if name.startswith("whybert") else listening[name]
        for mapping in spec.get("ports", []):
            host, container = (int(p) for p in str(mapping).split(":")[-2:])
            assert container in expected, f"{name} publishes {container}, listens on {expected}"
            for profile in spec.get("profiles", ["(always)"]):
                published_by_profile.setdefault(profile, []).append(host)
        for port in spec.get("expose", []):
            assert int(port) in expected, f"{name} exposes {port}"
    always = published_by_profile.pop("(always)", [])
    for profile, ports in published_by_profile.items():
        together = always + ports
        assert len(together) == len(set(together)), f"host port clash with profile {profile}"


def test_compose_has_a_gpu_service_and_a_cpu_profile_both_reachable_as_whybert() -> None:
    found = whybert_services(COMPOSE_FILES[0])
    gpu = [s for s in found.values() if "gpu" in s.get("profiles", [])]
    cpu = [s for s in found.values() if "cpu" in s.get("profiles", [])]
    assert len(gpu) == 1 and len(cpu) == 1
    devices = gpu[0]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert re.fullmatch(r"cu\d+", gpu[0]["build"]["args"]["VARIANT"])
    assert cpu[0]["build"]["args"]["VARIANT"] == "cpu"
    assert "deploy" not in cpu[0]
    # Prometheus and Envoy look for `whybert`: each variant must answer to that name.
    for name, spec in found.items():
        aliases = spec.get("networks", {}).get("default", {}).get("aliases", [])
        assert name == "whybert" or "whybert" in aliases, name


def test_replicas_example_runs_several_whybert_behind_envoy() -> None:
    found = services(COMPOSE_FILES[1])
    assert found["whybert"]["deploy"]["replicas"] >= 2
    assert "ports" not in found["whybert"], "replicas cannot share published host ports"
    assert any(v.endswith(":/etc/envoy/envoy.yaml:ro") for v in found["envoy"]["volumes"])
    assert "/etc/envoy/envoy.yaml" in found["envoy"]["command"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_environment_names_real_settings(path: Path) -> None:
    fields = {env_name(name) for name in ServerSettings.model_fields}
    for name, spec in whybert_services(path).items():
        for variable in spec.get("environment", {}):
            assert variable in fields or not variable.startswith("WHYBERT_"), f"{name}: {variable}"


# ---- Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_exposed_ports() -> set[int]:
    return {int(p) for k, a in dockerfile_instructions() if k == "EXPOSE" for p in a.split()}


def docker_ignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*")
        if pattern.startswith("**/"):
            regex = "(?:.*/)?" + fnmatch.translate(pattern[3:]).replace(".*", "[^/]*")
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_rule_keeps_sources_and_drops_the_rest() -> None:
    assert not docker_ignored("service/whybert_service/grpc/server.py")
    assert docker_ignored("service/whybert_service/__pycache__/cli.cpython-311.pyc")
    assert docker_ignored(".venv/bin/python")
    assert docker_ignored("tests/conftest.py")


def test_dockerfile_copies_what_the_context_holds_and_installs_the_server() -> None:
    steps = dockerfile_instructions()
    copies = [a.split() for k, a in steps if k == "COPY" and not a.startswith("--from")]
    assert copies
    for *sources, _target in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing"
            assert not docker_ignored(source), f"COPY {source}: excluded by .dockerignore"
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert 'pip install ".[server]"' in runs  # the server extra brings the default model
    assert "download.pytorch.org/whl/${VARIANT}" in runs and "torch==${TORCH_VERSION}" in runs
    assert "load_builtin" in runs  # the build fails if the default model does not load


def test_the_image_compiles_the_engines_rounds_into_a_cache_the_server_may_write() -> None:
    """Built as root, run as uid 10001: numba reads a cache only where it may write, so the
    build fills NUMBA_CACHE_DIR and the final stage hands it to the server's user."""
    steps = dockerfile_instructions()
    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    build = steps[: len(steps) - len(final)]
    cache = "/opt/whybert/numba-cache"
    assert any(k == "ENV" and f"NUMBA_CACHE_DIR={cache}" in a for k, a in build)
    assert any(k == "ENV" and f"NUMBA_CACHE_DIR={cache}" in a for k, a in final)
    assert any(k == "RUN" and "compile_rounds()" in a for k, a in build)
    user = [a for k, a in final if k == "USER"][-1].split(":")[0]
    assert any(k == "RUN" and f"chown -R {user}:" in a and cache in a for k, a in final)


def test_dockerfile_runs_unprivileged_with_a_grpc_health_check() -> None:
    steps = dockerfile_instructions()
    user = [a for k, a in steps if k == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    health = " ".join(a for k, a in steps if k == "HEALTHCHECK")
    assert "whybert health" in health and "${WHYBERT_PORT}" in health
    assert ("ENTRYPOINT", '["whybert", "serve"]') in steps
    assert dockerfile_exposed_ports() == {DEFAULTS.port, DEFAULTS.metrics_port}
    scripts = (ROOT / "pyproject.toml").read_text()
    assert 'whybert = "whybert.cli:main"' in scripts
    env = " ".join(a for k, a in steps if k == "ENV")
    fields = {env_name(name) for name in ServerSettings.model_fields}
    assert set(re.findall(r"WHYBERT_[A-Z_]+", env)) <= fields


# ---- Prometheus, Grafana, Envoy --------------------------------------------------------


def test_prometheus_scrapes_whybert_on_its_metrics_port() -> None:
    config = load_yaml(PROMETHEUS)
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "whybert")
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["whybert"] and sd["port"] == DEFAULTS.metrics_port


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_promql_names_exported_metrics(source: str) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else rule_exprs()
    known = exported_metric_names() | (PROMETHEUS_SERIES if source == "rules" else set())
    assert exprs
    for title, expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        assert names <= known, f"{title}: {sorted(names - known)} are not exported"


def test_dashboard_shows_what_operators_need() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"]
    exprs = [e for _, e in dashboard_exprs()]
    used = set().union(*(promql_metric_names(e) for e in exprs))
    for needed in (
        "whybert_queue_rows", "whybert_queue_requests", "whybert_batch_rows_bucket",
        "whybert_batch_tokens_bucket", "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket", "whybert_device_memory_used_bytes",
    ):  # fmt: skip
        assert needed in used, f"no panel uses {needed}"
    latency = [e for e in exprs if "grpc_server_handling_seconds_bucket" in e]
    assert any("histogram_quantile(0.99" in e for e in latency), "no latency percentiles"
    assert any('grpc_code!="OK"' in e for e in exprs), "no error panel"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    # Every panel reads the provisioned datasource, under the uid it is provisioned with.
    datasources = load_yaml(ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml")
    uid = datasources["datasources"][0]["uid"]
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    provider = load_yaml(ROOT / "deploy/grafana/provisioning/dashboards/whybert.yml")
    path = provider["providers"][0]["options"]["path"]
    for compose in COMPOSE_FILES:
        mounts = services(compose)["grafana"]["volumes"]
        sources = [m.split(":")[0] for m in mounts if m.split(":")[1] == path]
        assert len(sources) == 1 and sources[0].endswith("grafana/dashboards"), mounts


def envoy() -> dict[str, Any]:
    return load_yaml(ENVOY)


def listener_port() -> int:
    (listener,) = envoy()["static_resources"]["listeners"]
    return int(listener["address"]["socket_address"]["port_value"])


def envoy_admin_port() -> int:
    return int(envoy()["admin"]["address"]["socket_address"]["port_value"])


def test_envoy_balances_grpc_over_healthy_replicas_and_retries_unavailable() -> None:
    (cluster,) = envoy()["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS"  # every address the service name resolves to
    options = cluster["typed_extension_protocol_options"]
    (http,) = options.values()
    assert "http2_protocol_options" in http["explicit_http_config"]
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"]["service_name"] == SERVICE_NAME
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("whybert", DEFAULTS.port)
    (listener,) = envoy()["static_resources"]["listeners"]
    (manager,) = listener["filter_chains"][0]["filters"]
    streams, route = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert route["match"] == {"prefix": "/"} and route["route"]["cluster"] == cluster["name"]
    assert "unavailable" in route["route"]["retry_policy"]["retry_on"].split(",")
    # The streams, first: bound by the client's deadline alone (0s: no Envoy timeout, the
    # grpc-timeout header used as it is), every other call by Envoy's 300 s too.
    pattern = re.compile(streams["match"]["safe_regex"]["regex"])
    for method in ("PredictStream", "ExplainStream"):
        assert pattern.match(f"/{SERVICE_NAME}/{method}")
    for method in ("Predict", "Explain", "ExplainProgressive", "ListModels"):
        assert not pattern.match(f"/{SERVICE_NAME}/{method}")
    assert streams["route"]["cluster"] == cluster["name"] and streams["route"]["timeout"] == "0s"
    assert streams["route"]["max_stream_duration"]["grpc_timeout_header_max"] == "0s"


# ---- docs ------------------------------------------------------------------------------


def test_deployment_docs_describe_every_metric() -> None:
    docs = (ROOT / "docs" / "deployment.md").read_text()
    missing = sorted(name for name in metric_family_names() if f"`{name}`" not in docs)
    assert not missing, f"docs/deployment.md does not describe {missing}"
