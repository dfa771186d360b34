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
    pos = np.full((b, c), -1, dtype=np.int16)
    pos[rows, slate] = np.arange(k, dtype=np.int16)[None, :]
    # Column order within a request: slots 0..K-1, then candidates in matching order.
    sort_key = np.where(pos >= 0, pos, k + np.arange(c)[None, :])
    order = np.argsort(sort_key, axis=1, kind="stable")
    shown = np.zeros((b, c), dtype=bool)
    shown[:, :k] = True
    n = b * c

    def per_request(x: np.ndarray) -> np.ndarray:
        return np.repeat(x, c)

    items = np.take_along_axis(obs.candidate_ids, order, axis=1).ravel()
    prop = np.zeros((b, c))
    prop[:, :k] = propensity
    cols: dict[str, pa.Array] = {
        "request_id": pa.array(per_request(obs.request_id)),
        "session_id": pa.array(per_request(obs.session_id)),
        "user_id": pa.array(per_request(obs.user_id)),
        "timestamp": pa.array(per_request(obs.timestamp)),
        "request_index": pa.array(per_request(obs.request_index).astype(np.int32)),
        "position": pa.array(np.take_along_axis(pos, order, axis=1).ravel()),
        "item_id": pa.array(items),
        "arm": pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int8), [arm]).cast(pa.string()),
        "model_version": pa.DictionaryArray.from_arrays(
            np.zeros(n, dtype=np.int8), [model_version]
        ).cast(pa.string()),
    }
    mask = ~shown.ravel()
    cols["propensity"] = pa.array(prop.ravel(), mask=mask)
    for name in FEEDBACK_BINARY:
        v = np.zeros((b, c), dtype=np.int8)
        v[:, :k] = getattr(fb, name)
        cols[name] = pa.array(v.ravel(), mask=mask)
    wt = np.zeros((b, c), dtype=np.float32)
    wt[:, :k] = fb.watch_time
    cols["watch_time"] = pa.array(wt.ravel(), mask=mask)
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
