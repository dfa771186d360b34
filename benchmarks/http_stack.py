"""Server CPU per request and closed-loop throughput of two uvicorn stacks, same app.

``ranker serve`` (one worker, embedded state store) runs twice side by side: uvicorn's pure
Python stack (h11 parser, asyncio loop) and its C stack (httptools parser, uvloop loop; what
``RANKER_HTTP``/``RANKER_LOOP`` pick by default when the ``serve`` extra's packages are
installed). wrk (closed loop: ``--connections`` connections, each sending its next request
when the last answered) drives ``POST /v1/noop`` and ``POST /v1/rank`` with the same body (200
real item ids of the bundle, k 10, a new session each time), the two servers alternately for
``--rounds`` rounds so that both see the same background load. Reported per stack and path:
requests/s, and the server's CPU milliseconds per request (its process's user + system time
over the run / requests: the figure least moved by other work on a shared machine), medians
over the rounds, and the C stack's ratios to the Python one.

Needs wrk (Debian's package). Usage:
    python benchmarks/http_stack.py [--duration 5] [--rounds 3] [--out results/http_stack.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.procs import DEFAULT_BUNDLE, RankerServer  # noqa: E402

STACKS = {"h11+asyncio": ("h11", "asyncio"), "httptools+uvloop": ("httptools", "uvloop")}
PATHS = ("/v1/noop", "/v1/rank")


def wrk_script(body: str, path: Path) -> Path:
    path.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = [[{body}]]\n")  # fmt: skip
    return path


def run_wrk(url: str, script: Path, duration: float, connections: int) -> dict[str, float]:
    """One wrk run: requests, requests/s, non-2xx count. Raises RuntimeError on failure."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "-s", str(script), url],
        capture_output=True, text=True, timeout=duration + 30,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr or out.stdout}")
    reqs = re.search(r"(\d+) requests in", out.stdout)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    if not (reqs and rate):
        raise RuntimeError(f"unreadable wrk output:\n{out.stdout}")
    return {"requests": int(reqs.group(1)), "rate": float(rate.group(1)),
            "non_2xx": int(bad.group(1)) if bad else 0}  # fmt: skip


def machine(load_before: tuple[float, float, float]) -> dict:
    """The machine block of a benchmark's JSON: platform, CPUs, load average before/after."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "load_before": load_before, "load_after": os.getloadavg()}  # fmt: skip


def save(out: Path, report: dict) -> None:
    """Write ``report`` as JSON to ``out`` (folders made) and say so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/http_stack.json"))
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("http_stack: error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    ids = pq.read_table(args.bundle / "items.parquet", columns=["item_id"])["item_id"]
    body = json.dumps({"user_id": 7, "candidates": ids.to_numpy()[::100][:200].tolist(),
                       "k": 10, "context": {"timestamp_ms": 1_700_000_000_000}})  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="http-stack-"))
    script = wrk_script(body, tmp / "post.lua")
    load0 = os.getloadavg()
    servers = {
        name: RankerServer(
            tmp / name / "logs", bundle=args.bundle, env={"RANKER_HTTP": http, "RANKER_LOOP": loop}
        )  # fmt: skip
        for name, (http, loop) in STACKS.items()
    }
    runs: dict[str, dict[str, list[dict[str, float]]]] = {n: {p: [] for p in PATHS} for n in STACKS}
    try:
        for s in servers.values():
            s.start()
        for s in servers.values():  # warm-up
            for path in PATHS:
                run_wrk(s.url + path, script, 1.0, args.connections)
        for r in range(args.rounds):
            for path in PATHS:
                for name, s in servers.items():
                    cpu0 = s.cpu_seconds()
                    res = run_wrk(s.url + path, script, args.duration, args.connections)
                    res["cpu_ms_per_request"] = 1e3 * (s.cpu_seconds() - cpu0) / res["requests"]
                    runs[name][path].append(res)
                    cpu = res["cpu_ms_per_request"]
                    print(f"round {r + 1} {name:17s} {path:9s} {res['rate']:8.1f}/s "
                          f"{cpu:6.3f} ms CPU/request", flush=True)  # fmt: skip
    finally:
        for s in servers.values():
            s.stop()
    summary: dict[str, dict] = {}
    for name in STACKS:
        summary[name] = {}
        for path in PATHS:
            rs = runs[name][path]
            summary[name][path] = {
                "rate_median": round(statistics.median(x["rate"] for x in rs), 1),
                "cpu_ms_per_request_median": round(
                    statistics.median(x["cpu_ms_per_request"] for x in rs), 3),
                "non_2xx": sum(x["non_2xx"] for x in rs),
            }  # fmt: skip
    py, c = summary["h11+asyncio"], summary["httptools+uvloop"]
    ratios = {
        path: {
            "rate": round(c[path]["rate_median"] / py[path]["rate_median"], 3),
            "cpu_per_request": round(
                c[path]["cpu_ms_per_request_median"] / py[path]["cpu_ms_per_request_median"], 3),
        }
        for path in PATHS
    }  # fmt: skip
    out = {
        "bundle": str(args.bundle), "duration_s": args.duration, "rounds": args.rounds,
        "connections": args.connections, "summary": summary,
        "c_stack_over_python_stack": ratios, "runs": runs,
        "machine": machine(load0),
    }  # fmt: skip
    for path, r in ratios.items():
        print(f"{path}: httptools+uvloop / h11+asyncio: rate x{r['rate']}, "
              f"CPU per request x{r['cpu_per_request']}")  # fmt: skip
    save(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
