"""Static checks of the deployment and monitoring files, without a Docker engine: the compose
file validates (docker-compose config), the Dockerfile lints clean (hadolint), the Prometheus
config, rules and rule unit tests pass promtool, the service's real /metrics passes
``promtool check metrics``, and the dashboard and rules name only metrics the service has.
A test whose tool is missing skips and says how to install it (.ci/run installs them all)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.metrics import build_metrics
from tests.ops.support import (
    ALERT_RULES,
    DASHBOARD,
    DATASOURCE,
    GRAFANA_DIR,
    PROM_CONFIG,
    RECORDING_RULES,
    ROOT,
    RULE_FILES,
    RULE_TESTS,
    alert_names,
    dashboard,
    dashboard_queries,
    missing,
    panels,
    recording_rule_names,
    tool,
)
from tests.service.app_support import TS, TestClient, make_settings

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, **kw)


def need(name: str) -> str:
    path = tool(name)
    if path is None:
        pytest.skip(missing(name))
    return path


# --- docker-compose.yml ------------------------------------------------------------------------


def test_compose_file_validates():
    exe = need("docker-compose")
    r = run([exe, "-f", str(COMPOSE), "config", "-q"])
    assert r.returncode == 0, r.stderr
    r = run([exe, "-f", str(COMPOSE), "config", "--services"])
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == {"ranker", "redis", "prometheus", "grafana"}


def test_compose_mounts_name_files_that_exist():
    text = COMPOSE.read_text()
    mounts = re.findall(r"^\s*- (\./[^:\s]+):", text, flags=re.M)
    assert mounts, "no bind mounts found in docker-compose.yml"
    for host in mounts:
        assert (ROOT / host).exists(), f"docker-compose.yml mounts {host}, which does not exist"
    # Grafana's home dashboard is a file of the mounted dashboards folder.
    home = re.search(r"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH:\s*(\S+)", text)
    assert home and home.group(1) == f"/var/lib/grafana/dashboards/{DASHBOARD.name}"
    for key in (
        "RANKER_WORKERS",
        "RANKER_REDIS_URL: redis://redis:6379",
        "PROMETHEUS_MULTIPROC_DIR",
    ):
        assert key in text, f"the ranker service lacks {key}"


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_lints_clean():
    exe = need("hadolint")
    r = run([exe, "--no-color", str(DOCKERFILE)])
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_dockerfile_is_the_serving_image():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, flags=re.M), "not a slim Python 3.11 base"
    installs = re.findall(r"pip install[^\n]*", text)
    assert installs and all("[serve]" in i for i in installs), installs
    assert "torch" not in " ".join(installs) and "train" not in " ".join(installs)
    assert "COPY training" not in text, "the serving image must not carry training/"
    assert re.search(r"^COPY models/default/? ", text, flags=re.M), "default bundle not copied"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"runs as {users}"
    health = re.search(r"^HEALTHCHECK .*?CMD (.*)$", text, flags=re.M | re.S)
    assert health and "/healthz" in health.group(1) and "urllib" in health.group(1)
    assert "RANKER_HOST=0.0.0.0" in text
    cmd = re.findall(r"^CMD (.*)$", text, flags=re.M)
    assert cmd and json.loads(cmd[-1]) == ["ranker", "serve"], cmd


def test_dockerignore_keeps_data_and_environments_out():
    lines = {x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines()}
    for needed in ("data/", "runs/", "results/", ".venv*", ".git"):
        assert needed in lines, f".dockerignore lacks {needed}"


CONTEXT_FILES = """
import json, sys
from docker.utils.build import exclude_paths
root, ignore = sys.argv[1], sys.argv[2]
patterns = [x.strip() for x in open(ignore) if x.strip() and not x.startswith("#")]
print(json.dumps(sorted(exclude_paths(root, patterns))))
"""


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_large():
    """The files `docker build .` would send, by docker-py's own .dockerignore matching (the
    library Debian's docker-compose runs on), against the Dockerfile's COPY sources."""
    exe = need("docker-compose")
    python = Path(exe).read_text(errors="replace").splitlines()[0].removeprefix("#!").split()
    r = run([*python, "-c", CONTEXT_FILES, str(ROOT), str(ROOT / ".dockerignore")])
    if r.returncode != 0:
        pytest.skip(f"docker-py (docker-compose's library) not importable: {r.stderr[-300:]}")
    context = set(json.loads(r.stdout))
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources, "no COPY from the build context"
    for src in sources:
        src = src.rstrip("/")
        assert src in context, f"COPY {src}: not in the build context (.dockerignore)"
        if (ROOT / src).is_dir():
            assert any(f.startswith(src + "/") for f in context), f"COPY {src}/: empty"
    for f in context:
        top = f.split("/")[0]
        assert top not in ("data", "runs", "results", "logs", "tests", "training", ".git"), f
        assert not top.startswith(".venv") and "__pycache__" not in f, f
    assert "models/default/manifest.json" in context


# --- Prometheus --------------------------------------------------------------------------------


def test_prometheus_config_passes_promtool():
    r = run([need("promtool"), "check", "config", str(PROM_CONFIG)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(RULE_FILES)} rule files found" in r.stdout, r.stdout


def test_prometheus_rules_pass_promtool():
    assert RECORDING_RULES in RULE_FILES and ALERT_RULES in RULE_FILES
    r = run([need("promtool"), "check", "rules", *map(str, RULE_FILES)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert alert_names() and recording_rule_names()


def test_alert_rules_fire_as_their_unit_tests_say():
    assert RULE_TESTS, "no rule unit tests under ops/prometheus/tests"
    r = run([need("promtool"), "test", "rules", *map(str, RULE_TESTS)])
    assert r.returncode == 0, r.stdout + r.stderr
    tested = " ".join(p.read_text() for p in RULE_TESTS)
    for name in alert_names():
        assert f"alertname: {name}" in tested, f"alert {name} has no unit test"


def test_service_metrics_pass_promtool_check_metrics(tmp_path):
    exe = need("promtool")
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        session = None
        for _ in range(6):  # one session: a cold request, then warm ones (state-store hits)
            body = {"user_id": 17, "candidates": [117, 153, 145, 20, 31, 88], "k": 3,
                    "context": {"timestamp_ms": TS}}  # fmt: skip
            if session is not None:
                body["session_id"] = session
            r = client.post("/v1/rank", json=body)
            assert r.status_code == 200, r.text
            session = r.json()["session_id"]
        ranked = r.json()
        bad = client.post("/v1/rank", json={"user_id": 1, "candidates": [5, 5], "k": 1})
        assert bad.status_code == 422, bad.text  # an error series for the check
        click = {"item_id": ranked["items"][0]["item_id"], "position": 0, "click": 1}
        fb = {"request_id": ranked["request_id"], "session_id": session, "user_id": 17}
        fb["events"] = [click]
        assert client.post("/v1/feedback", json=fb).status_code == 200
        text = client.get("/metrics").text
    for name in ("ranker_request_duration_seconds_bucket", "ranker_errors_total",
                 "ranker_state_store_lookups_total", "ranker_model_info"):  # fmt: skip
        assert f"\n{name}{{" in text, f"/metrics lacks {name}"
    r = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


# --- Grafana -----------------------------------------------------------------------------------


def service_metric_names() -> set[str]:
    """Every sample name the service can export (counters with _total, histogram series)."""
    registry = CollectorRegistry()
    build_metrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {f.name + s for f in registry.collect() for s in suffixes[f.type]}


METRIC = re.compile(r"(?<![:\w])ranker_[a-z0-9_]+(?![:\w])")


def test_dashboard_and_rules_use_only_metrics_the_service_exports():
    known = service_metric_names()
    for title, ref, expr in dashboard_queries():
        for name in METRIC.findall(expr):
            assert name in known, f"panel {title!r} ({ref}) queries unknown metric {name}"
    for path in RULE_FILES:
        code = "\n".join(x.split("#")[0] for x in path.read_text().splitlines())
        for name in METRIC.findall(code):
            assert name in known, f"{path.name} uses unknown metric {name}"


def test_dashboard_covers_the_service_and_uses_the_provisioned_datasource():
    dash = dashboard()
    uid = re.search(r"^\s*uid:\s*(\S+)", DATASOURCE.read_text(), flags=re.M).group(1)
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    for p in panels(dash):
        assert p["datasource"]["uid"] == uid, p["title"]
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t.get("expr", "").strip(), f"panel {p['title']!r} has an empty query"
            assert t.get("datasource", {}).get("uid", uid) == uid, p["title"]
    exprs = " ".join(e for _, _, e in dashboard_queries(dash))
    for q in (0.5, 0.95, 0.99):
        assert (
            f"histogram_quantile({q}, sum by (arm, le) (rate(ranker_request_duration_seconds_bucket"
            in exprs
        )
    for name in ("ranker_errors_total", "ranker_state_store_lookups_total",
                 "ranker_state_store_errors_total", "ranker_explored_items_total",
                 "ranker_candidates_per_request", "ranker_model_info == 1"):  # fmt: skip
        assert name in exprs, f"no panel queries {name}"
    provider = (GRAFANA_DIR / "provisioning" / "dashboards" / "ranker.yml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider
