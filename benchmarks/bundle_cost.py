"""Serving cost of an exported model bundle: every model, teacher against student and baseline.

For each model of the bundle (ONNX Runtime on the CPU, what the service runs):

- parameters and bytes on disk: the manifest's ``params`` and ``bytes`` (graph files plus the
  distinct shared weights they point at);
- resident memory: ``VmRSS`` of a fresh subprocess that loads only that model
  (``load_bundle(path, models=[name])``, with its warm-up; and after one list of ``k`` from
  ``C``) minus that of a subprocess that imports the same modules and loads nothing
  (``vs_nothing_mb``: side tables and pyarrow's parquet reader included), minus one that loads
  the bundle with no model (``sessions_mb``: includes onnxruntime's one-off start, about 9 MB)
  and minus one that also starts onnxruntime (``own_mb``, one session of an Identity graph: the
  model's own sessions; the student/teacher ratio of memory uses this one); median of
  ``--rss-repeats`` rounds of subprocesses;
- multiply-adds per request: the manifest's ``flops_per_request`` (the torch network's
  count, ``training.drl.networks.flops_breakdown``: full first layer per candidate and slot)
  and what the exported graphs execute, counted from the graphs: every MatMul, Gemm and GRU
  node's shapes as onnxruntime runs them on the benchmark's request (``B = 1``, ``C``
  candidates, a full window; the graph's intermediate tensors exposed as outputs of an
  unoptimised session); per request ``request + k score + k step``;
- time per request to build a list of ``k`` from ``C`` real item ids of the bundle's item
  table with :func:`runtime.lists.build_lists` (``load_bundle(threads=1)``; the session's
  cached state of a full window is reused for every request): median, p90 and mean over
  ``--requests`` after a warm-up, and the split by graph call (``LoadedModel.run`` wrapped with
  a timer) against the Python/numpy remainder, itself split into the builder's numpy steps
  (the side-table lookups, context and list fields: the functions wrapped with timers) and
  the loop's own glue.

Beside it: the FLOP floor of the request on this CPU (numpy float32 GEMM rate on one BLAS
thread, for the graphs' small shapes and a large 512^3 product; ``floor_ms = 2 MACs / rate``),
the fixed cost of an onnxruntime call (an empty graph) and of one node (a chain of Adds), the
node counts of every graph after onnxruntime's optimisation at each level, the student's list
time for intra-op threads 1 and 2 and each optimisation level (the evidence behind
``runtime.bundle.session_options``' defaults), and the student/teacher ratios against the
paper's 49.7% memory and 76.7% computation. The issue's goal for the student, at most
``--goal-ms`` (0.5) ms per list of 10 from 200 on one core, is checked and, when missed, the
time is broken down. Machine facts (load average before and after, CPU, versions, code
version) are saved with the figures.

Timing runs in ``--rounds`` rounds with the models' order rotated, so a change of the
machine's load during the run falls on every model alike; on a shared machine compare the
medians of one run, not of two runs.

Usage: python benchmarks/bundle_cost.py [--bundle models/default] [--requests 300]
           [--warmup 30] [--rounds 30] [--candidates 200] [--k 10] [--sweep-requests 100]
           [--rss-repeats 5] [--goal-ms 0.5] [--seed 0] [--out runs/bench/bundle_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from threadpoolctl import threadpool_info, threadpool_limits

import runtime.bundle
import runtime.lists
from contract.features import ListFieldEncoder
from runtime.bundle import Bundle, LoadedModel, load_bundle, session_options
from runtime.lists import SessionState, build_lists
from training.data.pipeline import code_version

PAPER = {"memory": 0.497, "computation": 0.767}
LEVELS = ("disable", "basic", "extended", "all")
TIMESTAMP_MS = 1_700_000_000_000
ROOT = Path(__file__).resolve().parents[1]

# --- resident memory (fresh subprocesses) --------------------------------------------------

_RSS_CHILD = r"""
import json, sys
import numpy as np, onnx, onnxruntime, pyarrow.parquet  # noqa: F401
from runtime.bundle import load_bundle, session_options
from runtime.lists import SessionState, build_lists

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out

path, mode, c, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
res = {"imported": status()}
if mode != "@nothing":
    names = [] if mode.startswith("@") else [mode]
    b = load_bundle(path, models=names, threads=1)
    if mode == "@runtime":  # onnxruntime's one-off start: one session of an Identity graph
        x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "e", [x], [y])
        mod = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
        sess = onnxruntime.InferenceSession(mod.SerializeToString(), session_options(1, "all"),
                                            providers=["CPUExecutionProvider"])
        sess.run(None, {"x": np.ones(1, np.float32)})
    res["loaded"] = status()
    if names:
        m = b.model(names[0])
        rng = np.random.default_rng(0)
        st = SessionState.new(m, b.spec.recent_window)
        cands = rng.choice(b.tables.item_ids, min(c, len(b.tables.item_ids)), replace=False)
        build_lists(b, m, [st], b.tables.user_ids[:1], np.array([0]), cands[None], k)
        res["served"] = status()
