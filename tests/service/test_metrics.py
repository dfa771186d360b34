"""Prometheus metrics: names, labels and buckets in the exposition, and two worker processes
aggregated through multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import (
    CANDIDATE_BUCKETS,
    LATENCY_BUCKETS_S,
    MULTIPROC_ENV,
    build_metrics,
    render_metrics,
)
from service.state_store import InProcessStore

ROOT = Path(__file__).resolve().parents[2]


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text as {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def no_multiproc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def test_request_latency_has_route_arm_labels_and_50us_to_1s_buckets(no_multiproc) -> None:
    registry = CollectorRegistry()
    m = build_metrics(registry)
    m.request_seconds.labels("/v1/rank", "drl").observe(0.0003)
    m.request_seconds.labels("/v1/rank", "drl").observe(0.02)
    body, content_type = render_metrics(registry)
    assert content_type.startswith("text/plain")
    got = samples(body)
    name = "ranker_request_duration_seconds"
    les = sorted(
        float(dict(labels)["le"])
        for (n, labels) in got
        if n == name + "_bucket" and dict(labels)["arm"] == "drl"
    )
    assert les == [*LATENCY_BUCKETS_S, float("inf")]

    def bucket(le: str) -> float:
        return got[(name + "_bucket", (("arm", "drl"), ("le", le), ("route", "/v1/rank")))]

    assert bucket("0.00025") == 0 and bucket("0.0005") == 1
    assert bucket("0.025") == 2
    assert got[(name + "_count", (("arm", "drl"), ("route", "/v1/rank")))] == 2


def test_every_metric_is_exported_with_its_labels(no_multiproc) -> None:
    registry = CollectorRegistry()
    m = build_metrics(registry)
    m.observe_stage("model", "drl", 0.001)
    m.explored_items.labels("drl").inc(3)
    m.candidates.observe(200)
    m.unknown_items.labels("drl").inc(2)
    m.errors.labels("bad_request").inc()
    m.record_log_drop("exposures", "queue_full", 40)
    got = samples(render_metrics(registry)[0])
    assert got[("ranker_stage_duration_seconds_count", (("arm", "drl"), ("stage", "model")))] == 1
    assert got[("ranker_explored_items_total", (("arm", "drl"),))] == 3
    assert got[("ranker_candidates_per_request_bucket", (("le", "200.0"),))] == 1
    assert got[("ranker_candidates_per_request_bucket", (("le", "150.0"),))] == 0
    assert (
        len([k for k in got if k[0] == "ranker_candidates_per_request_bucket"])
        == len(CANDIDATE_BUCKETS) + 1
    )
    assert got[("ranker_unknown_items_total", (("arm", "drl"),))] == 2
    assert got[("ranker_errors_total", (("reason", "bad_request"),))] == 1
    key = ("ranker_log_dropped_rows_total", (("log", "exposures"), ("reason", "queue_full")))
    assert got[key] == 40
    # Fixed label sets exist at 0 before their first event.
    assert got[("ranker_state_store_errors_total", (("reason", "timeout"),))] == 0
    assert got[("ranker_log_dropped_rows_total", (("log", "feedback"), ("reason", "closed")))] == 0


@pytest.mark.asyncio
async def test_state_store_events_reach_the_metrics(no_multiproc) -> None:
    registry = CollectorRegistry()
    m = build_metrics(registry)
    store = InProcessStore(1, 60.0, on_event=m.record_state_event)
    await store.get("a")
    await store.set("a", b"1")
    await store.get("a")
    await store.set("b", b"2")  # evicts "a"
    m.record_state_event("error", "timeout")
    got = samples(render_metrics(registry)[0])
    assert got[("ranker_state_store_lookups_total", (("result", "hit"),))] == 1
    assert got[("ranker_state_store_lookups_total", (("result", "miss"),))] == 1
    assert got[("ranker_state_store_writes_total", ())] == 2
    assert got[("ranker_state_store_evictions_total", ())] == 1
    assert got[("ranker_state_store_errors_total", (("reason", "timeout"),))] == 1


def test_unknown_stage_and_event_are_refused_by_name() -> None:
    m = build_metrics(CollectorRegistry())
    with pytest.raises(ValueError, match="'decode'"):
        m.observe_stage("decode", "drl", 0.1)
    with pytest.raises(ValueError, match="'flush'"):
        m.record_state_event("flush")


def test_metrics_of_two_registries_do_not_mix(no_multiproc) -> None:
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    build_metrics(r1).errors.labels("x").inc()
    build_metrics(r2)
    assert ("ranker_errors_total", (("reason", "x"),)) not in samples(render_metrics(r2)[0])


WORKER = """
import sys
from prometheus_client import CollectorRegistry
from service.metrics import build_metrics

n = int(sys.argv[1])
m = build_metrics(CollectorRegistry())
for _ in range(n):
    m.request_seconds.labels("/v1/rank", "drl").observe(0.002)
    m.errors.labels("bad_request").inc()
"""


def test_multiprocess_mode_aggregates_two_worker_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each worker is its own process with the variable set before prometheus_client loads.
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    for n in (3, 4):
        subprocess.run(
            [sys.executable, "-c", WORKER, str(n)], env=env, cwd=ROOT, check=True, timeout=60
        )
    assert len(list(tmp_path.glob("*.db"))) >= 2  # per-process value files

    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    got = samples(render_metrics(CollectorRegistry())[0])
    labels = (("arm", "drl"), ("route", "/v1/rank"))
    assert got[("ranker_request_duration_seconds_count", labels)] == 7
    bucket = ("ranker_request_duration_seconds_bucket", (*labels[:1], ("le", "0.0025"), labels[1]))
    assert got[bucket] == 7
    assert got[("ranker_errors_total", (("reason", "bad_request"),))] == 7
