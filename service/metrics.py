"""The service's Prometheus metrics, built on a registry the caller owns, and ``/metrics``.

:func:`build_metrics` creates every metric on the given ``CollectorRegistry`` (tests pass a
fresh one; nothing is registered globally). Labels are low-cardinality by construction:
``route`` is the route template ("/v1/rank", never a raw path), ``arm`` an experiment arm,
``stage`` a fixed stage name, ``reason`` one of a module's fixed reason tuples.

Several uvicorn workers: prometheus_client's multiprocess mode. Start the server with
``PROMETHEUS_MULTIPROC_DIR`` pointing at an empty directory (set in the shell before Python
starts: prometheus_client reads it at import and then keeps each process's values in files
there). :func:`render_metrics` then aggregates every worker's files through a
``MultiProcessCollector`` on a fresh registry, so any worker answering ``/metrics`` reports
the whole server. Counters and histograms aggregate by sum; the one gauge,
``ranker_model_info``, by max.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from service.exposure import DROP_REASONS, LOG_NAMES
from service.state_store import ERROR_REASONS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS_S = (
    50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,
)  # fmt: skip
"""Request and stage latency buckets, seconds: 50 µs to 1 s."""

CANDIDATE_BUCKETS = (1, 10, 25, 50, 100, 150, 200, 300, 500, 1000, 2000)
"""Candidates per request (about 200 expected)."""

STAGES = ("state_fetch", "featurise", "model", "list_build", "state_write", "serialise", "log")
"""Stage names of a request; ``stage_seconds`` accepts no others."""


@dataclass(frozen=True)
class Metrics:
    """Every metric of the service (names as exported, ``_total`` added to counters)."""

    request_seconds: Histogram
    """``ranker_request_duration_seconds{route, arm}``: whole request, seconds."""
    stage_seconds: Histogram
    """``ranker_stage_duration_seconds{stage, arm}``: one stage of a request, seconds."""
    state_lookups: Counter
    """``ranker_state_store_lookups_total{result}``: state reads, result "hit" or "miss"."""
    state_writes: Counter
    """``ranker_state_store_writes_total``: states written."""
    state_evictions: Counter
    """``ranker_state_store_evictions_total``: states evicted by a full in-process store."""
    state_errors: Counter
    """``ranker_state_store_errors_total{reason}``: failed or skipped store calls."""
    explored_items: Counter
    """``ranker_explored_items_total{arm}``: items placed by exploration."""
    candidates: Histogram
    """``ranker_candidates_per_request``: candidate items in a request."""
    unknown_items: Counter
    """``ranker_unknown_items_total{arm}``: candidates the serving bundle does not know."""
    errors: Counter
    """``ranker_errors_total{reason}``: requests that failed, by reason."""
    log_dropped_rows: Counter
    """``ranker_log_dropped_rows_total{log, reason}``: log rows not written."""
    model_info: Gauge
    """``ranker_model_info{arm, model_version, bundle_version}``: 1 for what each arm serves
    now, 0 for what it served before a reload (multiprocess mode: the max over workers)."""

    def serving(self, arms: dict[str, str], bundle_version: str) -> None:
        """Record that ``arms`` (arm -> model version) now serve from ``bundle_version``."""
        for sample in self.model_info.collect()[0].samples:
            if sample.value:
                self.model_info.labels(**sample.labels).set(0)
        for arm, version in arms.items():
            self.model_info.labels(arm, version, bundle_version).set(1)

    def record_state_event(self, event: str, reason: str | None = None) -> None:
        """The state store's ``on_event`` callback: count one store event.

        ``event`` is "hit", "miss", "set", "evict" or "error" (with a ``reason`` from
        ``service.state_store.ERROR_REASONS``); raises ValueError naming an unknown event.
        """
        if event in ("hit", "miss"):
            self.state_lookups.labels(event).inc()
        elif event == "set":
            self.state_writes.inc()
        elif event == "evict":
            self.state_evictions.inc()
        elif event == "error":
            self.state_errors.labels(reason).inc()
        else:
            raise ValueError(f"unknown state store event {event!r}")

    def record_log_drop(self, log: str, reason: str, rows: int) -> None:
        """The log sink's ``on_drop`` callback: ``rows`` rows of ``log`` lost for ``reason``."""
        self.log_dropped_rows.labels(log, reason).inc(rows)

    def observe_stage(self, stage: str, arm: str, seconds: float) -> None:
        """Record one stage's duration; raises ValueError naming an unknown stage."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} (stages {list(STAGES)})")
        self.stage_seconds.labels(stage, arm).observe(seconds)


def build_metrics(registry: CollectorRegistry) -> Metrics:
    """Create the service's metrics on ``registry`` (a fresh one per app or test).

    Raises ValueError (from prometheus_client) if they already exist on that registry.
    Series with a fixed label set (store results and reasons, drop reasons) are created at 0
    so dashboards see them before the first event.
    """
    m = Metrics(
        request_seconds=Histogram(
            "ranker_request_duration_seconds",
            "Request latency, seconds, by route template and arm.",
            ["route", "arm"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        ),
        stage_seconds=Histogram(
            "ranker_stage_duration_seconds",
            "Latency of one stage of a request, seconds, by stage and arm.",
            ["stage", "arm"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        ),
        state_lookups=Counter(
            "ranker_state_store_lookups",
            "Session-state reads by result (hit, miss).",
            ["result"],
            registry=registry,
        ),
        state_writes=Counter(
            "ranker_state_store_writes", "Session states written.", registry=registry
        ),
        state_evictions=Counter(
            "ranker_state_store_evictions",
            "Session states evicted from a full in-process store.",
            registry=registry,
        ),
        state_errors=Counter(
            "ranker_state_store_errors",
            "Session-state store calls that failed or were skipped, by reason.",
            ["reason"],
            registry=registry,
        ),
        explored_items=Counter(
            "ranker_explored_items",
            "Items placed by exploration, by arm.",
            ["arm"],
            registry=registry,
        ),
        candidates=Histogram(
            "ranker_candidates_per_request",
            "Candidate items per ranking request.",
            buckets=CANDIDATE_BUCKETS,
            registry=registry,
        ),
        unknown_items=Counter(
            "ranker_unknown_items",
            "Candidate items unknown to the serving bundle, by arm.",
            ["arm"],
            registry=registry,
        ),
        errors=Counter(
            "ranker_errors", "Failed requests by reason.", ["reason"], registry=registry
        ),
        log_dropped_rows=Counter(
            "ranker_log_dropped_rows",
            "Exposure and feedback log rows dropped, by log and reason.",
            ["log", "reason"],
            registry=registry,
        ),
        model_info=Gauge(
            "ranker_model_info",
            "1 for the model version each arm serves now (0: served before a reload).",
            ["arm", "model_version", "bundle_version"],
            registry=registry,
            multiprocess_mode="max",
        ),
    )
    for result in ("hit", "miss"):
        m.state_lookups.labels(result)
    for reason in ERROR_REASONS:
        m.state_errors.labels(reason)
    for log in LOG_NAMES:
        for reason in DROP_REASONS:
            m.log_dropped_rows.labels(log, reason)
    return m


def render_metrics(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The ``/metrics`` body and its content type.

    With ``PROMETHEUS_MULTIPROC_DIR`` set, every process's values are aggregated from that
    directory through a ``MultiProcessCollector`` on a fresh registry (``registry`` is not
    read: its metrics are in the files too); otherwise ``registry`` is rendered.
    """
    if os.environ.get(MULTIPROC_ENV):
        collected = CollectorRegistry()
        MultiProcessCollector(collected)
        return generate_latest(collected), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST
