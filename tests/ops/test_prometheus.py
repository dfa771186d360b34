"""A real Prometheus (Debian's binary) scrapes a running ``ranker serve`` (two workers, the
multiprocess metrics mode of the compose stack) every second while a thread sends a short
load: every query of the Grafana dashboard, read from its JSON, and every recording rule
returns data through Prometheus's HTTP API, and the alert rules load without errors."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from tests.ops.support import (
    RATE_INTERVAL,
    RULE_FILES,
    alert_names,
    dashboard_queries,
    missing,
    recording_rule_names,
    tool,
)
from tests.service.app_support import ARMS, DEFAULT_BUNDLE, ROOT, TS
from tests.service.conftest import free_port

PROMETHEUS = tool("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason=missing("prometheus")),
]

RATE_WINDOW = "1m"
"""Put for Grafana's $__rate_interval: spans the whole test, so every rate sees the load."""
N_RANK = 240
LOAD_S = 3.0
N_SESSIONS = 24
N_CANDIDATES = 50
K = 10


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, proc=None) -> None:
    """Poll ``check`` until true; fail after ``timeout_s`` s or when ``proc`` has exited."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: {proc.args[0]} exited {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


@dataclass
class Process:
    """A child process with its output in a file; stopped by SIGTERM (then SIGKILL)."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen = field(init=False)

    def __post_init__(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip

    def tail(self) -> str:
        return f"--- {self.name} output ---\n" + self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


@dataclass
class Stack:
    ranker_url: str
    prom_url: str
    ranker: Process
    prometheus: Process

    def query(self, promql: str) -> list[dict]:
        r = httpx.get(f"{self.prom_url}/api/v1/query", params={"query": promql}, timeout=5.0)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (promql, body)
        return body["data"]["result"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """``ranker serve`` (two workers) and a Prometheus scraping it each second with the repo's
    rules loaded, both on free ports, both ready; stopped afterwards."""
    ranker_port, prom_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RANKER_") and k != "PROMETHEUS_MULTIPROC_DIR"}  # fmt: skip
    (tmp_path / "metrics").mkdir()
    env.update({"RANKER_HOST": "127.0.0.1", "RANKER_PORT": str(ranker_port),
                "RANKER_WORKERS": "2", "RANKER_BUNDLE_DIR": str(DEFAULT_BUNDLE),
                "RANKER_LOG_DIR": str(tmp_path / "logs"), "RANKER_EXPLORE_SEED": "7",
                "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")})  # fmt: skip
    script = Path(sys.executable).with_name("ranker")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "ranker_cli"]
    config = tmp_path / "prometheus.yml"
    rules = "\n".join(f"  - {p}" for p in RULE_FILES)
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n{rules}\n"
        "scrape_configs:\n  - job_name: ranker\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{ranker_port}']\n"
    )
    ranker = Process("ranker", [*cmd, "serve"], env, tmp_path / "ranker.log")
    prometheus = Process(
        "prometheus",
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        env, tmp_path / "prometheus.log",
    )  # fmt: skip
    s = Stack(f"http://127.0.0.1:{ranker_port}", f"http://127.0.0.1:{prom_port}", ranker,
              prometheus)  # fmt: skip
    try:
        wait_for("prometheus /-/ready", lambda: answers(f"{s.prom_url}/-/ready"), 30,
                 prometheus.proc)  # fmt: skip
        wait_for("ranker /readyz", lambda: answers(f"{s.ranker_url}/readyz"), 90, ranker.proc)
        yield s
    except BaseException:
        print(ranker.tail(), prometheus.tail(), sep="\n")
        raise
    finally:
        prom_rc, ranker_rc = prometheus.stop(), ranker.stop()
    assert prom_rc == 0, prometheus.tail()
    # uvicorn re-raises the SIGTERM it handled once shut down: -15 is a clean exit too.
    assert ranker_rc in (0, -signal.SIGTERM), ranker.tail()


