"""Fault drills under steady open-loop load, each with a verdict.

Every drill starts its own ``ranker serve --workers N`` on a free loopback port (logs in a
temporary folder), drives ``/v1/rank`` sessions with feedback at a fixed offered rate below
saturation (:func:`loadtest.openloop.run_level`), does its fault at fixed times, then stops
the server with SIGTERM and counts the log: every 200 rank response must have its candidates'
exposure rows in the exposure log and every 200 feedback its event in the feedback log.

- ``redis``: session state in a private redis-server, SIGKILLed under load and started again
  on the same port; failed requests, degraded responses, and the time from Redis answering
  again to the first non-degraded response (and to the last degraded one).
- ``reload``: POST /admin/reload with a good bundle (a copy of the default one under another
  bundle name), then a bad one (a copy with weights.bin tampered): the answers (goal: 200
  then 409), the bundle version served before and after each, failed requests (goal: 0).
- ``sigterm``: SIGTERM to the server while a burst of requests is in flight: requests sent
  before the signal must all succeed (in-flight ones finish), and the exposure log must hold
  every row (nothing lost at shutdown). Requests sent after the signal are refused by a
  closed port, as expected, and reported apart.
- ``full-store``: the in-process state store capped at ``--max-sessions`` (50) under many
  more concurrent sessions: requests succeed, evictions counted in /metrics
  (``ranker_state_store_evictions_total``).

Verdict: pass when failed requests and lost log events are both 0 and each drill's own checks
hold (the fault happened and the service came back as it should).

    python -m loadtest.drills all --out results/load/drills.json
    python -m loadtest.drills redis --rate 100 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtest.openloop import (
    FEEDBACK,
    RANK,
    Action,
    Level,
    RawClient,
    Workload,
    check_loopback,
    git_head,
    run_level,
    send_schedule,
    summarise,
)
from loadtest.procs import DEFAULT_BUNDLE, ROOT, RankerServer, RedisServer, metric_value

DRILLS = ("redis", "reload", "sigterm", "full-store")
TOKEN = "drill-admin-token"


def verdict(failed: int, lost: int, checks: dict[str, bool] | None = None) -> dict[str, Any]:
    """``pass`` when no request failed, no log event was lost and every check holds."""
    checks = dict(checks or {})
    failing = sorted(k for k, v in checks.items() if not v)
    ok = failed == 0 and lost == 0 and not failing
    why = []
    if failed:
        why.append(f"{failed} failed requests")
    if lost:
        why.append(f"{lost} lost log events")
    why += [f"check {k} failed" for k in failing]
    return {
        "pass": ok,
        "failed_requests": int(failed),
        "lost_log_events": int(lost),
        "checks": checks,
        "why": "; ".join(why) or "0 failed, 0 lost, every check holds",
    }


@dataclass
class DrillConfig:
    rate: float = 100.0
    duration_s: float = 12.0
    workers: int = 2
    think_s: float = 2.0
    feedback: float = 0.05
    timeout_s: float = 5.0
    connections: int = 256
    candidates: int = 200
    max_sessions: int = 50
    burst: int = 40
    seed: int = 0
    bundle: Path = DEFAULT_BUNDLE


def failed_mask(lv: Level) -> np.ndarray:
    """Requests that were attempted (not skipped) and got no 200: HTTP errors, transport
    errors and timeouts."""
    return (lv.status != -1) & (lv.status != 200)


def _request_ids(folder: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        return np.zeros(0, np.int64)
    return np.concatenate(
        [pq.read_table(p, columns=["request_id"])["request_id"].to_numpy() for p in parts]
    )


def log_accounting(lv: Level, log_dir: Path) -> dict[str, Any]:
    """Rows the server must have logged for what it answered 200, against what its log
    folder holds after shutdown: exposures (a rank response's candidates, each a row) by
    request id, feedback events by the request id they are about."""
    ok = lv.status == 200
    rank = ok & (lv.kind == RANK)
    want = Counter(dict(zip(lv.request_id[rank].tolist(), lv.n_cands[rank].tolist(), strict=True)))
    ids, counts = np.unique(_request_ids(log_dir / "exposures"), return_counts=True)
    have = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    lost_exp = sum(max(0, n - have.get(r, 0)) for r, n in want.items())
    unacked = sum(n for r, n in have.items() if r not in want)
    fb_want = Counter(lv.request_id[ok & (lv.kind == FEEDBACK)].tolist())
    fids, fcounts = np.unique(_request_ids(log_dir / "feedback"), return_counts=True)
    fb_have = dict(zip(fids.tolist(), fcounts.tolist(), strict=True))
    lost_fb = sum(max(0, n - fb_have.get(r, 0)) for r, n in fb_want.items())
    return {
        "rank_ok": int(rank.sum()),
        "expected_exposure_rows": int(sum(want.values())),
        "exposure_rows": int(counts.sum()),
        "lost_exposure_rows": int(lost_exp),
        "exposure_rows_of_unacknowledged_requests": int(unacked),
        "feedback_ok": int(sum(fb_want.values())),
        "feedback_rows": int(fcounts.sum()),
        "lost_feedback_rows": int(lost_fb),
        "lost_log_events": int(lost_exp + lost_fb),
    }


def _load(
    server: RankerServer,
    cfg: DrillConfig,
    actions: Sequence[Action],
    offsets: np.ndarray | None = None,
    think_s: float | None = None,
) -> Level:
    workload = Workload.from_bundle(cfg.bundle, cfg.candidates, seed=cfg.seed)
    host, port = check_loopback(server.url)

    async def go() -> Level:
        client = RawClient(host, port, cfg.connections)
        try:
            return await run_level(
                client,
                "/v1/rank",
                cfg.rate,
                cfg.duration_s,
                workload,
                think_s=think_s or cfg.think_s,
                feedback=cfg.feedback,
                timeout_s=cfg.timeout_s,
                seed=cfg.seed,
                actions=actions,
                server_cpu=server.cpu_by_pid,
                offsets=offsets,
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def _level_summary(lv: Level) -> dict[str, Any]:
    s = summarise(lv)
    keep = (
        "offered_rate",
        "duration_s",
        "requests",
        "ok",
        "errors",
        "errors_by_kind",
        "achieved_rate",
        "latency_ms",
        "dispatch_lag_ms",
        "states",
        "session_fallbacks",
        "skipped",
        "loadavg_start",
        "loadavg_end",
        "server_cpu_cores",
        "generator_cpu_cores",
        "machine_busy_cores",
        "server_cpu_cores_by_process",
    )
    return {k: s[k] for k in keep if k in s}


def _action_log(actions: Sequence[Action]) -> list[dict[str, Any]]:
    return [
        {
            "name": a.name,
            "at_s": a.at_s,
            "started_s": round(a.started_s, 4),
            "ended_s": round(a.ended_s, 4),
            "result": a.result,
        }
        for a in actions
    ]


def _server(tmp: Path, cfg: DrillConfig, env: dict[str, str] | None = None) -> RankerServer:
    return RankerServer(tmp / "logs", workers=cfg.workers, env=env, bundle=cfg.bundle)


def _finish(
    server: RankerServer, lv: Level, result: dict[str, Any], checks: dict[str, bool], failed: int
) -> dict[str, Any]:
    """Stop the server (SIGTERM), account for the log, add the verdict."""
    if server.proc is not None and server.proc.poll() is None:
        server.stop()
    result["server_exit"] = {
        "returncode": server.proc.returncode if server.proc else None,
        "clean": server.clean_exit(),
    }
    checks["clean_shutdown"] = result["server_exit"]["clean"]
    result["log"] = log_accounting(lv, server.log_dir)
    result["load"] = _level_summary(lv)
    result["verdict"] = verdict(failed, result["log"]["lost_log_events"], checks)
    return result


# --- the drills ---------------------------------------------------------------------------------


def drill_redis(
    cfg: DrillConfig, tmp: Path, kill_at: float = 3.0, back_at: float = 7.0
) -> dict[str, Any]:
    """Redis SIGKILLed at ``kill_at`` s, started again (same port) at ``back_at`` s."""
    from service.settings import Settings

    breaker_s = Settings.model_fields["redis_breaker_ms"].default / 1000
    redis = RedisServer(tmp / "redis")
    redis.start()
    server = _server(tmp, cfg, {"RANKER_REDIS_URL": redis.url})
    try:
        server.start()

        def restart() -> dict[str, Any]:
            redis.start()  # returns once it answers PING
            return {"port": redis.port}

        actions = [
            Action(kill_at, "kill redis (SIGKILL)", redis.kill),
            Action(back_at, "restart redis", restart),
        ]
        lv = _load(server, cfg, actions)
        metrics = server.metrics()
        killed, back = actions[0].started_s, actions[1].ended_s
        ok = (lv.status == 200) & (lv.kind == RANK)
        state = np.array(lv.state)
        degraded = ok & (state == "degraded")
        after = ok & (lv.sent >= back)
        good_after = after & (state != "degraded")
        first_good = float(np.min(lv.done[good_after])) if good_after.any() else math.nan
        degraded_after = degraded & (lv.sent >= back)
        last_degraded = float(np.max(lv.done[degraded_after])) if degraded_after.any() else back
        failed = int(failed_mask(lv).sum())
        bins = np.arange(0.0, cfg.duration_s + 0.5, 0.5)
        timeline = [
            {
                "from_s": float(a),
                "ok": int((ok & (lv.sent >= a) & (lv.sent < a + 0.5)).sum()),
                "degraded": int((degraded & (lv.sent >= a) & (lv.sent < a + 0.5)).sum()),
            }
            for a in bins[:-1]
        ]
        result = {
            "drill": "redis",
            "workers": cfg.workers,
            "redis_killed_at_s": round(killed, 3),
            "redis_back_at_s": round(back, 3),
            "failed_requests": failed,
            "degraded_responses": int(degraded.sum()),
            "degraded_before_kill": int((degraded & (lv.done < killed)).sum()),
            "recovery_s": round(first_good - back, 4) if math.isfinite(first_good) else None,
            "recovery_s_meaning": "Redis answering PING again -> the first non-degraded response "
            "to a request sent after that",
            "last_degraded_after_back_s": round(last_degraded - back, 4),
            "breaker_s": breaker_s,
            "degraded_timeline": timeline,
            "state_store_errors": {
                r: metric_value(metrics, "ranker_state_store_errors_total", {"reason": r})
                for r in ("timeout", "connection", "circuit_open", "redis_error")
            },
            "actions": _action_log(actions),
        }
        checks = {
            "outage_seen": bool(degraded.any()),
            "no_degraded_before_the_kill": not bool((degraded & (lv.done < killed)).any()),
            "recovered": math.isfinite(first_good),
            # The store's breaker skips Redis for breaker_s after a failure; once Redis answers
            # again, one window (plus 0.5 s of slack) should end the degraded responses.
            "full_recovery_within_one_breaker_window": last_degraded - back <= breaker_s + 0.5,
        }
        return _finish(server, lv, result, checks, failed)
    finally:
        server.stop()
        redis.kill()


def make_bundles(tmp: Path, source: Path) -> tuple[Path, Path, str]:
    """A good copy of ``source`` under another bundle name (same files, same hashes) and a bad
    one whose weights.bin has bytes flipped (its sha256 no longer matches the manifest)."""
    good, bad = tmp / "bundle-good", tmp / "bundle-bad"
    for d in (good, bad):
        shutil.copytree(source, d)
    manifest = json.loads((good / "manifest.json").read_text())
    name, _, digest = manifest["bundle_version"].rpartition("-")
    manifest["bundle_version"] = f"drill-{digest}"
    (good / "manifest.json").write_text(json.dumps(manifest, indent=1))
    weights = bad / "weights.bin"
    data = bytearray(weights.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    weights.write_bytes(bytes(data))
    return good, bad, manifest["bundle_version"]


def drill_reload(
    cfg: DrillConfig, tmp: Path, good_at: float = 3.0, bad_at: float = 7.0
) -> dict[str, Any]:
    """POST /admin/reload with a good bundle at ``good_at`` s, a bad one at ``bad_at`` s."""
    good, bad, new_version = make_bundles(tmp, cfg.bundle)
    server = _server(tmp, cfg, {"RANKER_ADMIN_TOKEN": TOKEN})
    try:
        server.start()
        old_version = httpx.get(f"{server.url}/readyz", timeout=5).json()["bundle_version"]

        def reload(folder: Path) -> dict[str, Any]:
            r = httpx.post(
                f"{server.url}/admin/reload",
                json={"bundle_dir": str(folder)},
                headers={"authorization": f"Bearer {TOKEN}"},
                timeout=60,
            )
            return {"status": r.status_code, "body": r.json()}

        actions = [
            Action(good_at, "reload good bundle", lambda: reload(good)),
            Action(bad_at, "reload bad bundle", lambda: reload(bad)),
        ]
        lv = _load(server, cfg, actions)
        ok = (lv.status == 200) & (lv.kind == RANK)
        bundle = np.array(lv.bundle)
        t_good, t_bad = actions[0].ended_s, actions[1].ended_s

        def served(mask: np.ndarray) -> dict[str, int]:
            return dict(Counter(bundle[mask].tolist()))

        phases = {
            "before_good_reload": served(ok & (lv.done < actions[0].started_s)),
            "after_good_reload": served(ok & (lv.sent > t_good) & (lv.done < actions[1].started_s)),
            "after_bad_reload": served(ok & (lv.sent > t_bad)),
        }
        after_good = ok & (lv.sent > t_good)
        first_new = (
            float(np.min(lv.done[ok & (bundle == new_version)]))
            if (ok & (bundle == new_version)).any()
            else math.nan
        )
        answers = [a.result.get("status") if isinstance(a.result, dict) else None for a in actions]
        good_body = actions[0].result.get("body", {}) if isinstance(actions[0].result, dict) else {}
        workers_applied = good_body.get("workers", {}).get("applied")
        failed = int(failed_mask(lv).sum())
        result = {
            "drill": "reload",
            "workers": cfg.workers,
            "bundle_before": old_version,
            "bundle_good": new_version,
            "reload_answers": answers,
            "good_reload_workers": good_body.get("workers"),
            "failed_requests": failed,
            "served_by_phase": phases,
            "recovery_s": round(first_new - t_good, 4) if math.isfinite(first_new) else None,
            "recovery_s_meaning": "the good reload's 200 answer -> the first response served "
            "from the new bundle",
            "actions": _action_log(actions),
        }
        checks = {
            "answers_200_then_409": answers == [200, 409],
            "good_reload_applied_by_every_worker": workers_applied == cfg.workers,
            "every_response_after_the_good_reload_from_it": bool(
                after_good.any() and (bundle[after_good] == new_version).all()
            ),
            "bad_bundle_kept_the_good_one_serving": set(phases["after_bad_reload"])
            <= {new_version},
        }
        return _finish(server, lv, result, checks, failed)
    finally:
        server.stop()


def drill_sigterm(cfg: DrillConfig, tmp: Path, at: float = 6.0) -> dict[str, Any]:
    """SIGTERM at ``at`` s, 5 ms after a burst of ``cfg.burst`` requests scheduled together
    (on top of the steady rate), so requests are in flight when the signal lands."""
    server = _server(tmp, cfg)
    try:
        server.start()
        steady = send_schedule(cfg.rate, round(cfg.rate * min(cfg.duration_s, at + 1.0)))
        offsets = np.concatenate([steady, np.full(cfg.burst, at - 0.005)])
        sent_signal: dict[str, float] = {}

        def term() -> dict[str, Any]:
            sent_signal["t"] = time.monotonic()
            server.signal(signal.SIGTERM)
            rc = server.wait(60)
            return {"returncode": rc, "exit_s": round(time.monotonic() - sent_signal["t"], 3)}

        actions = [Action(at, "SIGTERM", term)]
        lv = _load(server, cfg, actions, offsets=offsets)
        t_sig = actions[0].started_s
        attempted = lv.status != -1
        before = attempted & (lv.dispatched < t_sig)
        after = attempted & ~before
        failed_before = before & failed_mask(lv)
        in_flight = before & (lv.status == 200) & (lv.done > t_sig)
        errors_before = Counter(e for e, m in zip(lv.error, failed_before, strict=True) if m)
        failed = int(failed_before.sum())
        result = {
            "drill": "sigterm",
            "workers": cfg.workers,
            "sigterm_at_s": round(t_sig, 4),
            "burst": cfg.burst,
            "requests_sent_before_sigterm": int(before.sum()),
            "in_flight_at_sigterm_finished": int(in_flight.sum()),
            "failed_requests": failed,
            "failed_before_sigterm_by_kind": dict(errors_before),
            "requests_after_sigterm": int(after.sum()),
            "refused_after_sigterm": int((after & failed_mask(lv)).sum()),
            "served_after_sigterm": int((after & (lv.status == 200)).sum()),
            "shutdown_s": (actions[0].result or {}).get("exit_s"),
            "recovery_s": None,
            "actions": _action_log(actions),
        }
        checks = {"requests_in_flight_at_the_signal": bool(in_flight.any() or failed)}
        return _finish(server, lv, result, checks, failed)
    finally:
        server.stop()


def drill_full_store(cfg: DrillConfig, tmp: Path, think_s: float = 5.0) -> dict[str, Any]:
    """In-process store capped at ``cfg.max_sessions`` per worker; sessions ``think_s`` apart
    so about ``rate * think_s`` sessions are live at once."""
    server = _server(tmp, cfg, {"RANKER_STATE_MAX_SESSIONS": str(cfg.max_sessions)})
    try:
        server.start()
        ev0 = metric_value(server.metrics(), "ranker_state_store_evictions_total")
        lv = _load(server, cfg, [], think_s=think_s)
        metrics = server.metrics()
        evictions = metric_value(metrics, "ranker_state_store_evictions_total") - ev0
        failed = int(failed_mask(lv).sum())
        result = {
            "drill": "full-store",
            "workers": cfg.workers,
            "max_sessions_per_worker": cfg.max_sessions,
            "concurrent_sessions": round(cfg.rate * think_s),
            "failed_requests": failed,
            "evictions": evictions,
            "state_lookups": {
                r: metric_value(metrics, "ranker_state_store_lookups_total", {"result": r})
                for r in ("hit", "miss")
            },
            "recovery_s": None,
        }
        checks = {"evictions_counted": evictions > 0}
        return _finish(server, lv, result, checks, failed)
    finally:
        server.stop()


RUNNERS = {
    "redis": drill_redis,
    "reload": drill_reload,
    "sigterm": drill_sigterm,
    "full-store": drill_full_store,
}


def default_rate(report: Path = ROOT / "results" / "load" / "openloop.json") -> float:
    """Half of /v1/rank's measured saturation throughput in the committed load report (100
    requests/s if there is none)."""
    try:
        summary = json.loads(report.read_text())["summary"]["/v1/rank"]
        return round(summary["saturation_throughput"] / 2, 1) or 100.0
    except (OSError, KeyError, ValueError, TypeError):
        return 100.0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.drills", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("drill", choices=[*DRILLS, "all"])
    p.add_argument(
        "--rate",
        type=float,
        help="offered rank rate (default: half of the "
        "saturation throughput in results/load/openloop.json, else 100)",
    )
    p.add_argument("--duration", type=float, default=12.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-sessions", type=int, default=50, help="full-store: store capacity")
    p.add_argument("--burst", type=int, default=40, help="sigterm: requests in flight")
    p.add_argument(
        "--redis-outage",
        type=float,
        default=4.0,
        help="redis: seconds between the kill (at 3 s) and the restart",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON file; results are merged in by drill name")
    args = p.parse_args(argv)
    cfg = DrillConfig(
        rate=args.rate or default_rate(),
        duration_s=args.duration,
        workers=args.workers,
        max_sessions=args.max_sessions,
        burst=args.burst,
        seed=args.seed,
    )
    names = DRILLS if args.drill == "all" else (args.drill,)
    results: dict[str, Any] = {}
    for name in names:
        tmp = Path(tempfile.mkdtemp(prefix=f"ranker-drill-{name}-"))
        load0 = list(os.getloadavg())
        t = time.monotonic()
        try:
            if name == "redis":
                r = drill_redis(cfg, tmp, kill_at=3.0, back_at=3.0 + args.redis_outage)
            else:
                r = RUNNERS[name](cfg, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        r.update(
            {
                "rate": cfg.rate,
                "commit": git_head(),
                "loadavg_start": load0,
                "loadavg_end": list(os.getloadavg()),
                "run_s": round(time.monotonic() - t, 1),
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        v = r["verdict"]
        print(
            f"{name:10s} {'PASS' if v['pass'] else 'FAIL'}: failed {v['failed_requests']}, "
            f"lost log events {v['lost_log_events']}, recovery {r.get('recovery_s')} s; "
            f"{v['why']}"
        )
        key = name if cfg.workers == 2 else f"{name}@workers={cfg.workers}"
        if name == "redis" and args.redis_outage != 4.0:
            key += f"@outage={args.redis_outage:g}s"
        results[key] = r
    if args.out:
        old = json.loads(args.out.read_text()) if args.out.exists() else {}
        drills = {**old.get("drills", {}), **results}
        out = {
            "cpus": os.cpu_count(),
            "verdict_rule": "pass: 0 failed requests, 0 lost log events, every check holds",
            "drills": drills,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0 if all(r["verdict"]["pass"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
