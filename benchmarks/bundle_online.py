"""The exported bundle online: ONNX rankers against their torch twins in the simulated A/B.

Arms of one :func:`training.eval.online.run_online` (common random numbers, so every pair of
arms is compared on the same users and sessions):

- ``student_onnx``: the bundle's ``drl_student`` ranked by the runtime's list builder
  (:class:`training.eval.policies.BundlePolicy`, what the service runs);
- ``student_torch``: the same trained network in torch (:class:`QPolicy` on the student of
  ``training.bundles.load_drl_run(manifest training.run)``);
- ``wide_deep_onnx`` / ``wide_deep_torch``: the bundle's ``wide_deep_weighted`` and its torch
  twin (:class:`PointwisePolicy` on ``training.bundles.load_wide_deep(training.file)``);
- ``logging``: the world's logging policy, as the reference.

The world is the one the dataset was generated from (its ``dataset.json`` world config); the
days default to those after the training split's last day, the population to ``--users``
users drawn with ``--seed`` as ``ranker drl-report`` draws them, and the env's draws are
shifted by ``--seed-offset`` (1: fresh sessions, not the logged ones). Torch runs on one
thread, onnxruntime on one intra-op thread; every policy is greedy.

Reported: ACN (``clicks_per_user``) and ``watch_time_per_user`` of every arm with 95%
intervals and the change vs ``logging``; for each onnx/torch pair the relative difference
with its paired interval (``OnlineResult.summary(baseline=torch arm)``) and the share of
identical slates (every arm's slates are recorded by a wrapper, keyed by (user, day, request
index)): over the requests both arms served, and over those whose session history was still
identical in both arms (inputs equal, so any difference is numerical), with the number of users
whose slates ever differ. Timings: seconds per arm and milliseconds per request in ``rank``.

Usage: python benchmarks/bundle_online.py [--bundle models/default] [--data data/default]
           [--users 2000] [--days 5 6] [--seed 0] [--seed-offset 1]
           [--out runs/bench/bundle_online.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.bundle import load_bundle
from training.bundles import load_drl_run, load_wide_deep
from training.data.features import SideTables
from training.data.pipeline import Dataset, code_version
from training.drl.networks import param_count
from training.eval.online import OnlineResult, run_online
from training.eval.policies import BundlePolicy, PointwisePolicy, QPolicy
from training.harness.data import online_population, split_days
from training.sim.config import WorldConfig
from training.sim.env import Feedback, Observation
from training.sim.logging_policy import LoggingPolicy
from training.sim.world import build_world

METRICS = ["clicks_per_user", "watch_time_per_user"]
PAIRS = {"student": ("student_onnx", "student_torch"),
         "wide_deep": ("wide_deep_onnx", "wide_deep_torch")}  # fmt: skip


class Recorded:
    """A policy that records its slates (item ids, keyed by (user, day, request index)) and
    the seconds spent in ``rank``; ``bind`` and ``observe_feedback`` pass through."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.slates: dict[tuple[int, int, int], tuple[int, ...]] = {}
        self.seconds = 0.0
        self.requests = 0
        self.calls = 0

    def bind(self, env: Any) -> None:
        if hasattr(self.policy, "bind"):
            self.policy.bind(env)

    def rank(self, obs: Observation, k: int) -> np.ndarray:
        t0 = time.perf_counter()
        slate = np.asarray(self.policy.rank(obs, k))
        self.seconds += time.perf_counter() - t0
        self.requests += obs.batch_size
        self.calls += 1
        items = np.take_along_axis(obs.candidate_ids, slate, axis=1)
        for u, r, row in zip(obs.users.tolist(), obs.request_index.tolist(), items.tolist(),
                             strict=True):  # fmt: skip
            self.slates[(u, obs.day, r)] = tuple(row)
        return slate

    def observe_feedback(self, obs: Observation, slate: np.ndarray, feedback: Feedback) -> None:
        if hasattr(self.policy, "observe_feedback"):
            self.policy.observe_feedback(obs, slate, feedback)


