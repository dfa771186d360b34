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

The checks here are per table (:func:`log_table_problems`: each problem with source, column,
row and value). The order a dataset's shards must also keep for the readers (sessions
contiguous in one shard, requests in time order, slots ``0..n-1`` unless declared sparse) is
a property of the dataset layout, checked by ``training.data.validate``: a service's exposure
log, for one, interleaves sessions and is valid here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    null_rc = np.ones((r, c), dtype=bool)
    null_rc[:, :k] = False
    null = null_rc.ravel()
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
    """A log file or table breaks the contract; the message names file, column and problem.

    ``problems`` holds every :class:`Problem` found (the message shows the first).
    """

    def __init__(self, message: str, problems: tuple[Problem, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class Problem:
    """One way a file breaks the contract: where it is (source, column, row) and the value.

    ``row`` is the 0-based row in the source (a Parquet file or table), ``None`` for a problem
    of a whole column or file; ``column`` is ``None`` for a problem of the whole file.
    ``str()`` gives the one-line message: ``source: column 'c': row 12: value 3: problem``.
    """

    source: str
    column: str | None
    problem: str
    row: int | None = None
    value: object = None

    def __str__(self) -> str:
        parts = [self.source]
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.value is not None:
            parts.append(f"value {self.value!r}")
        return ": ".join([*parts, self.problem])


def column_problems(table_schema: pa.Schema, expected: pa.Schema, source: str) -> list[Problem]:
    """Every column of ``expected`` missing from ``table_schema`` or of another type."""
    out = []
    for field in expected:
        idx = table_schema.get_field_index(field.name)
        if idx < 0:
            out.append(Problem(source, field.name, "missing"))
            continue
        got = table_schema.field(idx).type
        if got != field.type:
            out.append(Problem(source, field.name, f"type {got}, expected {field.type}"))
    return out


def check_columns(table_schema: pa.Schema, expected: pa.Schema, source: str) -> None:
    """Raise if a column is missing or has another type than the contract's."""
    problems = column_problems(table_schema, expected, source)
    if problems:
        raise LogValidationError(str(problems[0]), tuple(problems))


def validate_log_table(
    table: pa.Table,
    source: str = "<table>",
    *,
    aspects: Sequence[str] = FEEDBACK,
) -> None:
    """Check a table against the impression-log contract; raise on the first problem.

    The checks are :func:`log_table_problems`'; raises :class:`LogValidationError` whose
    message is the first problem and whose ``problems`` are all of them.
    """
    problems = log_table_problems(table, source, aspects=aspects)
    if problems:
        raise LogValidationError(str(problems[0]), tuple(problems))


def log_table_problems(
    table: pa.Table,
    source: str = "<table>",
    *,
    row_offset: int = 0,
    aspects: Sequence[str] = FEEDBACK,
) -> list[Problem]:
    """The contract problems of an impression-log table, at most one per check.

    Checks: every column present with the contract's type (if not, only those problems are
    returned); no nulls in required columns; ``position >= -1``; per request at most one row
    per position and per item; propensity in (0, 1] on impressions and null on
    non-impressions; the feedback ``aspects`` the log has: binary ones in {0, 1}, non-null
    exactly on impressions, ``watch_time >= 0``; the aspects it does not have: null on every
    row (absent, which is not "observed, negative"). Rows are reported as ``row_offset`` plus
    the row in ``table`` (the row in the file when the table is a chunk of it).

    Raises ValueError for an ``aspects`` name outside :data:`FEEDBACK`.
    """
    unknown = [a for a in aspects if a not in FEEDBACK]
    if unknown:
        raise ValueError(f"aspects {unknown} are not feedback columns {FEEDBACK}")
    problems = column_problems(table.schema, LOG_SCHEMA, source)
    if problems:
        return problems

    def at(column: str, i: int, value: object, problem: str) -> None:
        problems.append(Problem(source, column, problem, row_offset + int(i), value))

    for field in LOG_SCHEMA:
        col = table.column(field.name)
        if not field.nullable and col.null_count:
            i = int(np.argmax(_is_null(col)))
            at(field.name, i, None, f"{col.null_count} null values (the first here)")
    if problems or table.num_rows == 0:
        return problems
    pos = table.column("position").to_numpy()
    if (pos < -1).any():
        i = int(np.argmax(pos < -1))
        at("position", i, int(pos[i]), "below -1")
    shown = pos >= 0

    prop = table.column("propensity")
    prop_valid = ~_is_null(prop)
    bad = prop_valid != shown
    if bad.any():
        i = int(np.argmax(bad))
        what = "must be set on impressions" if shown[i] else "must be null on non-impressions"
        at("propensity", i, None, f"{what} (position {pos[i]})")
    pv = prop.to_numpy(zero_copy_only=False)
    out = shown & prop_valid & ~((pv > 0) & (pv <= 1))
    if out.any():
        i = int(np.argmax(out))
        at("propensity", i, float(pv[i]), "outside (0, 1]")

    for name in FEEDBACK:
        col = table.column(name)
        valid = ~_is_null(col)
        if name not in aspects:
            if valid.any():
                i = int(np.argmax(valid))
                at(name, i, col[i].as_py(), "set, but the dataset declares this aspect absent")
            continue
        if (valid != shown).any():
            i = int(np.argmax(valid != shown))
            at(name, i, None, "must be set exactly on impressions")
        v = col.to_numpy(zero_copy_only=False)
        if name == "watch_time":
            neg = shown & valid & ~(np.nan_to_num(v, nan=-1) >= 0)
            if neg.any():
                i = int(np.argmax(neg))
                at(name, i, float(v[i]), "negative or NaN watch time")
        else:
            off = shown & valid & ~np.isin(v, (0, 1))
            if off.any():
                i = int(np.argmax(off))
                at(name, i, int(v[i]), "not in {0, 1}")

    rid = table.column("request_id").to_numpy()
    item = table.column("item_id").to_numpy()
    rows = np.arange(len(rid))
    for column, r, key, idx, what in (
        ("item_id", rid, item, rows, "item appears twice in request"),
        ("position", rid[shown], pos[shown], rows[shown], "position used twice in request"),
    ):
        dup = _first_duplicate(r, key)
        if dup is not None:
            where = f"(request_id {r[dup]}, {column} {key[dup]})"
            at(column, idx[dup], int(key[dup]), f"{what} {where}")
    return problems


def _is_null(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)


def _first_duplicate(rid: np.ndarray, key: np.ndarray) -> int | None:
    """Index of the first row (in row order) whose ``(rid, key)`` pair an earlier row holds."""
    if rid.size == 0:
        return None
    key = key.astype(np.int64)
    k_min, k_max = int(key.min()), int(key.max())
    r_min, r_max = int(rid.min()), int(rid.max())
    span = k_max - k_min + 1
    if (r_max - r_min + 1) * span < 2**62:
        # One combined int64 key and a plain sort: several times faster than a lexsort; the
        # slower stable argsort runs only when there is a repeat to locate.
        comb = (rid - r_min) * span + (key - k_min)
        s = np.sort(comb)
        if not (s[1:] == s[:-1]).any():
            return None
        order = np.argsort(comb, kind="stable")
        same = comb[order][1:] == comb[order][:-1]
    else:
        order = np.lexsort((np.arange(rid.size), key, rid))
        r_s, k_s = rid[order], key[order]
        same = (r_s[1:] == r_s[:-1]) & (k_s[1:] == k_s[:-1])
    dup = np.flatnonzero(same)
    if not dup.size:
        return None
    # each later member of a run of equal pairs repeats it; the earliest such row in row order
    return int(order[dup + 1].min())


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
