"""Simulator throughput on one core, in impressions per second; saved as JSON.

Three figures over the same simulated days of the chosen preset:
  simulate       the world and the logging policy only (matching, ranking, feedback, dynamics)
  simulate+rows  plus building the Arrow log rows of every candidate
  end-to-end     `generate_dataset`: the above plus sorting and writing zstd Parquet shards

Usage: python benchmarks/sim_throughput.py [--preset default] [--days 2]
                                           [--out results/bench_sim.json]
The goal (issue 2) is at least 200k impressions/s.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from training.data.pipeline import code_version  # noqa: E402
from training.sim.config import preset  # noqa: E402
from training.sim.env import Env  # noqa: E402
from training.sim.generate import generate_dataset, request_rows  # noqa: E402
from training.sim.logging_policy import LoggingPolicy  # noqa: E402
from training.sim.world import build_world  # noqa: E402


def run_days(world, days: int, rows: bool) -> tuple[int, int, float]:
    env, pol = Env(world), LoggingPolicy(world)
    k = world.cfg.list_size
    n_imp = n_rows = 0
    t0 = time.perf_counter()
    for day in range(days):
        obs = env.begin_day(day)
        while obs is not None:
            slate, prop = pol.sample(obs, k)
            fb = env.step(slate)
            if rows:
                n_rows += request_rows(obs, slate, prop, fb).num_rows
            n_imp += slate.size
            obs = env.observe()
    return n_imp, n_rows, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--out", default="results/bench_sim.json")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cfg = preset(args.preset).with_overrides({"n_days": args.days})
    world = build_world(cfg)
    res: dict = {
        "preset": args.preset,
        "days": args.days,
        "n_candidates": cfg.n_candidates,
        "list_size": cfg.list_size,
        "code_version": code_version(),
        "machine": platform.processor() or platform.machine(),
        "cores_used": 1,
    }
    for name, rows in (("simulate", False), ("simulate+rows", True)):
        n_imp, n_rows, sec = run_days(world, args.days, rows)
        res[name] = {
            "impressions": n_imp,
            "seconds": round(sec, 3),
            "impressions_per_s": round(n_imp / sec),
            "candidate_rows_per_s": round(n_imp / sec * cfg.n_candidates / cfg.list_size),
        }
        print(f"{name:14s} {n_imp / sec:12,.0f} impressions/s ({n_imp:,} in {sec:.1f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        meta = generate_dataset(cfg, Path(tmp) / "ds", progress=False, valid_days=0, test_days=0)
        sec = time.perf_counter() - t0
    n_imp = meta["counts"]["impressions"]
    res["end-to-end"] = {
        "impressions": n_imp,
        "rows": meta["counts"]["rows"],
        "seconds": round(sec, 3),
        "impressions_per_s": round(n_imp / sec),
    }
    print(
        f"{'end-to-end':14s} {n_imp / sec:12,.0f} impressions/s "
        f"({n_imp:,} in {sec:.1f} s, with Parquet)"
    )
    res["goal_impressions_per_s"] = 200_000
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