def slate_agreement(a: Recorded, b: Recorded) -> dict[str, Any]:
    """Identical slates of two arms over the requests both served, and over those whose
    earlier requests (same user, earlier days and requests) were all identical in both."""
    common = sorted(set(a.slates) & set(b.slates))
    same = np.array([a.slates[key] == b.slates[key] for key in common], dtype=bool)
    same_set = np.array([set(a.slates[key]) == set(b.slates[key]) for key in common], bool)
    overlap = np.array([len(set(a.slates[key]) & set(b.slates[key])) / len(a.slates[key])
                        for key in common])  # fmt: skip
    diverged: set[int] = set()
    before_div = []  # same history: no earlier differing slate for the user
    for key, s in zip(common, same.tolist(), strict=True):
        u = key[0]
        if u in diverged:
            continue
        before_div.append(s)
        if not s:
            diverged.add(u)
    users = {key[0] for key in common}
    n = len(common)
    differ = [key for key, s in zip(common, same.tolist(), strict=True) if not s][:5]
    return {
        "requests_common": n,
        "requests_only_a": len(a.slates) - n,
        "requests_only_b": len(b.slates) - n,
        "identical_share": float(same.mean()) if n else math.nan,
        "same_items_share": float(same_set.mean()) if n else math.nan,
        "mean_item_overlap": float(overlap.mean()) if n else math.nan,
        "same_history_requests": len(before_div),
        "identical_share_same_history": float(np.mean(before_div)) if before_div else math.nan,
        "users": len(users),
        "users_diverged": len(diverged),
        "examples": [
            {
                "user": key[0],
                "day": key[1],
                "request_index": key[2],
                "a": list(a.slates[key]),
                "b": list(b.slates[key]),
            }
            for key in differ
        ],  # fmt: skip
    }


def _row(rows: list[dict[str, Any]], arm: str, metric: str) -> dict[str, Any]:
    return next(r for r in rows if r["arm"] == arm and r["metric"] == metric)


