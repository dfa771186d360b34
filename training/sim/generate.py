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

from contract.schema import FEEDBACK_BINARY, LOG_SCHEMA, log_table
from training.data.pipeline import DatasetBuilder
from training.sim.config import WorldConfig
from training.sim.env import REQUEST_GAP_MS, Env, Feedback, Observation
from training.sim.logging_policy import LoggingPolicy
from training.sim.world import build_world

LOGGING_ARM = "logging"
LOGGING_VERSION = "sim-logging-v1"


def request_columns(
    obs: Observation, slate: np.ndarray, propensity: np.ndarray, fb: Feedback
) -> dict[str, np.ndarray]:
    """One step's log at the granularity it has: per request ``(B,)``, per shown slot
    ``(B, K)``, and the candidates' item ids ``(B, C)`` (slots 0..K-1 first, then the rest in
    matching order). :func:`columns_table` expands them to rows."""
    b, c = obs.candidates.shape
    k = slate.shape[1]
    shown = np.zeros((b, c), dtype=bool)
    shown[np.arange(b)[:, None], slate] = True
    rest = np.nonzero(~shown)[1].reshape(b, c - k)
    order = np.concatenate([slate, rest], axis=1)
    cols = {
        "request_id": obs.request_id,
        "session_id": obs.session_id,
        "user_id": obs.user_id,
        "timestamp": obs.timestamp,
        "request_index": obs.request_index.astype(np.int32),
        "item_id": np.take_along_axis(obs.candidate_ids, order, axis=1),
        "propensity": propensity.astype(np.float64),
        "watch_time": fb.watch_time.astype(np.float32),
    }
    for name in FEEDBACK_BINARY:
        cols[name] = getattr(fb, name).astype(np.int8)
    return cols


def columns_table(
    cols: dict[str, np.ndarray], arm: str = LOGGING_ARM, model_version: str = LOGGING_VERSION
) -> pa.Table:
    """An impression-log table (one row per candidate) from :func:`request_columns` arrays:
    ``contract.schema.log_table``, the row builder every writer shares."""
    return log_table(cols, arm, model_version)


def request_rows(
    obs: Observation,
    slate: np.ndarray,
    propensity: np.ndarray,
    fb: Feedback,
    arm: str = LOGGING_ARM,
    model_version: str = LOGGING_VERSION,
) -> pa.Table:
    """Log rows ``(B * C)`` for one step: shown items by position, then non-impressions."""
    return columns_table(request_columns(obs, slate, propensity, fb), arm, model_version)


def simulate_day(env: Env, policy: LoggingPolicy, day: int, k: int) -> tuple[pa.Table, int]:
    """All sessions of one day under the logging policy; sessions whole and in time order."""
    steps: list[dict[str, np.ndarray]] = []
    n_imp = 0
    obs = env.begin_day(day)
    while obs is not None:
        slate, prop = policy.sample(obs, k)
        fb = env.step(slate)
        steps.append(request_columns(obs, slate, prop, fb))
        n_imp += slate.size
        obs = env.observe()
    if not steps:
        return LOG_SCHEMA.empty_table(), 0
    cols = {name: np.concatenate([st[name] for st in steps]) for name in steps[0]}
    # Sort requests by session start, session and request index: sessions whole, in time order.
    ri = cols["request_index"].astype(np.int64)
    start = cols["timestamp"] - ri * REQUEST_GAP_MS
    order = np.lexsort((ri, cols["session_id"], start))
    return columns_table({name: v[order] for name, v in cols.items()}), n_imp


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
                # each row's propensity: its item at its slot given the earlier slots (exact)
                "propensity": "conditional",
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