def send_load(url: str) -> Counter:
    """``N_RANK`` rank requests over at least ``LOAD_S`` s (paced; sessions of 10 requests
    spread over the three arms; real item ids of the default bundle), some refused requests
    and one feedback; counts by outcome."""
    items = pq.read_table(DEFAULT_BUNDLE / "items.parquet", columns=["item_id"])
    items = items.column("item_id").to_pylist()
    rng = random.Random(11)
    sent: Counter = Counter()
    with httpx.Client(base_url=url, timeout=10.0) as client:
        t0 = time.monotonic()
        for i in range(N_RANK):
            pause = t0 + i * LOAD_S / N_RANK - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the offered load, not waiting for a result
            s = i % N_SESSIONS
            body = {"user_id": 1000 + s, "session_id": 5000 + s, "k": K, "arm": ARMS[s % len(ARMS)],
                    "candidates": rng.sample(items, N_CANDIDATES),
                    "context": {"timestamp_ms": TS + i * 1000}}  # fmt: skip
            r = client.post("/v1/rank", json=body)
            assert r.status_code == 200, r.text
            sent["rank"] += 1
            if i == 0:
                click = {"item_id": r.json()["items"][0]["item_id"], "position": 0, "click": 1}
                fb = {"request_id": r.json()["request_id"], "session_id": 5000, "user_id": 1000}
                fb["events"] = [click]
                assert client.post("/v1/feedback", json=fb).status_code == 200
                sent["feedback"] += 1
            if i % 20 == 10:  # refused: a repeated candidate, k over the limit, no such arm
                bad = [dict(body, candidates=[7, 7]), dict(body, k=100_000), dict(body, arm="nope")]
                r = client.post("/v1/rank", json=bad[(i // 20) % 3])
                assert r.status_code == 422, r.text
                sent["refused"] += 1
    return sent


def finite(result: list[dict]) -> list[float]:
    return [float(x["value"][1]) for x in result if math.isfinite(float(x["value"][1]))]


def test_every_dashboard_query_returns_data_from_a_live_prometheus(stack: Stack):
    # One request per arm, and a scrape that holds them, before the load: rates need a sample
    # from before the increase (the load can finish within one scrape interval).
    items = pq.read_table(DEFAULT_BUNDLE / "items.parquet", columns=["item_id"])
    warm = items.column("item_id").to_pylist()[:N_CANDIDATES]
    with httpx.Client(base_url=stack.ranker_url, timeout=10.0) as client:
        for j, arm in enumerate(ARMS):
            body = {"user_id": 900 + j, "candidates": warm, "k": K, "arm": arm}
            assert client.post("/v1/rank", json=body).status_code == 200
    first = 'sum(ranker_request_duration_seconds_count{route="/v1/rank"})'
    wait_for("a scrape with the warm-up requests",
             lambda: finite(stack.query(first)) == [len(ARMS)], 20)  # fmt: skip
    sent: Counter = Counter()
    failed: list[BaseException] = []

    def load_thread() -> None:
        try:
            sent.update(send_load(stack.ranker_url))
        except BaseException as e:  # re-raised below, in the test's thread
            failed.append(e)

    load = threading.Thread(target=load_thread)
    load.start()
    load.join(timeout=60)
    if failed:
        raise failed[0]
    assert not load.is_alive() and sent["rank"] == N_RANK, f"load did not finish: {sent}"

    # Prometheus has scraped the state after the last request...
    total = 'sum(ranker_request_duration_seconds_count{route="/v1/rank"})'
    wait_for(f"a scrape with all {N_RANK} ranked requests",
             lambda: finite(stack.query(total)) == [N_RANK + len(ARMS)], 20)  # fmt: skip
    # ...and every dashboard query and recording rule has data (rules evaluate each second).
    queries = {f"panel {title!r} ({ref})": expr.replace(RATE_INTERVAL, RATE_WINDOW)
               for title, ref, expr in dashboard_queries()}  # fmt: skip
    queries |= {f"recording rule {name}": name for name in recording_rule_names()}
    assert len(queries) >= 15, queries
    results: dict[str, list[dict]] = {}

    def all_have_data() -> bool:
        results.update({what: stack.query(q) for what, q in queries.items()})
        return all(finite(r) for r in results.values())

    try:
        wait_for("every dashboard query and recording rule to return data", all_have_data, 20)
    except AssertionError:
        empty = {what: queries[what] for what, r in results.items() if not finite(r)}
        raise AssertionError(f"no data from {len(empty)} queries: {empty}") from None

    arms = {x["metric"].get("arm") for x in results["panel '/v1/rank latency p99 by arm' (A)"]}
    assert arms == set(ARMS), arms
    models = results["panel 'Model version per arm' (A)"]
    assert {x["metric"]["arm"] for x in models} == set(ARMS), models
    reasons = {x["metric"]["reason"] for x in results["panel 'Errors by reason' (A)"]}
    assert "validation" in reasons, reasons  # the repeated candidate; others name a field
    assert finite(results["panel 'State store hit ratio' (A)"])[0] > 0  # sessions came back
    per_request = results["panel 'Exploration: explored items per request by arm' (A)"]
    explored = {x["metric"]["arm"]: float(x["value"][1]) for x in per_request}
    assert explored["drl_student"] > 0 and explored["drl_teacher"] == 0, explored

    # The alert rules loaded and evaluate without errors; the target is up.
    groups = httpx.get(f"{stack.prom_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules if r["type"] == "alerting"} == set(alert_names())
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    assert finite(stack.query('up{job="ranker"}')) == [1.0]

    # The scraped multiprocess exposition (two workers summed) passes promtool's lint too.
    promtool = tool("promtool")
    if promtool is not None:
        text = httpx.get(f"{stack.ranker_url}/metrics", timeout=5).text
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
