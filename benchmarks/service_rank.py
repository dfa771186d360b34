"""In-process time per POST /v1/rank, split by stage, next to the list builder alone.

The app is built by ``create_app`` on a bundle (default ``models/default``) with the
embedded state store and a temporary log folder, and driven by ``httpx.AsyncClient`` over
``httpx.ASGITransport`` in one event loop (ASGI in process: no sockets, so what is timed is
the service and its framework, not the network). For each
arm (forced with the request's ``arm`` field; exploration at the arm's setting), one session
makes ``--requests`` requests of ``k`` from ``n`` real candidates of the bundle (the state is
warm after the first). Reported per arm, in milliseconds:

- ``http_call``: the client-side time of the whole call (routing, validation, the handler,
  JSON out, and httpx's own request building and parsing);
- ``handler``: the app's own ``ranker_request_duration_seconds`` (the route's handler);
- each stage the service records in ``ranker_stage_duration_seconds`` (state fetch,
  featurisation and graph time inside the list builder, the list build as a whole, state
  write, exposure logging, serialisation), read back from the app's registry;
- ``validation``: ``RankRequest.model_validate_json`` of the same body, alone;
- ``list_builder_alone``: :func:`runtime.lists.build_lists` on the same inputs, warm state,
  on the service's bundle (loaded for batch size 1), and ``list_builder_any_batch`` on the
  same bundle loaded for any batch size (the load before the service fixed it), the two
  called alternately in one loop so that their ratio is measured under the same load.

Usage: python benchmarks/service_rank.py [--bundle models/default] [--requests 300]
                                         [--out runs/bench/service_rank.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _mean_ms(registry, metric_name: str, label: str, arm: str) -> dict[str, float]:
    """Mean of a histogram's series for ``arm``, by ``label``, in ms."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name != metric_name:
            continue
        for s in metric.samples:
            if s.labels.get("arm") != arm:
                continue
            if s.name.endswith("_sum"):
                sums[s.labels[label]] = s.value
            elif s.name.endswith("_count"):
                counts[s.labels[label]] = s.value
    return {k: 1e3 * sums[k] / counts[k] for k in sums if counts.get(k)}


