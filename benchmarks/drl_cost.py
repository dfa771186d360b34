"""Serving cost of the DRL-Rec student against its teacher (the paper's Table 3 cost side).

For each network: parameters, bytes (state dict on disk, parameters in memory), multiply-adds
per request (``training.drl.networks.flops_breakdown``) and measured time per request to build a
list of ``k`` from ``n`` candidates the way the service does: per slot, the scorer over the
unplaced candidates from the cached state, then one state step (encode the placed item, push).
Torch on the CPU, one request at a time, one thread. Saved as JSON.

Usage: python benchmarks/drl_cost.py [--compression 0.5] [--requests 200] [--out PATH]

Without ``--out`` the result is printed and nothing is written; the committed
results/drl_cost.json is rewritten only when asked by name (``--out results/drl_cost.json
--overwrite``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from contract.features import DEFAULT_SPEC
from training.data.pipeline import code_version
from training.drl.networks import QNetConfig, QNetwork, flops_breakdown, param_count, push


def random_ids(sizes: list[int], shape: tuple[int, ...], rng: np.random.Generator) -> torch.Tensor:
    cols = [rng.integers(0, s, size=shape) for s in sizes]
    return torch.from_numpy(np.stack(cols, axis=-1).astype(np.int64))


@torch.no_grad()
def serve_one(net: QNetwork, uc: torch.Tensor, cands: torch.Tensor, hist: torch.Tensor, k: int):
    """Build one list: cached state, k scorer calls, k state steps."""
    buf = net.encode_history(hist)  # the session's cached encodings (done once per session)
    mask = torch.ones(1, hist.shape[1], dtype=torch.bool)
    placed = torch.zeros(cands.shape[1], dtype=torch.bool)
    out = []
    for _ in range(k):
        s = net.state(buf, mask, uc)
        q, _ = net.q_from_state(s, cands)
        q = q[0].masked_fill(placed, float("-inf"))
        j = int(torch.argmax(q))
        placed[j] = True
        out.append(j)
        imp = torch.cat([uc[0], cands[0, j]])[None]
        buf, mask = push(buf, mask, net.encode(imp))
    return out


def measure(net: QNetwork, n: int, k: int, requests: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    sizes = DEFAULT_SPEC.sizes()
    n_uc = net.cfg.n_user_ctx
    data = [
        (
            random_ids(sizes[:n_uc], (1,), rng),
            random_ids(sizes[n_uc:], (1, n), rng),
            random_ids(sizes, (1, net.cfg.memory), rng),
        )
        for _ in range(requests)
    ]
    for d in data[:10]:
        serve_one(net, *d, k)  # warm-up
    t0 = time.perf_counter()
    for d in data:
        serve_one(net, *d, k)
    per = (time.perf_counter() - t0) / requests
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    fl = flops_breakdown(net.cfg, n_candidates=n, k=k)
    return {
        "parameters": param_count(net),
        "parameters_without_embeddings": param_count(net)
        - net.state_encoder.embedding.table.weight.numel(),
        "bytes_on_disk": buf.getbuffer().nbytes,
        "bytes_in_memory": sum(p.numel() * p.element_size() for p in net.parameters()),
        "macs_per_request": int(sum(fl.values())),
        "macs_breakdown": {k_: int(v) for k_, v in fl.items()},
        "ms_per_request": round(per * 1e3, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compression", type=float, default=0.5, help="student / teacher widths")
    ap.add_argument("--candidates", type=int, default=200, help="candidates per request")
    ap.add_argument("--k", type=int, default=10, help="list length")
    ap.add_argument("--requests", type=int, default=200, help="requests timed per network")
    ap.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = ap.parse_args(argv)
    if args.out and Path(args.out).exists() and not args.overwrite:
        print(f"drl_cost: error: {args.out} exists; pass --overwrite to replace it",
              file=sys.stderr)  # fmt: skip
        return 2
    torch.set_num_threads(1)
    teacher_cfg = QNetConfig.from_spec(DEFAULT_SPEC)
    res: dict = {
        "compression": args.compression,
        "candidates": args.candidates,
        "k": args.k,
        "requests": args.requests,
        "code_version": code_version(),
        "machine": platform.processor() or platform.machine(),
        "threads": 1,
        "load_average": os.getloadavg()[0],
    }
    for name, cfg in (("teacher", teacher_cfg), ("student", teacher_cfg.scaled(args.compression))):
        with torch.random.fork_rng(devices=[]):  # seeded init, the global generator untouched
            torch.manual_seed(0)
            net = QNetwork(cfg).eval()
        res[name] = measure(net, args.candidates, args.k, args.requests)
        print(name, {k: v for k, v in res[name].items() if k != "macs_breakdown"})
    t, s = res["teacher"], res["student"]
    res["student_over_teacher"] = {
        key: round(s[key] / t[key], 4)
        for key in (
            "parameters",
            "bytes_on_disk",
            "bytes_in_memory",
            "macs_per_request",
            "ms_per_request",
        )  # fmt: skip
    }
    res["paper"] = {"memory": 0.497, "computation": 0.767}
    print("student / teacher:", res["student_over_teacher"])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(f"saved {args.out}")
    else:
        print(json.dumps(res["student_over_teacher"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
