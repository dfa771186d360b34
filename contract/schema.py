"""The impression log schema and its validator.

One row per candidate of a request (DESIGN.md, "Contracts"). ``position`` is the 0-based slot
an item was shown at, or -1 for a candidate that was matched but not shown (a
non-impression). ``propensity`` is the probability, under the serving policy, of choosing
this item at this position *given the items already placed in the earlier slots*; so the
probability of a whole list is the product of its rows' propensities (exact for sequential
samplers such as Plackett-Luce with uniform mixing). Feedback columns and the propensity
are null for non-impressions. ``timestamp`` is epoch milliseconds (UTC); ``watch_time`` is
in seconds.

The same columns are written by the simulator, the KuaiRand adapter and the service.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"

FEEDBACK_BINARY = ("click", "like", "follow", "comment", "hate", "long_view")
FEEDBACK = FEEDBACK_BINARY + ("watch_time",)

LOG_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.int64(), nullable=False),
        pa.field("session_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("request_index", pa.int32(), nullable=False),
        pa.field("position", pa.int16(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("propensity", pa.float64(), nullable=True),
        *[pa.field(name, pa.int8(), nullable=True) for name in FEEDBACK_BINARY],
        pa.field("watch_time", pa.float32(), nullable=True),
    ],
    metadata={"schema": "impression_log", "version": SCHEMA_VERSION},
)

USER_TABLE_SCHEMA = pa.schema(
    [pa.field("user_id", pa.int64(), nullable=False)]
    + [
        pa.field(n, pa.int64(), nullable=False)
        for n in ("u_active", "u_register", "u_follow", "u_fans", "u_friend", "u_seg_a", "u_seg_b")
    ]
)
ITEM_TABLE_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("author_raw", pa.int64(), nullable=False),
        pa.field("tag", pa.int64(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("upload_type", pa.int64(), nullable=False),
        pa.field("music_type", pa.int64(), nullable=False),
    ]
)


REQUEST_COLUMNS = ("request_id", "session_id", "user_id", "timestamp", "request_index")
SHOWN_COLUMNS = ("propensity", *FEEDBACK_BINARY, "watch_time")


def repeated_string(value: str, n: int) -> pa.Array:
    """A string array of ``n`` copies of ``value``, built from buffers (no Python strings)."""
    raw = value.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * len(raw)
    data = np.frombuffer(raw * n, dtype=np.uint8) if n and raw else np.zeros(0, np.uint8)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def log_table(cols: dict[str, np.ndarray], arm: str, model_version: str) -> pa.Table:
    """Impression-log rows of ``R`` requests with ``C`` candidates each: the one row builder
    of every writer (simulator, service).

    ``cols``: :data:`REQUEST_COLUMNS` ``(R,)``; ``item_id (R, C)`` with the ``K`` shown items
    first, in slot order, then the non-impressions; ``propensity (R, K)``; and the feedback
    columns ``(R, K)`` when known (a served list's feedback arrives later: omit them and they
    are null). Rows come out request by request, shown slots first; non-impressions get
    position -1 and null propensity and feedback.
    """
    r, c = cols["item_id"].shape
    k = cols["propensity"].shape[1]
    n = r * c
    null = np.ones((r, c), dtype=bool)
    null[:, :k] = False
    null = null.ravel()
    pos = np.full((r, c), -1, dtype=np.int16)
    pos[:, :k] = np.arange(k, dtype=np.int16)
    arrays: dict[str, pa.Array] = {
        name: pa.array(np.repeat(cols[name], c)) for name in REQUEST_COLUMNS
    }
    arrays["position"] = pa.array(pos.ravel())
    arrays["item_id"] = pa.array(cols["item_id"].ravel())
    arrays["arm"] = repeated_string(arm, n)
    arrays["model_version"] = repeated_string(model_version, n)
    for name in SHOWN_COLUMNS:
        typ = LOG_SCHEMA.field(name).type
        if name not in cols:
            arrays[name] = pa.nulls(n, typ)
            continue
        v = np.zeros((r, c), dtype=cols[name].dtype)
        v[:, :k] = cols[name]
        arrays[name] = pa.array(v.ravel(), mask=null, type=typ)
    return pa.table({f.name: arrays[f.name] for f in LOG_SCHEMA}, schema=LOG_SCHEMA)


class LogValidationError(ValueError):
    """A log file or table breaks the contract; the message names file, column and problem."""


def _fail(source: str, column: str, problem: str) -> LogValidationError:
    return LogValidationError(f"{source}: column {column!r}: {problem}")


def check_columns(table_schema: pa.Schema, expected: pa.Schema, source: str) -> None:
    """Raise if a column is missing or has another type than the contract's."""
    for field in expected:
        idx = table_schema.get_field_index(field.name)
        if idx < 0:
            raise _fail(source, field.name, "missing")
        got = table_schema.field(idx).type
        if got != field.type:
            raise _fail(source, field.name, f"type {got}, expected {field.type}")