def _stage_means(registry, arm: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name != "ranker_stage_duration_seconds":
            continue
        for s in metric.samples:
            if s.labels.get("arm") != arm:
                continue
            if s.name.endswith("_sum"):
                sums[s.labels["stage"]] = s.value
            elif s.name.endswith("_count"):
                counts[s.labels["stage"]] = s.value
    return {k: 1e3 * sums[k] / counts[k] for k in sums if counts.get(k)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default="models/default")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--arms", nargs="+", default=["drl_student", "drl_teacher",
                                                  "wide_deep_weighted", "mmrf_watchtime"])  # fmt: skip
    ap.add_argument("--out", default="runs/bench/service_rank.json")
    args = ap.parse_args()
    out = asyncio.run(run(args))
    print(f"POST /v1/rank in process, {args.k} from {args.candidates}, warm session (ms)")
    print(f"{'arm':20s} {'call':>7s} {'handler':>8s} {'builder':>8s} {'any-B':>7s} "
          f"{'share':>6s} {'valid.':>7s}  stages (mean)")  # fmt: skip
    for arm, r in out["results"].items():
        st = ", ".join(f"{k} {v:.3f}" for k, v in r["stages_mean_ms"].items())
        print(f"{arm:20s} {r['http_call_median_ms']:7.3f} {r['handler_mean_ms']:8.3f} "
              f"{r['list_builder_alone_median_ms']:8.3f} "
              f"{r['list_builder_any_batch_median_ms']:7.3f} "
              f"{r['list_builder_share_of_call']:6.2f} "
              f"{r['validation_median_ms']:7.3f}  {st}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"saved {args.out}")


async def run(args: argparse.Namespace) -> dict:
    import httpx

    from runtime.bundle import load_bundle
    from runtime.lists import Exploration, SessionState, build_lists
    from service.app import create_app
    from service.schemas import RankRequest
    from service.settings import Settings

    load0 = os.getloadavg()
    logs = tempfile.mkdtemp(prefix="bench-logs-")
    settings = Settings(bundle_dir=Path(args.bundle), log_dir=Path(logs), explore_seed=0)
    app = create_app(settings)
    results: dict[str, dict] = {}
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
    ):
        svc = app.state.services
        bundle = svc.serving.bundle
        any_batch = load_bundle(args.bundle)
        items = bundle.tables.item_ids[: args.candidates].tolist()
        user = int(bundle.tables.user_ids[0])
        for arm in args.arms:
            body = {"user_id": user, "candidates": items, "k": args.k, "arm": arm,
                    "context": {"timestamp_ms": 1_700_000_000_000}}  # fmt: skip
            r = (await client.post("/v1/rank", json=body)).json()
            body["session_id"] = r["session_id"]
            for _ in range(20):  # warm the session's window and the code paths
                await client.post("/v1/rank", json=body)
            calls = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                resp = await client.post("/v1/rank", json=body)
                calls.append(time.perf_counter() - t0)
                assert resp.status_code == 200, resp.text
            stages = _stage_means(svc.registry, arm)  # means over all calls of the arm
            handler = _mean_ms(svc.registry, "ranker_request_duration_seconds", "route", arm)
            raw = json.dumps(body).encode()
            val = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                RankRequest.model_validate_json(raw)
                val.append(time.perf_counter() - t0)
            arm_cfg = svc.serving.experiment.arm(arm)
            ex = Exploration(arm_cfg.exploration_rate, arm_cfg.exploration_top_k)
            cands = np.asarray(items, dtype=np.int64)[None]
            ts = np.array([1_700_000_000_000])
            loads = {"batch_1": bundle, "any_batch": any_batch}
            states = {n: SessionState.new(b.model(arm), b.spec.recent_window)
                      for n, b in loads.items()}  # fmt: skip
            rngs = {n: np.random.default_rng(0) for n in loads}
            alone: dict[str, list[float]] = {n: [] for n in loads}
            for i in range(20 + args.requests):
                for n, b in loads.items():  # alternate: both under the same load
                    t0 = time.perf_counter()
                    res = build_lists(b, b.model(arm), [states[n]], np.array([user]), ts, cands,
                                      args.k, ex, rngs[n])  # fmt: skip
                    if i >= 20:
                        alone[n].append(time.perf_counter() - t0)
                    states[n] = res.states[0]
            ms = lambda xs: round(1e3 * statistics.median(xs), 3)  # noqa: E731
            results[arm] = {
                "http_call_median_ms": ms(calls),
                "http_call_p90_ms": round(1e3 * float(np.quantile(calls, 0.9)), 3),
                "handler_mean_ms": round(handler.get("/v1/rank", float("nan")), 3),
                "stages_mean_ms": {k: round(v, 3) for k, v in stages.items()},
                "validation_median_ms": ms(val),
                "list_builder_alone_median_ms": ms(alone["batch_1"]),
                "list_builder_any_batch_median_ms": ms(alone["any_batch"]),
                "list_builder_batch_1_over_any_batch": round(
                    statistics.median(alone["batch_1"]) / statistics.median(alone["any_batch"]), 3
                ),
                "list_builder_share_of_call": round(
                    statistics.median(alone["batch_1"]) / statistics.median(calls), 3
                ),  # fmt: skip
            }
    return {
        "bundle": args.bundle,
        "bundle_version": bundle.version,
        "requests": args.requests,
        "candidates": args.candidates,
        "k": args.k,
        "note": "stage and handler means include the 20 warm-up calls of each arm",
        "results": results,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_before": load0,
            "load_after": os.getloadavg(),
        },  # fmt: skip
    }


if __name__ == "__main__":
    main()
