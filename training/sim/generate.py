"""Logging the world: the logging policy serves every request, every candidate is a row.

``generate_dataset`` runs the simulated days in order and writes a dataset folder
(:mod:`training.data.pipeline`). Each day's rows are sorted by (session, request, position)
before writing, shown items first by position, then the non-impressions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from contract.schema import FEEDBACK_BINARY, LOG_SCHEMA
from training.data.pipeline import DatasetBuilder
from training.sim.config import WorldConfig
from training.sim.env import REQUEST_GAP_MS, Env, Feedback, Observation
from training.sim.logging_policy import LoggingPolicy
from training.sim.world import build_world

LOGGING_ARM = "logging"
LOGGING_VERSION = "sim-logging-v1"


def repeated_string(value: str, n: int) -> pa.Array:
    """A string array of ``n`` copies of ``value``, built from buffers (no Python strings)."""
    raw = value.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * len(raw)
    data = np.frombuffer(raw * n, dtype=np.uint8) if n and raw else np.zeros(0, np.uint8)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def request_rows(
    obs: Observation,
    slate: np.ndarray,
    propensity: np.ndarray,
    fb: Feedback,
    arm: str = LOGGING_ARM,
    model_version: str = LOGGING_VERSION,
) -> pa.Table:
    """Log rows ``(B * C)`` for one step: shown items by position, then non-impressions."""
    b, c = obs.candidates.shape
    k = slate.shape[1]
    rows = np.arange(b)[:, None]
    shown = np.zeros((b, c), dtype=bool)
    shown[rows, slate] = True
    # Column order within a request: slots 0..K-1, then the rest in matching order.
    rest = np.nonzero(~shown)[1].reshape(b, c - k)
    order = np.concatenate([slate, rest], axis=1)
    n = b * c
    pos = np.full((b, c), -1, dtype=np.int16)
    pos[:, :k] = np.arange(k, dtype=np.int16)
    mask = np.ones((b, c), dtype=bool)
    mask[:, :k] = False
    mask = mask.ravel()

    def per_request(x: np.ndarray) -> np.ndarray:
        return np.repeat(x, c)

    def shown_only(x: np.ndarray, dtype) -> pa.Array:
        v = np.zeros((b, c), dtype=dtype)
        v[:, :k] = x
        return pa.array(v.ravel(), mask=mask)

    cols: dict[str, pa.Array] = {
        "request_id": pa.array(per_request(obs.request_id)),
        "session_id": pa.array(per_request(obs.session_id)),
        "user_id": pa.array(per_request(obs.user_id)),
        "timestamp": pa.array(per_request(obs.timestamp)),
        "request_index": pa.array(per_request(obs.request_index).astype(np.int32)),
        "position": pa.array(pos.ravel()),
        "item_id": pa.array(np.take_along_axis(obs.candidate_ids, order, axis=1).ravel()),
        "arm": repeated_string(arm, n),
        "model_version": repeated_string(model_version, n),
        "propensity": shown_only(propensity, np.float64),
    }
    for name in FEEDBACK_BINARY:
        cols[name] = shown_only(getattr(fb, name), np.int8)
    cols["watch_time"] = shown_only(fb.watch_time, np.float32)
    return pa.table(cols, schema=LOG_SCHEMA)


def simulate_day(env: Env, policy: LoggingPolicy, day: int, k: int) -> tuple[pa.Table, int]:
    """All sessions of one day under the logging policy; rows sorted by session."""
    tables = []
    n_imp = 0
    obs = env.begin_day(day)
    while obs is not None:
        slate, prop = policy.sample(obs, k)
        fb = env.step(slate)
        tables.append(request_rows(obs, slate, prop, fb))
        n_imp += slate.size
        obs = env.observe()
    if not tables:
        return LOG_SCHEMA.empty_table(), 0
    day_table = pa.concat_tables(tables)
    # Within one step rows are already (request, position)-ordered; a stable sort by session
    # start time, session and request index puts sessions in time order, each one whole.
    req_index = day_table.column("request_index").to_numpy()
    start = day_table.column("timestamp").to_numpy() - req_index.astype(np.int64) * REQUEST_GAP_MS
    idx = np.lexsort((req_index, day_table.column("session_id").to_numpy(), start))
    return day_table.take(pa.array(idx)), n_imp


def generate_dataset(
    cfg: WorldConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    shard_rows: int = 2_000_000,
    valid_days: int = 1,
    test_days: int = 1,
    progress: bool = True,
    preset_name: str | None = None,
) -> dict[str, Any]:
    """Simulate ``cfg.n_days`` days of logged traffic into the dataset folder ``out``."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    world = build_world(cfg)
    env = Env(world)
    policy = LoggingPolicy(world)
    with DatasetBuilder(out, overwrite=overwrite, shard_rows=shard_rows) as builder:
        builder.write_side_tables(world.users_table(), world.items_table())
        n_imp = 0
        bar = tqdm(range(cfg.n_days), desc="simulate", unit="day", disable=not progress)
        for day in bar:
            table, imps = simulate_day(env, policy, day, cfg.list_size)
            n_imp += imps
            if table.num_rows:
                # Cut shards at session boundaries: write each day in session-aligned slices.
                for piece in _session_slices(table, shard_rows):
                    builder.writer.write(piece, day)  # type: ignore[union-attr]
            builder.writer.flush()  # type: ignore[union-attr]
            bar.set_postfix(impressions=f"{n_imp:,}")
        meta = builder.finish(
            {
                "source": "simulator",
                "preset": preset_name,
                "world": cfg.to_dict(),
                "seed": cfg.seed,
                "list_size": cfg.list_size,
                "n_candidates": cfg.n_candidates,
                "logging_policy": {
                    "arm": LOGGING_ARM,
                    "model_version": LOGGING_VERSION,
                    "temperature": policy.temperature,
                    "epsilon": policy.epsilon,
                },
                "seconds": round(time.perf_counter() - t0, 2),
            },
            valid_days=valid_days,
            test_days=test_days,
        )
    return meta


def _session_slices(table: pa.Table, rows: int) -> list[pa.Table]:
    sid = table.column("session_id").to_numpy()
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    out, lo = [], 0
    while lo < table.num_rows:
        hi_target = lo + rows
        j = np.searchsorted(starts, hi_target)
        hi = int(starts[j]) if j < len(starts) else table.num_rows
        hi = max(hi, lo + 1)
        out.append(table.slice(lo, hi - lo))
        lo = hi
    return out