def validate_log_table(table: pa.Table, source: str = "<table>") -> None:
    """Check a table against the impression-log contract.

    Checks: every column present with the contract's type; no nulls in required columns;
    ``position >= -1``; per request at most one row per position and per item; propensity in
    (0, 1] for impressions and null for non-impressions; binary feedback in {0, 1} and
    non-null exactly on impressions; ``watch_time >= 0``.
    """
    check_columns(table.schema, LOG_SCHEMA, source)
    for field in LOG_SCHEMA:
        if not field.nullable and table.column(field.name).null_count:
            raise _fail(source, field.name, f"{table.column(field.name).null_count} null values")
    if table.num_rows == 0:
        return
    pos = table.column("position").to_numpy()
    if (pos < -1).any():
        raise _fail(source, "position", f"value {int(pos.min())} < -1")
    shown = pos >= 0

    prop = table.column("propensity")
    prop_valid = ~np.asarray(pc.is_null(prop).to_numpy(zero_copy_only=False))
    if (prop_valid != shown).any():
        i = int(np.argmax(prop_valid != shown))
        raise _fail(
            source, "propensity", f"row {i}: must be set exactly on impressions (position {pos[i]})"
        )
    pv = prop.to_numpy(zero_copy_only=False)[shown]
    if pv.size and (~((pv > 0) & (pv <= 1))).any():
        bad = pv[~((pv > 0) & (pv <= 1))][0]
        raise _fail(source, "propensity", f"value {bad} outside (0, 1]")

    for name in FEEDBACK:
        col = table.column(name)
        valid = ~np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False))
        if (valid != shown).any():
            i = int(np.argmax(valid != shown))
            raise _fail(source, name, f"row {i}: must be set exactly on impressions")
        v = col.to_numpy(zero_copy_only=False)[shown]
        if name == "watch_time":
            if v.size and (np.nan_to_num(v, nan=-1) < 0).any():
                raise _fail(source, name, "negative or NaN watch time")
        elif v.size and (~np.isin(v, (0, 1))).any():
            raise _fail(source, name, f"value {v[~np.isin(v, (0, 1))][0]} not in {{0, 1}}")

    rid = table.column("request_id").to_numpy()
    item = table.column("item_id").to_numpy()
    _check_unique(source, "item_id", rid, item, "item appears twice in request")
    _check_unique(source, "position", rid[shown], pos[shown], "position used twice in request")


def _check_unique(source: str, column: str, rid: np.ndarray, key: np.ndarray, what: str) -> None:
    if rid.size == 0:
        return
    key = key.astype(np.int64)
    k_min, k_max = int(key.min()), int(key.max())
    r_min, r_max = int(rid.min()), int(rid.max())
    span = k_max - k_min + 1
    if (r_max - r_min + 1) * span < 2**62:
        # One combined int64 key and a plain sort: several times faster than a lexsort.
        comb = np.sort((rid - r_min) * span + (key - k_min))
        dup = np.flatnonzero(comb[1:] == comb[:-1])
        if dup.size:
            c = int(comb[dup[0]])
            r, k = r_min + c // span, k_min + c % span
            raise _fail(source, column, f"{what} (request_id {r}, {column} {k})")
        return
    order = np.lexsort((key, rid))
    r_s, k_s = rid[order], key[order]
    dup = np.flatnonzero((r_s[1:] == r_s[:-1]) & (k_s[1:] == k_s[:-1]))
    if dup.size:
        raise _fail(source, column, f"{what} (request_id {r_s[dup[0]]}, {column} {k_s[dup[0]]})")


def validate_log_file(path: str | Path) -> int:
    """Validate one Parquet shard; returns its row count. Unreadable files raise too."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise LogValidationError(f"{path}: not a readable Parquet file ({e})") from None
    validate_log_table(table, str(path))
    return table.num_rows


def empty_log_table() -> pa.Table:
    return LOG_SCHEMA.empty_table()