def _clean(o: Any) -> Any:
    """NaN -> None, numpy scalars -> Python, for strict JSON."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def _resolve(p: str | None, what: str, override: str | None) -> Path:
    path = Path(override) if override else Path(p) if p else None
    if path is None or not path.exists():
        raise SystemExit(f"{what}: {path} not found; pass it explicitly (see --help)")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default="models/default")
    ap.add_argument("--data", default="data/default", help="the dataset the bundle was trained on")
    ap.add_argument("--users", type=int, default=2000, help="population size (0: every user)")
    ap.add_argument(
        "--days",
        type=int,
        nargs="*",
        default=None,
        help="days to run (default: the days after the training split's last day)",
    )
    ap.add_argument("--seed", type=int, default=0, help="draw of the population")
    ap.add_argument(
        "--seed-offset",
        type=int,
        default=1,
        help="shift of the env's draws (0: the logged sessions' own draws)",
    )
    ap.add_argument(
        "--drl-run", default=None, help="DRL-Rec run folder (default: the manifest's training.run)"
    )
    ap.add_argument(
        "--wide-deep", default=None, help="Wide&Deep .pt (default: the manifest's training.file)"
    )
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default="runs/bench/bundle_online.json")
    args = ap.parse_args()  # fmt: skip
    torch.set_num_threads(1)
    load_before = list(os.getloadavg())
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    bundle = load_bundle(args.bundle, models=["drl_student", "wide_deep_weighted"], threads=1)
    t_bundle = time.perf_counter() - t0
    man = bundle.manifest
    ds = Dataset.open(args.data)
    if Path(man.dataset.get("path", args.data)).resolve() != Path(args.data).resolve():
        print(f"note: the bundle was exported from {man.dataset.get('path')}, not {args.data}")
    side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)

    t0 = time.perf_counter()
    drl_run = _resolve(man.models["drl_student"].training.get("run"), "DRL-Rec run", args.drl_run)
    _, drl, _ = load_drl_run(drl_run)
    student = drl.student.eval()
    wd_path = _resolve(man.models["wide_deep_weighted"].training.get("file"), "Wide&Deep",
                       args.wide_deep)  # fmt: skip
    wd, _ = load_wide_deep(wd_path)
    t_torch = time.perf_counter() - t0
    for name, net in (("drl_student", student), ("wide_deep_weighted", wd)):
        if param_count(net) != man.models[name].params:
            raise SystemExit(f"{name}: the torch twin has {param_count(net):,} parameters, the "
                             f"bundle {man.models[name].params:,}; wrong run?")  # fmt: skip

    wcfg = WorldConfig.from_dict(ds.meta["world"])
    world = build_world(wcfg)
    train_days = split_days(ds, "train")
    days = args.days if args.days else list(range(max(train_days) + 1, wcfg.n_days))
    if not days:
        raise SystemExit(f"no days after the training days {train_days} (world has "
                         f"{wcfg.n_days}); pass --days")  # fmt: skip
    users = online_population(args.seed, world.n_users, args.users)

    arms = {
        "logging": Recorded(LoggingPolicy(world)),
        "student_onnx": Recorded(BundlePolicy(bundle, "drl_student")),
        "student_torch": Recorded(QPolicy(student, side)),
        "wide_deep_onnx": Recorded(BundlePolicy(bundle, "wide_deep_weighted")),
        "wide_deep_torch": Recorded(PointwisePolicy(wd, side)),
    }
    print(f"bundle {bundle.version}; world {ds.meta.get('preset')} seed {wcfg.seed}; "
          f"{len(users)} users, days {days} (training days {train_days}), seed offset "
          f"{args.seed_offset}; arms {list(arms)}")  # fmt: skip
    result: OnlineResult = run_online(
        world, arms, users=users, days=days, seed_offset=args.seed_offset, progress=args.progress
    )
    vs_logging = result.summary("logging", METRICS)
    pairs: dict[str, Any] = {}
    for pair, (onnx_arm, torch_arm) in PAIRS.items():
        rows = result.summary(torch_arm, METRICS)
        pairs[pair] = {
            "onnx": onnx_arm,
            "torch": torch_arm,
            "relative": {
                m: {k: _row(rows, onnx_arm, m)[k] for k in ("rel_pct", "rel_low", "rel_high", "n")}
                for m in METRICS
            },  # fmt: skip
            "slates": slate_agreement(arms[onnx_arm], arms[torch_arm]),
        }

    # --- print
    print()
    print(f"{'arm':16s} {'ACN':>8s} {'95% CI':>19s} {'vs logging':>11s} "
          f"{'watch/user':>11s} {'95% CI':>21s} {'vs logging':>11s} {'ms/req':>7s}")  # fmt: skip
    timings = {}
    for arm, rec in arms.items():
        a = _row(vs_logging, arm, "clicks_per_user")
        w = _row(vs_logging, arm, "watch_time_per_user")
        ms = 1e3 * rec.seconds / max(rec.requests, 1)
        timings[arm] = {"seconds": result.meta["seconds"][arm], "rank_seconds": rec.seconds,
                        "requests": rec.requests, "rank_calls": rec.calls,
                        "rank_ms_per_request": ms}  # fmt: skip
        print(f"{arm:16s} {a['mean']:8.3f} [{a['low']:8.3f}, {a['high']:8.3f}] "
              f"{a['rel_pct']:+10.2f}% {w['mean']:11.1f} [{w['low']:9.1f}, {w['high']:9.1f}] "
              f"{w['rel_pct']:+10.2f}% {ms:7.3f}")  # fmt: skip
    print()
    for p in pairs.values():
        s = p["slates"]
        rel = "; ".join(f"{m} {r['rel_pct']:+.3f}% [{r['rel_low']:+.3f}, {r['rel_high']:+.3f}]"
                        for m, r in p["relative"].items())  # fmt: skip
        print(f"{p['onnx']} vs {p['torch']}: {rel}")
        print(
            f"  identical slates {s['identical_share']:.4f} of {s['requests_common']:,} "
            f"common requests; {s['identical_share_same_history']:.4f} of "
            f"{s['same_history_requests']:,} with the same history; same items "
            f"{s['same_items_share']:.4f}; users diverged {s['users_diverged']}/{s['users']}"
        )

    total_seconds = time.perf_counter() - t_start
    res: dict[str, Any] = {
        "config": {
            "bundle": args.bundle,
            "bundle_version": bundle.version,
            "models": {
                n: man.models[n].model_version for n in ("drl_student", "wide_deep_weighted")
            },
            "data": args.data,
            "drl_run": str(drl_run),
            "wide_deep": str(wd_path),
            "world_preset": ds.meta.get("preset"),
            "world_seed": wcfg.seed,
            "users": int(len(users)),
            "users_requested": args.users,
            "days": days,
            "train_days": train_days,
            "seed": args.seed,
            "seed_offset": args.seed_offset,
            "list_size": wcfg.list_size,
            "n_candidates": wcfg.n_candidates,
            "torch_threads": torch.get_num_threads(),
            "onnxruntime_threads": 1,
        },  # fmt: skip
        "n_sessions": result.n_sessions,
        "active_users": int(result.active_users().shape[0]),
        "results": vs_logging,
        "pairs": pairs,
        "timings": {
            "arms": timings,
            "load_bundle_seconds": t_bundle,
            "load_torch_seconds": t_torch,
            "total_seconds": total_seconds,
        },
        "code_version": code_version(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },  # fmt: skip
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(res), indent=2) + "\n")
    print(f"\n{total_seconds:.0f} s; saved {out}")


if __name__ == "__main__":
    main()
