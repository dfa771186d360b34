"""DRL-Rec training throughput (teacher + student together), in real instances per second.

Two figures per exploration size:
  with data   streaming Parquet -> featurisation -> batches -> step (what training runs)
  bare step   the same step on batches already built (the model's own speed)
On CUDA, ``--bf16`` runs the step under bfloat16 autocast. Saved as JSON.

Usage: python benchmarks/drl_throughput.py --data data/default [--device cpu] [--explore 100 1000]
       [--steps 20] [--batch-size 256] [--threads 1] [--out results/drl_throughput.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from training.data.features import SideTables
from training.data.pipeline import Dataset, code_version
from training.drl.train import DRLConfig, DRLTrainer, iter_training_batches


def bench(ds: Dataset, side: SideTables, cfg: DRLConfig, device: str, steps: int, bf16: bool):
    trainer = DRLTrainer(cfg, side, device=device)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if bf16 and device.startswith("cuda")
        else contextlib.nullcontext()
    )
    it = iter_training_batches(trainer, ds.paths("train"), epochs=100)
    batches = []
    with amp:
        for _ in range(3):  # warm-up (and the first chunk's featurisation)
            trainer.step(next(it)[1])
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        sync()
        t0 = time.perf_counter()
        n = 0
        for _ in range(steps):
            b = next(it)[1]
            batches.append(b)
            trainer.step(b)
            n += int(b.reward.shape[0])
        sync()
        with_data = n / (time.perf_counter() - t0)
        pre = [b.to(device) for b in batches]
        sync()
        t0 = time.perf_counter()
        for b in pre:
            trainer.step(b)
        sync()
        bare = n / (time.perf_counter() - t0)
    return {"with_data_per_s": round(with_data, 1), "bare_step_per_s": round(bare, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--explore", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--out", default="results/drl_throughput.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = Dataset.open(args.data)
    side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)
    res: dict = {
        "data": str(args.data),
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else (platform.processor() or platform.machine()),
        "threads": args.threads,
        "bf16": args.bf16,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "code_version": code_version(),
        "load_average": os.getloadavg()[0],
        "goal_gpu_per_s": 300_000,
        "runs": {},
    }
    for x in args.explore:
        cfg = DRLConfig(n_explore=x, batch_size=args.batch_size, sessions_per_chunk=512)
        r = bench(ds, side, cfg, args.device, args.steps, args.bf16)
        res["runs"][str(x)] = r
        print(f"n_explore={x:5d}: {r['with_data_per_s']:10,.0f}/s with data, "
              f"{r['bare_step_per_s']:10,.0f}/s bare step")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