print(json.dumps(res))
"""


def _rss_child(bundle: Path, mode: str, c: int, k: int) -> dict[str, dict[str, int]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(bundle), mode, str(c), str(k)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def resident_memory(bundle: Path, models: list[str], repeats: int, c: int, k: int) -> dict:
    """Median over ``repeats`` fresh subprocesses of VmRSS at each stage, and the deltas."""
    modes = ["@nothing", "@tables", "@runtime", *models]
    samples: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(repeats):  # interleaved, so a drift of the machine hits every mode alike
        for m in modes:
            samples[m].append(_rss_child(bundle, m, c, k))

    def med(mode: str, stage: str, key: str = "VmRSS") -> float:
        return float(np.median([s[stage][key] for s in samples[mode]]))

    mb = 1 / 2**20
    nothing, tables = med("@nothing", "imported"), med("@tables", "loaded")
    runtime = med("@runtime", "loaded")
    out: dict[str, Any] = {
        "method": "VmRSS of fresh subprocesses (median of repeats) after load_bundle(models="
        "[name]) with its warm-up, and after one list of k from C (served); vs_nothing: minus "
        "a process that imports the same modules and loads nothing; sessions: minus a process "
        "that loads the bundle (manifest, hashes, side tables) with no model; own: minus one "
        "that also starts onnxruntime (one session of an Identity graph, run once)",
        "repeats": repeats,
        "nothing_mb": round(nothing * mb, 2),
        "bundle_without_models_mb": round(tables * mb, 2),
        "tables_mb": round((tables - nothing) * mb, 2),
        "onnxruntime_start_mb": round((runtime - tables) * mb, 2),
        "runtime_samples_mb": [round(x["loaded"]["VmRSS"] * mb, 2) for x in samples["@runtime"]],
        "models": {},
    }
    for m in models:
        loaded, served = med(m, "loaded"), med(m, "served")
        out["models"][m] = {
            "rss_loaded_mb": round(loaded * mb, 2),
            "rss_served_mb": round(served * mb, 2),
            "peak_served_mb": round(med(m, "served", "VmHWM") * mb, 2),
            "vs_nothing_mb": round((loaded - nothing) * mb, 2),
            "vs_nothing_served_mb": round((served - nothing) * mb, 2),
            "sessions_mb": round((loaded - tables) * mb, 2),
            "sessions_served_mb": round((served - tables) * mb, 2),
            "own_mb": round((loaded - runtime) * mb, 2),
            "own_served_mb": round((served - runtime) * mb, 2),
            "rss_loaded_samples_mb": [round(x["loaded"]["VmRSS"] * mb, 2) for x in samples[m]],
        }
    return out


# --- FLOPs counted from the graphs -------------------------------------------------------


def _attr(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def graph_macs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """Multiply-adds of one call of the graph at ``path`` on ``feeds``, from its nodes' shapes.

    Every MatMul, Gemm and GRU input and output is made a graph output of an unoptimised
    session and the graph runs once, so the shapes (and the GRU's sequence lengths) are the
    executed ones. MatMul: ``prod(out) * K``; Gemm: ``M N K``; GRU: ``sum(lens) 3H (I + H)``
    (valid steps only). Integer MatMuls (the joint-table index ``ids @ strides``) are counted
    apart; Gathers of float tables are counted as gathered values, not MACs.
    """
    model = onnx.load(str(path))  # weights from the shared external data
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    const = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    const[node.output[0]] = numpy_helper.to_array(a.t)
    watched = {"MatMul", "Gemm", "GRU", "Gather"}
    want: list[str] = []
    existing = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type not in watched:
            continue
        for x in [*node.input, node.output[0]]:
            if x and x not in const and x not in feeds and x not in existing and x not in want:
                want.append(x)
    for x in want:
        model.graph.output.append(helper.make_tensor_value_info(x, types.get(x) or 1, None))
    sess = ort.InferenceSession(model.SerializeToString(), session_options(1, "disable"),
                                providers=["CPUExecutionProvider"])  # fmt: skip
    names = [o.name for o in model.graph.output]
    outs = sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})
    val = {**const, **feeds, **dict(zip(names, outs, strict=True))}
    float_macs = int_macs = gathered = gru_steps = 0
    nodes = []
    for node in model.graph.node:
        op = node.op_type
        if op not in watched:
            continue
        if op == "MatMul":
            a, y = val[node.input[0]], val[node.output[0]]
            k_dim = a.shape[-1]
            macs = int(np.prod(y.shape, dtype=np.int64)) * int(k_dim)
            if a.dtype.kind == "f":
                float_macs += macs
            else:
                int_macs += macs
            nodes.append({"op": op, "a": list(a.shape), "b": list(val[node.input[1]].shape),
                          "macs": macs, "dtype": str(a.dtype)})  # fmt: skip
        elif op == "Gemm":
            a, y = val[node.input[0]], val[node.output[0]]
            k_dim = a.shape[0] if _attr(node, "transA") else a.shape[1]
            macs = int(y.shape[0]) * int(y.shape[1]) * int(k_dim)
            float_macs += macs
            nodes.append({"op": op, "a": list(a.shape), "b": list(val[node.input[1]].shape),
                          "macs": macs})  # fmt: skip
        elif op == "GRU":
            x, w = val[node.input[0]], val[node.input[1]]
            h = _attr(node, "hidden_size")
            lens_name = node.input[4] if len(node.input) > 4 else ""
            lens = val[lens_name] if lens_name else np.full(x.shape[1], x.shape[0])
            steps = int(np.minimum(lens, x.shape[0]).sum())
            macs = steps * 3 * h * (int(x.shape[2]) + h)
            gru_steps += steps
            float_macs += macs
            nodes.append({"op": op, "x": list(x.shape), "w": list(w.shape), "hidden": h,
                          "steps": steps, "macs": macs})  # fmt: skip
        elif op == "Gather":
            data, y = val[node.input[0]], val[node.output[0]]
            if data.dtype.kind == "f" and data.ndim == 2:
                n = int(np.prod(y.shape, dtype=np.int64))
                gathered += n
                nodes.append({"op": op, "table": list(data.shape), "out": list(y.shape),
                              "values": n})  # fmt: skip
    return {"float_macs": float_macs, "int_macs": int_macs, "gathered_values": gathered,
            "gru_steps": gru_steps, "nodes": nodes}  # fmt: skip


# --- timing -------------------------------------------------------------------------------


class GraphTimer:
    """Wraps ``LoadedModel.run`` of one model: per-call seconds by graph, and (optionally) the
    first feeds of every graph."""

    def __init__(self, model: LoadedModel, capture: bool = False) -> None:
        self.model, self.capture = model, capture
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.feeds: dict[str, dict[str, np.ndarray]] = {}

    def __enter__(self) -> GraphTimer:
        orig = type(self.model).run.__get__(self.model)

        def run(graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            if self.capture and graph not in self.feeds:
                self.feeds[graph] = {k: np.array(v, copy=True) for k, v in feeds.items()}
            t0 = time.perf_counter()
            out = orig(graph, feeds)
            self.calls[graph].append(time.perf_counter() - t0)
            return out

        self.model.run = run  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model.run


@dataclass
class Workload:
    """Requests of one session: a fixed user and ``C`` real item ids of the bundle's item
    table per request (seeded draw), ranked by ``bundle``; :meth:`state` gives the session's
    cached state of a full window."""

    bundle: Bundle
    cands: np.ndarray  # (n, C)
    user: np.ndarray  # (1,)
    ts: np.ndarray  # (1,)
    k: int

    @classmethod
    def draw(cls, bundle: Bundle, n: int, c: int, k: int, seed: int) -> Workload:
        ids = bundle.tables.item_ids
        if len(ids) < c:
            raise SystemExit(f"the bundle's item table has {len(ids)} items, fewer than C={c}")
        rng = np.random.default_rng(seed)
        cands = np.stack([rng.choice(ids, c, replace=False) for _ in range(n)])
        users = bundle.tables.user_ids
        user = np.array([users[rng.integers(len(users))] if len(users) else 1], np.int64)
        return cls(bundle, cands, user, np.array([TIMESTAMP_MS], np.int64), k)

    def state(self, model: LoadedModel) -> SessionState:
        """A session state whose window is full (requests run until it is, and one more)."""
        st = SessionState.new(model, self.bundle.spec.recent_window)
        for i in range(-(-model.memory // self.k) + 1):
            st = self.serve(model, st, i)
        return st

    def serve(self, model: LoadedModel, st: SessionState, i: int) -> SessionState:
        cand = self.cands[i % len(self.cands)][None]
        return build_lists(self.bundle, model, [st], self.user, self.ts, cand, self.k).states[0]


def _stats(ms: np.ndarray) -> dict[str, float]:
    return {
        "median_ms": round(float(np.median(ms)), 4),
        "p10_ms": round(float(np.percentile(ms, 10)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "min_ms": round(float(ms.min()), 4),
    }


def time_lists(model: LoadedModel, work: Workload, st: SessionState, n: int, warm: int,
               offset: int = 0) -> np.ndarray:  # fmt: skip
    """Milliseconds of ``n`` list builds from the cached state ``st`` after ``warm`` untimed."""
    for i in range(warm):
        work.serve(model, st, offset + i)
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        work.serve(model, st, offset + warm + i)
        out[i] = time.perf_counter() - t0
    return out * 1e3


#: The numpy steps of :func:`runtime.lists.build_lists` timed apart in the split: (owner,
#: attribute, label). Whatever else the remainder holds is the loop's own glue (masking,
#: argmax, the placed impression's ids, the new session states).
_PY_PARTS = (
    (runtime.lists, "_check_candidates", "check_candidates"),
    (runtime.bundle.SideTables, "users", "user_table"),
    (runtime.lists, "group_ids", "context_fields"),
    (runtime.bundle.SideTables, "items", "item_table"),
    (ListFieldEncoder, "request_ids", "request_list_fields"),
    (ListFieldEncoder, "slot_ids", "slot_list_fields"),
    (ListFieldEncoder, "merge", "placed_list_fields"),
)


class PythonTimer:
    """Wraps the functions of :data:`_PY_PARTS` with timers (restored on exit)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = defaultdict(list)
        self._saved: list[tuple[object, str, object]] = []

    def __enter__(self) -> PythonTimer:
        for owner, attr, label in _PY_PARTS:
            orig = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            self._saved.append((owner, attr, orig))
            fn = orig

            def timed(*a: Any, _fn: Any = fn, _label: str = label, **kw: Any) -> Any:
                t0 = time.perf_counter()
                out = _fn(*a, **kw)
                self.calls[_label].append(time.perf_counter() - t0)
                return out

            setattr(owner, attr, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, attr, orig in reversed(self._saved):
            setattr(owner, attr, orig)
        self._saved.clear()


def split_samples(model: LoadedModel, work: Workload, st: SessionState, n: int,
                  offset: int = 0) -> dict[str, Any]:  # fmt: skip
    """Seconds per request in each graph (sum of its calls), in each numpy step of the builder
    (:data:`_PY_PARTS`) and in total, with every graph call's seconds; raw, for
    :func:`split_summary`."""
    total = np.empty(n)
    per_graph: dict[str, np.ndarray] = {g: np.empty(n) for g in model.sessions}
    per_py: dict[str, np.ndarray] = {lb: np.empty(n) for _, _, lb in _PY_PARTS}
    calls: dict[str, list[float]] = defaultdict(list)
    with GraphTimer(model) as gt, PythonTimer() as pt:
        for i in range(n):
            gt.calls.clear()
            pt.calls.clear()
            t0 = time.perf_counter()
            work.serve(model, st, offset + i)
            total[i] = time.perf_counter() - t0
            for g in per_graph:
                per_graph[g][i] = sum(gt.calls.get(g, []))
                calls[g].extend(gt.calls.get(g, []))
            for lb in per_py:
                per_py[lb][i] = sum(pt.calls.get(lb, []))
    return {"total": total, "graphs": per_graph, "python": per_py, "calls": calls}


def split_summary(raws: list[dict[str, Any]]) -> dict[str, Any]:
    """Milliseconds per request by graph and by numpy step, and the rest (medians)."""
    total = np.concatenate([r["total"] for r in raws]) * 1e3
    n = len(total)
    per_graph = {g: np.concatenate([r["graphs"][g] for r in raws]) * 1e3 for g in raws[0]["graphs"]}
    per_py = {lb: np.concatenate([r["python"][lb] for r in raws]) * 1e3 for lb in raws[0]["python"]}
    calls = {g: np.concatenate([r["calls"][g] for r in raws]) for g in per_graph}
    graphs_ms = sum(per_graph.values())
    rest = total - graphs_ms
    py_ms = sum(per_py.values())
    return {
        "total": _stats(total),
        "graphs": {
            g: {
                "calls_per_request": len(calls[g]) // n,
                "median_ms_per_request": round(float(np.median(v)), 4),
                "mean_ms_per_request": round(float(v.mean()), 4),
                "median_us_per_call": round(float(np.median(calls[g]) * 1e6), 2),
            }
            for g, v in per_graph.items()
        },
        "all_graphs_median_ms": round(float(np.median(graphs_ms)), 4),
        "python_numpy_median_ms": round(float(np.median(rest)), 4),
        "python_numpy_mean_ms": round(float(rest.mean()), 4),
        "python_numpy_parts_median_ms": {
            **{lb: round(float(np.median(v)), 4) for lb, v in per_py.items()},
            "loop_glue": round(float(np.median(rest - py_ms)), 4),
        },
    }


def _micro_model(n_nodes: int) -> bytes:
    """``n_nodes`` Adds in a chain on a (1, 64) float input (0 nodes: an Identity)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    nodes, inits, cur = [], [], "x"
    for i in range(n_nodes):
        inits.append(numpy_helper.from_array(np.full(64, i + 1, np.float32), f"c{i}"))
        out = "y" if i == n_nodes - 1 else f"h{i}"
        nodes.append(helper.make_node("Add", [cur, f"c{i}"], [out]))
        cur = out
    if not n_nodes:
        nodes.append(helper.make_node("Identity", ["x"], ["y"]))
    g = helper.make_graph(nodes, "micro", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _time_call(fn: Callable[[], object], n: int) -> float:
    """Median microseconds of ``fn()`` over ``n`` calls (after ``n // 10`` untimed)."""
    for _ in range(max(1, n // 10)):
        fn()
    ts = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        ts[i] = time.perf_counter() - t0
    return float(np.median(ts) * 1e6)


def call_overheads(n: int = 2000, chain: int = 64) -> dict[str, float]:
    """Fixed cost of an onnxruntime call (an Identity graph) and of one node (a chain of
    ``chain`` Adds on 64 floats, minus one Add), with the runtime's session options."""
    so = session_options(1, "all")
    x = {"x": np.ones((1, 64), np.float32)}
    sess = {m: ort.InferenceSession(_micro_model(m), so, providers=["CPUExecutionProvider"])
            for m in (0, 1, chain)}  # fmt: skip
    t = {m: _time_call(partial(s.run, None, x), n) for m, s in sess.items()}
    return {
        "empty_call_us": round(t[0], 2),
        "one_node_call_us": round(t[1], 2),
        "per_node_us": round((t[chain] - t[1]) / (chain - 1), 3),
        "chain_nodes": chain,
    }


def optimized_nodes(bundle: Bundle, model: LoadedModel) -> dict[str, dict[str, Any]]:
    """Node count (and op types) of every graph as exported and after each optimisation level
    (``SessionOptions.optimized_model_filepath``)."""
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for g, gs in model.spec.graphs.items():
            src = bundle.path / gs.file
            exported = onnx.load(str(src), load_external_data=False)
            row: dict[str, Any] = {"exported": len(exported.graph.node)}
            for level in LEVELS:
                so = session_options(1, level)
                so.optimized_model_filepath = str(Path(tmp) / f"{g}.{level}.onnx")
                ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
                opt = onnx.load(so.optimized_model_filepath, load_external_data=False)
                row[level] = len(opt.graph.node)
                if level == "all":
                    row["ops_all"] = dict(Counter(n.op_type for n in opt.graph.node).most_common())
            out[g] = row
    return out


def gemm_rates(shapes: list[tuple[int, int, int]], seconds: float = 0.3) -> dict[str, Any]:
    """Single-thread numpy float32 GEMM rate (GFLOP/s, 2 flops a multiply-add) per (M, K, N)."""
    rng = np.random.default_rng(0)
    out = {}
    with threadpool_limits(limits=1):
        for m, k, n in shapes:
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((k, n), dtype=np.float32)
            c = np.empty((m, n), np.float32)
            reps, elapsed = 1, 0.0
            np.matmul(a, b, out=c)
            while True:  # grow the batch of products until it takes ``seconds``
                t0 = time.perf_counter()
                for _ in range(reps):
                    np.matmul(a, b, out=c)
                elapsed = time.perf_counter() - t0
                if elapsed >= seconds:
                    break
                reps *= 2
            best = elapsed / reps
            for _ in range(2):  # best of three batches
                t0 = time.perf_counter()
                for _ in range(reps):
                    np.matmul(a, b, out=c)
                best = min(best, (time.perf_counter() - t0) / reps)
            out[f"{m}x{k}x{n}"] = round(2 * m * k * n / best / 1e9, 3)
    return out


def session_sweep(path: Path, name: str, work: Workload, n: int, warm: int,
                  rounds: int) -> dict[str, Any]:  # fmt: skip
    """The student's list time for intra-op threads 1 and 2 and each optimisation level.

    Every configuration is loaded once (its own bundle), then timed in ``rounds`` rounds of
    ``n / rounds`` requests, the configurations' order rotated each round so a drift of the
    machine's load is shared out; statistics over all rounds."""
    configs = [(t, lv) for t in (1, 2) for lv in LEVELS]
    loaded = {}
    for t, lv in configs:
        b = load_bundle(path, models=[name], threads=t, optimization=lv)
        w = replace(work, bundle=b)
        loaded[(t, lv)] = (b.model(name), w, w.state(b.model(name)))
    rounds = max(1, min(rounds, n))
    per_round = -(-n // rounds)
    samples: dict[tuple[int, str], list[np.ndarray]] = {c: [] for c in configs}
    for r in range(rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for cfg in order:
            m, w, st = loaded[cfg]
            samples[cfg].append(
                time_lists(m, w, st, per_round, warm if r == 0 else 2, r * per_round)
            )
    rows = []
    for (t, lv), s in samples.items():
        rows.append({"threads": t, "optimization": lv, **_stats(np.concatenate(s))})
    return {"model": name, "requests": rounds * per_round, "rounds": rounds, "rows": rows}


# --- report ------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = [
        {k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
        for i in threadpool_info()
    ]
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "blas": blas,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default="models/default")
    ap.add_argument("--models", nargs="*", default=None, help="default: every model")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--requests", type=int, default=300, help="timed requests per model")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument(
        "--rounds", type=int, default=30, help="timing rounds, the models' order rotated each round"
    )
    ap.add_argument(
        "--sweep-requests",
        type=int,
        default=100,
        help="requests per session-option configuration (0: skip the sweep)",
    )
    ap.add_argument("--sweep-model", default="drl_student")
    ap.add_argument("--rss-repeats", type=int, default=5, help="0: skip resident memory")
    ap.add_argument("--goal-ms", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench/bundle_cost.json")
    args = ap.parse_args()
    load_before = list(os.getloadavg())
    t_start = time.perf_counter()
    path = Path(args.bundle)
    bundle = load_bundle(path, models=args.models, threads=1)
    names = list(bundle.models)
    c, k = args.candidates, args.k
    print(f"bundle {bundle.version} ({path}): models {names}; list of {k} from {c}, "
          f"{args.requests} requests; load average {load_before}")  # fmt: skip

    work = Workload.draw(bundle, args.requests + args.warmup + 1, c, k, args.seed)
    res: dict[str, Any] = {
        "bundle": str(path),
        "bundle_version": bundle.version,
        "candidates": c,
        "k": k,
        "requests": args.requests,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "seed": args.seed,
        "code_version": code_version(),
        "machine": machine_facts(),
        "threads": 1,
        "optimization": "all",
        "load_average_before": load_before,
        "flops_method": "graphs: MatMul/Gemm/GRU node shapes as onnxruntime executes them on the "
        "benchmark request (B=1, C candidates, full window), exposed as outputs of an "
        "unoptimised session; per request request + k*score (+ k*step for q_network); GRU "
        "counts valid steps; integer index MatMuls and float gathers counted apart",
        "paper": PAPER,
        "goal_ms": args.goal_ms,
    }

    rates = gemm_rates([(c, 48, 64), (c, 64, 32), (c, 32, 16), (c, 128, 64), (512, 512, 512)])
    small_key = f"{c}x64x32"
    res["gemm_gflops_1thread"] = rates
    res["gemm_small_shape"], res["gemm_large_shape"] = small_key, "512x512x512"
    overhead = call_overheads()
    res["onnxruntime_overhead"] = overhead

    models: dict[str, Any] = {}
    prepared = {}
    for name in names:
        m = bundle.model(name)
        st = work.state(m)
        with GraphTimer(m, capture=True) as gt:  # the feeds each graph gets in a request
            work.serve(m, st, 0)
        per_graph = {g: graph_macs(path / m.spec.graphs[g].file, f) for g, f in gt.feeds.items()}
        k_eff = min(k, c)
        mult = {"request": 1, "score": k_eff, "step": k_eff}
        executed = sum(mult[g] * v["float_macs"] for g, v in per_graph.items())
        manifest_macs = m.spec.flops_per_request or None
        prepared[name] = (m, st)
        models[name] = {
            "kind": m.spec.kind,
            "model_version": m.spec.model_version,
            "dims": m.spec.dims,
            "params": m.spec.params,
            "bytes": m.spec.bytes,
            "macs_manifest": manifest_macs,
            "macs_executed": int(executed),
            "macs_executed_by_graph": {
                g: {**{kk: vv for kk, vv in v.items() if kk != "nodes"}, "calls": mult[g]}
                for g, v in per_graph.items()
            },
            "graph_nodes_counted": {g: v["nodes"] for g, v in per_graph.items()},
            "floor_ms_small_gemm": round(2 * executed / (rates[small_key] * 1e9) * 1e3, 4),
            "floor_ms_large_gemm": round(2 * executed / (rates["512x512x512"] * 1e9) * 1e3, 4),
            "floor_ms_manifest_small_gemm": round(
                2 * manifest_macs / (rates[small_key] * 1e9) * 1e3, 4
            )
            if manifest_macs
            else None,
            "window_filled": int(st.mask.sum()) if m.stateful else None,
            "nodes": optimized_nodes(bundle, m),
        }
        by_graph = ", ".join(f"{g} {mult[g]} x {v['float_macs']:,}" for g, v in per_graph.items())
        print(f"  {name:20s} MACs executed {executed:,} ({by_graph})")

    # Timing in rounds, the models' order rotated each round, so a change of the machine's
    # load while the benchmark runs falls on every model alike.
    rounds = max(1, min(args.rounds, args.requests))
    per_round = -(-args.requests // rounds)
    times: dict[str, list[np.ndarray]] = {n: [] for n in names}
    splits: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            m, st = prepared[name]
            warm = args.warmup if r == 0 else 2
            off = r * per_round
            times[name].append(time_lists(m, work, st, per_round, warm, off))
            splits[name].append(split_samples(m, work, st, per_round, off))
    for name in names:
        models[name]["time"] = _stats(np.concatenate(times[name]))
        models[name]["split"] = split_summary(splits[name])
        t = models[name]["time"]
        print(f"  {name:20s} median {t['median_ms']:.3f} ms  p90 {t['p90_ms']:.3f}  "
              f"mean {t['mean_ms']:.3f}")  # fmt: skip
    res["models"] = models

    if args.rss_repeats > 0:
        print(f"resident memory: {args.rss_repeats} x {len(names) + 2} subprocesses ...")
        res["resident"] = resident_memory(path, names, args.rss_repeats, c, k)
        for name in names:
            models[name]["resident"] = res["resident"]["models"][name]
    if args.sweep_requests > 0 and args.sweep_model in names:
        print(f"session options sweep ({args.sweep_model}) ...")
        res["session_sweep"] = session_sweep(path, args.sweep_model, work, args.sweep_requests,
                                             min(args.warmup, 10), args.rounds)  # fmt: skip

    # --- tables
    print()
    print(f"{'model':20s} {'params':>10s} {'disk MB':>8s} {'RSS MB':>7s} {'own MB':>7s} "
          f"{'MACs manif.':>12s} {'MACs exec.':>11s} {'floor ms':>9s} {'median':>7s} "
          f"{'p90':>7s} {'mean':>7s} {'min':>7s}")  # fmt: skip
    for name, r in models.items():
        rr = r.get("resident", {})
        rss, own = _fmt(rr.get("vs_nothing_mb"), ".1f"), _fmt(rr.get("own_mb"), ".1f")
        print(f"{name:20s} {r['params']:>10,} {r['bytes'] / 2**20:>8.2f} {rss:>7s} {own:>7s} "
              f"{_fmt(r['macs_manifest'], ',') if r['macs_manifest'] else 'n/a':>12s} "
              f"{r['macs_executed']:>11,} {r['floor_ms_small_gemm']:>9.4f} "
              f"{r['time']['median_ms']:>7.3f} {r['time']['p90_ms']:>7.3f} "
              f"{r['time']['mean_ms']:>7.3f} {r['time']['min_ms']:>7.3f}")  # fmt: skip
    print(
        f"(floor: executed MACs at the single-thread GEMM rate of {small_key}, "
        f"{rates[small_key]:.1f} GFLOP/s; 512^3: {rates['512x512x512']:.1f} GFLOP/s)"
    )
    if "resident" in res:
        rs = res["resident"]
        print(f"(RSS: resident MB vs a process that loads nothing; own: less the bundle without "
              f"models, {rs['tables_mb']:.1f} MB, and onnxruntime's start, "
              f"{rs['onnxruntime_start_mb']:.1f} MB)")  # fmt: skip
    print()
    print("split per request (median ms): graph [calls] ... python/numpy")
    for name, r in models.items():
        sp = r["split"]
        parts = "  ".join(f"{g} [{v['calls_per_request']}] {v['median_ms_per_request']:.3f} "
                          f"({v['median_us_per_call']:.0f} us/call)"
                          for g, v in sp["graphs"].items())  # fmt: skip
        print(f"  {name:20s} {parts}  python/numpy {sp['python_numpy_median_ms']:.3f}  "
              f"(total {sp['total']['median_ms']:.3f})")  # fmt: skip
    print(
        f"onnxruntime: empty call {overhead['empty_call_us']:.1f} us, one-node call "
        f"{overhead['one_node_call_us']:.1f} us, per extra node {overhead['per_node_us']:.2f} us"
    )
    print("nodes per graph (exported -> disable/basic/extended/all):")
    for name, r in models.items():
        print("  " + name + ": " + "; ".join(
            f"{g} {v['exported']} -> {'/'.join(str(v[lv]) for lv in LEVELS)}"
            for g, v in r["nodes"].items()))  # fmt: skip

    if "drl_student" in models and "drl_teacher" in models:
        s, t = models["drl_student"], models["drl_teacher"]
        sr, tr = s.get("resident", {}), t.get("resident", {})
        ratios = {
            "params": _ratio(s["params"], t["params"]),
            "bytes": _ratio(s["bytes"], t["bytes"]),
            "resident_own": _ratio(sr.get("own_mb"), tr.get("own_mb")),
            "resident_sessions": _ratio(sr.get("sessions_mb"), tr.get("sessions_mb")),
            "resident_vs_nothing": _ratio(sr.get("vs_nothing_mb"), tr.get("vs_nothing_mb")),
            "macs_manifest": _ratio(s["macs_manifest"], t["macs_manifest"]),
            "macs_executed": _ratio(s["macs_executed"], t["macs_executed"]),
            "time_median": _ratio(s["time"]["median_ms"], t["time"]["median_ms"]),
            "time_p10": _ratio(s["time"]["p10_ms"], t["time"]["p10_ms"]),
        }
        res["student_over_teacher"] = ratios
        print()
        print("student / teacher: " + ", ".join(f"{k_} {_fmt(v, '.3f')}"
                                                for k_, v in ratios.items()))  # fmt: skip
        print(f"paper (DRL-Rec): memory {PAPER['memory']:.3f}, computation "
              f"{PAPER['computation']:.3f}")  # fmt: skip

    if "drl_student" in models:
        s = models["drl_student"]
        med = s["time"]["median_ms"]
        reached = med <= args.goal_ms
        sp = s["split"]
        calls = sum(v["calls_per_request"] for v in sp["graphs"].values())
        nodes_all = {g: v["all"] for g, v in s["nodes"].items()}
        node_calls = sum(nodes_all[g] * v["calls_per_request"] for g, v in sp["graphs"].items())
        goal = {
            "goal_ms": args.goal_ms,
            "student_median_ms": med,
            "reached": reached,
            "graph_calls_per_request": calls,
            "empty_call_overhead_ms": round(calls * overhead["empty_call_us"] / 1e3, 4),
            "node_executions_per_request": node_calls,
            "node_dispatch_estimate_ms": round(node_calls * overhead["per_node_us"] / 1e3, 4),
            "floor_ms_small_gemm": s["floor_ms_small_gemm"],
            "python_numpy_ms": sp["python_numpy_median_ms"],
        }
        res["goal"] = goal
        print()
        if reached:
            print(f"goal: student median {med:.3f} ms <= {args.goal_ms} ms per list of {k} "
                  f"from {c} on one core: REACHED")  # fmt: skip
        else:
            print(
                f"goal: student median {med:.3f} ms > {args.goal_ms} ms per list of {k} "
                f"from {c} on one core: NOT reached. Where the time goes (median ms):"
            )
            for g, v in sp["graphs"].items():
                print(f"  {g:8s} {v['calls_per_request']:>3d} calls x "
                      f"{v['median_us_per_call']:7.1f} us = {v['median_ms_per_request']:.3f} ms "
                      f"({nodes_all[g]} nodes after optimisation)")  # fmt: skip
            parts = ", ".join(f"{lb} {v:.3f}" for lb, v in
                              sp["python_numpy_parts_median_ms"].items())  # fmt: skip
            print(f"  python/numpy remainder {sp['python_numpy_median_ms']:.3f} ms: {parts}")
            print(f"  of the graph time: {calls} calls x {overhead['empty_call_us']:.1f} us "
                  f"empty-call overhead = {goal['empty_call_overhead_ms']:.3f} ms; "
                  f"{node_calls} node executions x {overhead['per_node_us']:.2f} us = "
                  f"{goal['node_dispatch_estimate_ms']:.3f} ms; arithmetic floor "
                  f"{s['floor_ms_small_gemm']:.3f} ms")  # fmt: skip

    if "session_sweep" in res:
        sw = res["session_sweep"]
        print()
        nodes = models[sw["model"]]["nodes"]
        calls = {
            g: v["calls_per_request"] for g, v in models[sw["model"]]["split"]["graphs"].items()
        }
        for r in sw["rows"]:
            r["node_executions_per_request"] = sum(
                nodes[g][r["optimization"]] * n for g, n in calls.items()
            )
        print(f"session options ({sw['model']}, {sw['requests']} requests each, ms per list; "
              f"nodes: node executions per list):")  # fmt: skip
        print(f"  {'threads':>7s} {'optimization':>12s} {'median':>7s} {'p10':>7s} {'p90':>7s} "
              f"{'mean':>7s} {'nodes':>6s}")  # fmt: skip
        for r in sw["rows"]:
            print(f"  {r['threads']:>7d} {r['optimization']:>12s} {r['median_ms']:>7.3f} "
                  f"{r['p10_ms']:>7.3f} {r['p90_ms']:>7.3f} {r['mean_ms']:>7.3f} "
                  f"{r['node_executions_per_request']:>6d}")  # fmt: skip
        default = next(r for r in sw["rows"] if r["threads"] == 1 and r["optimization"] == "all")
        for stat in ("median_ms", "p10_ms"):
            best = min(sw["rows"], key=itemgetter(stat))
            sw[f"best_by_{stat}"] = {
                "threads": best["threads"],
                "optimization": best["optimization"],
                "default_over_best": round(default[stat] / best[stat], 4),
            }
            print(f"  fastest by {stat[:-3]}: threads {best['threads']}, {best['optimization']}; "
                  f"the default (1, all) is {default[stat] / best[stat]:.3f}x it")  # fmt: skip
        print(
            "  (levels with the same node executions run the same graphs: their differences "
            "are the machine's noise)"
        )

    res["load_average_after"] = list(os.getloadavg())
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    print(f"\nload average before {load_before}, after {res['load_average_after']}; "
          f"{res['seconds']} s")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
