"""Server CPU per request of this checkout against an earlier commit, measured alternately.

A before/after for changes made for speed, robust to a shared machine whose speed drifts
(on this one the same list build took 3.5, 5.6 and 3.7 ms within an hour): the earlier
commit is checked out in a temporary git worktree, both versions are started as ``ranker
serve`` (one worker, embedded state store, the same bundle, this environment's packages),
and wrk (closed loop) drives ``--path`` on each in turn, ``--rounds`` times. For each run the
server's CPU time (user + system of its process) is divided by the requests it answered;
the report gives each version's runs, their medians and the ratio, all from one run.

Needs git and wrk. Usage:
    python benchmarks/commit_ab.py --base c0869e5 [--path /v1/rank] [--rounds 4]
        [--duration 4] [--out results/commit_ab.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.http_stack import machine, run_wrk, save, wrk_script  # noqa: E402
from loadtest.procs import DEFAULT_BUNDLE, free_port, tree_cpu_seconds  # noqa: E402


def start(root: Path, bundle: Path, logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``ranker serve`` from the source tree ``root`` on a free port; (process, url)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RANKER_") and k != "PROMETHEUS_MULTIPROC_DIR"}  # fmt: skip
    env.update({"PYTHONPATH": str(root), "RANKER_LOG_DIR": str(logs / str(port))})
    out = (logs / f"server-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ranker_cli", "serve", "--port", str(port), "--bundle", str(bundle)],
        cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ranker serve from {root} exited {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling a subprocess for readiness, deadline above
    proc.kill()
    raise RuntimeError(f"ranker serve from {root} not ready in 120 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the earlier commit (any git revision)")
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    ap.add_argument("--path", default="/v1/rank", choices=("/v1/rank", "/v1/noop"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/commit_ab.json"))
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("commit_ab: error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    try:
        base = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
    except subprocess.CalledProcessError as e:
        print(f"commit_ab: error: {e.stderr.strip()}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="commit-ab-"))
    tree = tmp / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), base], cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    ids = pq.read_table(args.bundle / "items.parquet", columns=["item_id"])["item_id"]
    body = json.dumps({"user_id": 7, "candidates": ids.to_numpy()[::100][:200].tolist(),
                       "k": 10, "context": {"timestamp_ms": 1_700_000_000_000}})  # fmt: skip
    script = wrk_script(body, tmp / "post.lua")
    load0 = os.getloadavg()
    names = {f"base {base}": tree, f"head {head}": ROOT}
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    procs = {}
    try:
        for name, root in names.items():
            procs[name] = start(root, args.bundle, tmp)
        for _, url in procs.values():  # warm-up
            run_wrk(url + args.path, script, 1, args.connections)
        for r in range(args.rounds):
            for name, (proc, url) in procs.items():
                cpu0 = tree_cpu_seconds(proc.pid)
                res = run_wrk(url + args.path, script, args.duration, args.connections)
                res["cpu_ms_per_request"] = (
                    1e3 * (tree_cpu_seconds(proc.pid) - cpu0) / res["requests"]
                )
                runs[name].append(res)
                print(f"round {r + 1} {name:20s} {res['rate']:8.1f}/s "
                      f"{res['cpu_ms_per_request']:6.3f} ms CPU/request", flush=True)  # fmt: skip
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                       capture_output=True)  # fmt: skip
    med = {n: round(statistics.median(x["cpu_ms_per_request"] for x in rs), 3)
           for n, rs in runs.items()}  # fmt: skip
    b, h = med[f"base {base}"], med[f"head {head}"]
    out = {"path": args.path, "base": base, "head": head, "rounds": args.rounds,
           "duration_s": args.duration, "connections": args.connections,
           "cpu_ms_per_request_median": med, "head_over_base": round(h / b, 3), "runs": runs,
           "machine": machine(load0)}  # fmt: skip
    ratio = out["head_over_base"]
    print(f"{args.path}: server CPU per request, head {head} / base {base}: x{ratio} "
          f"({h} / {b} ms)")  # fmt: skip
    save(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
