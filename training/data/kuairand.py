"""Convert KuaiRand interaction logs into an impression-log dataset folder.

KuaiRand (Gao et al., CIKM 2022) ships ``log_standard_*.csv`` (the normal feed) and
``log_random_*.csv`` (videos inserted into the feed uniformly at random, ``is_rand == 1``)
with one row per exposed video and no request ids or positions. This module rebuilds the
structure the contract (:mod:`contract.schema`) asks for and writes a dataset through
:class:`training.data.pipeline.DatasetBuilder` (atomic: a failed conversion leaves nothing
under the output name). The rows are built by ``contract.schema.log_table`` (:func:`log_rows`),
the row builder the simulator and the service write with.

Sessions, requests, positions
    A session is one user's rows within one ``date``, ordered by ``time_ms`` (ties by
    ``is_rand`` then ``video_id``), cut where two consecutive rows are more than
    ``session_gap_minutes`` apart. Within a session, consecutive rows *of the same log*
    (standard or random) are grouped ``list_size`` at a time into requests; a request never
    mixes the two logs (a random row inside a standard stretch is a request of its own) and
    never holds the same video twice (a repeat starts a new request, as the contract wants
    one row per item and request). ``request_index`` counts requests within the session and
    ``position`` is the 0-based rank of the row by time within its request. A session is cut
    into a new one after :data:`MAX_REQUESTS_PER_SESSION` requests so that
    ``request_id = session_id * 1000 + request_index`` stays unique. Every row is an
    impression (``position >= 0``): KuaiRand has no logged non-impressions.

    ``session_id`` is a running counter over the whole conversion, in order of (date, session
    start time, user_id); rows are written grouped by session, sessions in that order, so
    sessions are in time order within a day as the dataset format expects. ``timestamp`` is
    each row's own ``time_ms`` (so it can differ between the rows of one request; the
    request's time is its position-0 row's).

Propensities: KuaiRand has none
    The logs do not record the probability with which the production recommender chose a
    video, and the contract requires a propensity in (0, 1] on every impression. Every row
    gets ``propensity = 1.0`` as a *placeholder meaning "unknown"*, never as a probability.
    The two logs are told apart by the arm: ``kuairand_standard`` (``is_rand == 0``) and
    ``kuairand_random`` (``is_rand == 1``); ``model_version`` is ``kuairand``.
    **Do not run NCIS / IPS estimators on a KuaiRand dataset as it is.** The only slice where
    an importance-weighted estimate is defensible is the ``kuairand_random`` arm, under the
    assumption that its videos were drawn uniformly from a candidate pool of known size
    (KuaiRand does not publish it): there the propensities are all equal and self-normalised
    estimators do not depend on their value. The dataset meta says so: ``propensity`` is
    ``"unknown"`` (so the estimators that read it refuse) and ``propensity_note`` explains.

Feedback
    click, like, follow, comment, hate and long_view are ``is_click``, ``is_like``,
    ``is_follow``, ``is_comment``, ``is_hate`` and ``long_view``; ``watch_time`` is
    ``play_time_ms / 1000`` (seconds, float32).

Side tables
    users: the whole users CSV, with the same mapping as the simulator's world built from
    KuaiRand-Pure (:func:`training.sim.world.build_world`), see :func:`users_table`. items: the
    whole videos CSV, see :func:`items_table`.

Days and memory
    The day index (shards, chronological split) is the rank of the ``date`` among the dates
    present in all the logs (0, 1, 2, ...). The CSVs are read in chunks of ``chunk_rows`` rows
    and spilled, partitioned by date, to Parquet files inside the dataset's partial folder
    (deleted before it is finished); the days are then converted one at a time. Memory thus
    scales with one chunk plus **one day of logs** (all users' rows of that date), not with
    the whole files; the spill needs about as much disk as the compressed logs.
"""

from __future__ import annotations

import glob
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contract.features import USER_FIELDS
from contract.schema import (
    ITEM_TABLE_SCHEMA,
    LOG_SCHEMA,
    USER_TABLE_SCHEMA,
    LogValidationError,
    log_table,
)
from training.data.pipeline import DatasetBuilder, session_pieces
from training.sim.config import ConfigError
from training.sim.world import (
    ACTIVE_DEGREE_IDS,
    ACTIVE_DEGREE_OTHER,
    N_SEG_A,
    N_SEG_B,
    REGISTER_DAYS_IDS,
    REGISTER_DAYS_OTHER,
    UPLOAD_TYPE_IDS,
    UPLOAD_TYPE_OTHER,
)

ARM_STANDARD = "kuairand_standard"
ARM_RANDOM = "kuairand_random"
MODEL_VERSION = "kuairand"
#: Placeholder written in the propensity column: "unknown", not a probability.
PROPENSITY_PLACEHOLDER = 1.0
#: A session is cut after this many requests (request_id = session_id * 1000 + index).
MAX_REQUESTS_PER_SESSION = 1000

#: Log columns the conversion reads (the others of the KuaiRand layout are ignored).
LOG_COLUMNS = (
    "user_id", "video_id", "date", "time_ms", "is_click", "is_like", "is_follow",
    "is_comment", "is_hate", "long_view", "play_time_ms", "is_rand",
)  # fmt: skip
#: KuaiRand column -> contract feedback column (all binary).
FEEDBACK_MAP = {
    "is_click": "click",
    "is_like": "like",
    "is_follow": "follow",
    "is_comment": "comment",
    "is_hate": "hate",
    "long_view": "long_view",
}
USER_COLUMNS = (
    "user_id", "user_active_degree", "register_days_range", "follow_user_num_range",
    "fans_user_num_range", "friend_user_num_range", "onehot_feat1", "onehot_feat2",
)  # fmt: skip
VIDEO_COLUMNS = ("video_id", "author_id", "video_duration", "upload_type", "music_type", "tag")
#: Range columns mapped to small ids by sorted distinct value, as the simulator does.
RANGE_COLUMNS = {
    "u_follow": "follow_user_num_range",
    "u_fans": "fans_user_num_range",
    "u_friend": "friend_user_num_range",
}

_SPILL = "_spill"
_PIECE_ROWS = 65_536


def _fail(source: str, column: str, problem: str) -> LogValidationError:
    return LogValidationError(f"{source}: column {column!r}: {problem}")


def _row(n: int) -> str:
    """``n`` is the 0-based data row; the header is line 1."""
    return f"row {n + 1} (line {n + 2})"


# ---------------------------------------------------------------------------------------
# Reading CSVs


def expand_logs(logs: list[str]) -> list[str]:
    """Expand glob patterns (sorted matches), keeping first occurrences; plain paths must exist."""
    out: list[str] = []
    for pattern in logs:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
        else:
            matches = [pattern] if Path(pattern).is_file() else []
        if not matches:
            raise FileNotFoundError(f"--logs {pattern!r}: no file matches")
        out.extend(m for m in matches if m not in out)
    return out


def _header(path: str, required: tuple[str, ...]) -> list[str]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        cols = list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise LogValidationError(f"{path}: empty file (no header line)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise LogValidationError(f"{path}: not a readable CSV file ({e})") from None
    for c in required:
        if c not in cols:
            raise _fail(path, c, "missing")
    return cols


def _int_column(
    s: pd.Series,
    source: str,
    column: str,
    row0: int = 0,
    *,
    allowed: tuple[int, ...] | None = None,
    min_value: int | None = None,
) -> np.ndarray:
    """Integers of a parsed CSV column; a missing, non-numeric, fractional or disallowed value
    raises naming the file, column and row (``row0`` is the chunk's first data row)."""
    v = pd.to_numeric(s, errors="coerce")
    isna = v.isna().to_numpy()
    if isna.any():
        i = int(np.argmax(isna))
        raw = s.iloc[i]
        what = "missing value" if pd.isna(raw) else f"value {raw!r} is not a number"
        raise _fail(source, column, f"{_row(row0 + i)}: {what}")
    a = v.to_numpy()
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a) | (a != np.trunc(a))
        if bad.any():
            i = int(np.argmax(bad))
            raise _fail(source, column, f"{_row(row0 + i)}: value {s.iloc[i]!r} is not an integer")
    a = a.astype(np.int64)
    if allowed is not None:
        bad = ~np.isin(a, allowed)
        if bad.any():
            i = int(np.argmax(bad))
            raise _fail(source, column, f"{_row(row0 + i)}: value {a[i]} not in {set(allowed)}")
    if min_value is not None:
        bad = a < min_value
        if bad.any():
            i = int(np.argmax(bad))
            raise _fail(source, column, f"{_row(row0 + i)}: value {a[i]} < {min_value}")
    return a


def _check_dates(date: np.ndarray, source: str, row0: int) -> None:
    for d in np.unique(date):
        try:
            datetime.strptime(str(int(d)), "%Y%m%d")
        except ValueError:
            i = int(np.argmax(date == d))
            raise _fail(
                source, "date", f"{_row(row0 + i)}: value {d} is not a yyyymmdd date"
            ) from None


def parse_log_chunk(df: pd.DataFrame, source: str, row0: int = 0) -> pa.Table:
    """Check one chunk of a KuaiRand log and return its typed columns.

    Columns: user_id, video_id (int64), date (int32, yyyymmdd), time_ms (int64), is_rand and
    the feedback columns named as in the contract (int8), watch_time (float32 seconds).
    """
    binary = dict.fromkeys((*FEEDBACK_MAP, "is_rand"), (0, 1))
    cols: dict[str, np.ndarray] = {}
    for c in ("user_id", "video_id"):
        cols[c] = _int_column(df[c], source, c, row0)
    date = _int_column(df["date"], source, "date", row0)
    _check_dates(date, source, row0)
    cols["date"] = date.astype(np.int32)
    cols["time_ms"] = _int_column(df["time_ms"], source, "time_ms", row0, min_value=0)
    for c, allowed in binary.items():
        cols[FEEDBACK_MAP.get(c, c)] = _int_column(df[c], source, c, row0, allowed=allowed).astype(
            np.int8
        )
    play = _int_column(df["play_time_ms"], source, "play_time_ms", row0, min_value=0)
    cols["watch_time"] = (play / 1000.0).astype(np.float32)
    return pa.table(cols)


def iter_log_chunks(path: str, chunk_rows: int = 1_000_000):
    """Yield checked, typed tables (see :func:`parse_log_chunk`) of ``chunk_rows`` rows."""
    _header(path, LOG_COLUMNS)
    row0 = 0
    try:
        reader = pd.read_csv(path, usecols=list(LOG_COLUMNS), chunksize=chunk_rows)
        with reader:
            for df in reader:
                yield parse_log_chunk(df, path, row0)
                row0 += len(df)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise LogValidationError(f"{path}: malformed CSV after {_row(row0)} ({e})") from None


# ---------------------------------------------------------------------------------------
# Side tables


def _read_side_csv(path: str, required: tuple[str, ...], text: tuple[str, ...]) -> pd.DataFrame:
    _header(path, required)
    try:
        return pd.read_csv(
            path,
            usecols=list(required),
            dtype=dict.fromkeys(text, str),
            keep_default_na=False,
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise LogValidationError(f"{path}: not a readable CSV file ({e})") from None


def _loose_int(s: pd.Series) -> np.ndarray:
    """``int(float(x))`` with 0 for what does not parse (the simulator's ``_int``)."""
    v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
    v = np.where(np.isfinite(v), v, 0.0)
    return np.trunc(v).astype(np.int64)


def _unique_ids(ids: np.ndarray, source: str, column: str) -> None:
    u, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise _fail(source, column, f"id {int(u[np.argmax(counts > 1)])} appears twice")


def _not_empty(df: pd.DataFrame, source: str, what: str) -> None:
    """An empty side table would make every logged id unknown (and the side-table lookups of
    training index an empty array): refuse it at conversion, naming the file."""
    if len(df) == 0:
        raise LogValidationError(
            f"{source}: no data rows (header only or blank lines): the {what} table must hold "
            f"at least one row"
        )


def users_table(df: pd.DataFrame, source: str = "<users>") -> pa.Table:
    """The users side table from rows of a KuaiRand user-features CSV.

    The same ids as :func:`training.sim.world.build_world` gives the same rows:
    ``u_active`` and ``u_register`` through its ``ACTIVE_DEGREE_IDS`` / ``REGISTER_DAYS_IDS``
    (unknown -> 1 / 9); ``u_follow``, ``u_fans``, ``u_friend``: 1 + the rank of the value among the
    sorted distinct values *of the rows given* (so pass the whole file: the simulator's ids
    match these when its sample holds every distinct value); ``u_seg_a`` = 1 + min(onehot_feat1,
    6), ``u_seg_b`` = 1 + min(onehot_feat2, 49). Expects the range and degree columns read as
    text with empty cells as ``""``. Raises LogValidationError for no rows.
    """
    _not_empty(df, source, "users")
    user_id = _int_column(df["user_id"], source, "user_id")
    _unique_ids(user_id, source, "user_id")
    cols: dict[str, np.ndarray] = {"user_id": user_id}
    cols["u_active"] = np.array(
        [ACTIVE_DEGREE_IDS.get(v, ACTIVE_DEGREE_OTHER) for v in df["user_active_degree"]],
        np.int64,
    )
    cols["u_register"] = np.array(
        [REGISTER_DAYS_IDS.get(v, REGISTER_DAYS_OTHER) for v in df["register_days_range"]],
        np.int64,
    )
    for field, col in RANGE_COLUMNS.items():
        values = df[col].to_numpy(dtype=object)
        vocab = sorted(set(values))
        ids = {v: i + 1 for i, v in enumerate(vocab)}
        cols[field] = np.array([ids[v] for v in values], dtype=np.int64)
    cols["u_seg_a"] = 1 + np.minimum(_loose_int(df["onehot_feat1"]), N_SEG_A - 1)
    cols["u_seg_b"] = 1 + np.minimum(_loose_int(df["onehot_feat2"]), N_SEG_B - 1)
    sizes = {f.name: f.size for f in USER_FIELDS}
    for field, col in (
        ("u_active", "user_active_degree"),
        ("u_register", "register_days_range"),
        *((f, c) for f, c in RANGE_COLUMNS.items()),
        ("u_seg_a", "onehot_feat1"),
        ("u_seg_b", "onehot_feat2"),
    ):
        bad = (cols[field] < 0) | (cols[field] >= sizes[field])
        if bad.any():
            i = int(np.argmax(bad))
            raise _fail(
                source,
                col,
                f"{_row(i)}: maps to {field} id {int(cols[field][i])}, outside the feature "
                f"field's [0, {sizes[field]}) (too many distinct values?)",
            )
    return pa.table(cols, schema=USER_TABLE_SCHEMA)


def items_table(df: pd.DataFrame, source: str = "<videos>") -> pa.Table:
    """The items side table from rows of a KuaiRand video-features CSV.

    As the simulator's world: ``tag`` = first of the comma-separated tags (0 if none),
    ``duration_s`` = video_duration / 1000 with missing or 0 replaced by the median of the
    positive durations of the rows given, ``upload_type`` through ``UPLOAD_TYPE_IDS`` (6 = other),
    ``music_type`` as an int (0 if missing). Expects ``tag`` and ``upload_type`` as text.
    Raises LogValidationError for no rows.
    """
    _not_empty(df, source, "videos")
    video_id = _int_column(df["video_id"], source, "video_id")
    _unique_ids(video_id, source, "video_id")
    author = _int_column(df["author_id"], source, "author_id")
    tag = _loose_int(df["tag"].str.split(",").str[0])
    dur = _loose_int(df["video_duration"]) / 1000.0
    pos = dur > 0
    dur = np.where(pos, dur, np.median(dur[pos]) if pos.any() else 0.0)
    upload = np.array(
        [UPLOAD_TYPE_IDS.get(v, UPLOAD_TYPE_OTHER) for v in df["upload_type"]], dtype=np.int64
    )
    music = _loose_int(df["music_type"])
    return pa.table(
        {
            "item_id": video_id,
            "author_raw": author,
            "tag": tag,
            "duration_s": dur.astype(np.float64),
            "upload_type": upload,
            "music_type": music,
        },
        schema=ITEM_TABLE_SCHEMA,
    )


def read_users(path: str) -> pa.Table:
    text = tuple(c for c in USER_COLUMNS if c not in ("user_id", "onehot_feat1", "onehot_feat2"))
    return users_table(_read_side_csv(path, USER_COLUMNS, text), path)


def read_videos(path: str) -> pa.Table:
    return items_table(_read_side_csv(path, VIDEO_COLUMNS, ("tag", "upload_type")), path)


# ---------------------------------------------------------------------------------------
# One day


def _split_repeats(
    vid: np.ndarray, req_start: np.ndarray, run_start: np.ndarray, list_size: int
) -> np.ndarray:
    """Re-cut the runs where a request would hold one video twice (rare: a Python loop)."""
    n = len(vid)
    req_no = np.cumsum(req_start) - 1
    o = np.lexsort((vid, req_no))
    dup = (req_no[o][1:] == req_no[o][:-1]) & (vid[o][1:] == vid[o][:-1])
    if not dup.any():
        return req_start
    run_no = np.cumsum(run_start) - 1
    bounds = np.r_[np.flatnonzero(run_start), n]
    # Requests before the first one holding a repeat keep their cuts: redo each run from there.
    rows = o[1:][dup]
    req_first = np.maximum.accumulate(np.where(req_start, np.arange(n), 0))[rows]
    first = pd.Series(req_first).groupby(run_no[rows]).min()
    out = req_start.copy()
    for r, lo in first.items():
        lo, hi = int(lo), int(bounds[int(r) + 1])
        seen: set[int] = set()
        count = 0
        for i in range(lo, hi):  # lo starts a request
            v = int(vid[i])
            if i == lo or count == list_size or v in seen:
                out[i], seen, count = True, {v}, 1
            else:
                out[i] = False
                seen.add(v)
                count += 1
    return out


def convert_day(
    day: pa.Table, session_gap_minutes: float, list_size: int, first_session_id: int
) -> tuple[pa.Table, int]:
    """Sessions, requests and positions for one date's rows (as :func:`parse_log_chunk`
    returns them, any order); returns the log table (rows grouped by session, sessions in
    start-time order, ids from ``first_session_id``) and its number of sessions."""
    n = day.num_rows
    if n == 0:
        return LOG_SCHEMA.empty_table(), 0
    c = {name: day.column(name).to_numpy() for name in day.column_names}
    order = np.lexsort((c["video_id"], c["is_rand"], c["time_ms"], c["user_id"]))
    c = {k: v[order] for k, v in c.items()}
    user, t, rand, vid = c["user_id"], c["time_ms"], c["is_rand"], c["video_id"]
    idx = np.arange(n)

    gap_ms = session_gap_minutes * 60_000.0
    g_start = np.r_[True, (user[1:] != user[:-1]) | (np.diff(t) > gap_ms)]
    run_start = g_start | np.r_[True, rand[1:] != rand[:-1]]
    run_first = np.maximum.accumulate(np.where(run_start, idx, 0))
    req_start = ((idx - run_first) % list_size) == 0
    req_start = _split_repeats(vid, req_start, run_start, list_size)
    position = idx - np.maximum.accumulate(np.where(req_start, idx, 0))

    req_cum = np.cumsum(req_start)
    g_first = np.maximum.accumulate(np.where(g_start, idx, 0))
    req_in_gap = req_cum - req_cum[g_first]
    request_index = req_in_gap % MAX_REQUESTS_PER_SESSION
    s_start = req_start & (request_index == 0)
    s_no = np.cumsum(s_start) - 1
    first_rows = np.flatnonzero(s_start)
    n_sessions = len(first_rows)
    by_time = np.lexsort((user[first_rows], t[first_rows]))  # stable: ties keep user-time order
    rank = np.empty(n_sessions, dtype=np.int64)
    rank[by_time] = np.arange(n_sessions)
    session_id = first_session_id + rank[s_no]
    out = np.argsort(session_id, kind="stable")

    rows = {
        "session_id": session_id[out],
        "request_index": request_index[out],
        "user_id": user[out],
        "timestamp": t[out],
        "position": position[out],
        "item_id": vid[out],
        "is_rand": rand[out],
        **{name: c[name][out] for name in (*FEEDBACK_MAP.values(), "watch_time")},
    }
    return log_rows(rows), n_sessions


def log_rows(rows: dict[str, np.ndarray]) -> pa.Table:
    """Impression-log rows through the contract's one row builder, ``contract.schema.log_table``.

    ``rows``: ``(n,)`` per-row arrays in output order (requests contiguous, positions ``0, 1,
    ...`` within each): ``session_id``, ``request_index``, ``user_id``, ``timestamp``,
    ``position``, ``item_id``, ``is_rand`` and the feedback columns. ``log_table`` takes
    requests of one arm and one length per call (every KuaiRand row is an impression, so a
    request of ``L`` rows is ``L`` shown slots and no non-impressions): one call per (arm,
    length), the rows put back in order afterwards. ``timestamp`` is then set per row:
    KuaiRand keeps each row's own exposure time, where ``log_table`` writes the request's
    (its position-0 row's).
    """
    n = len(rows["item_id"])
    if n == 0:
        return LOG_SCHEMA.empty_table()
    starts = np.flatnonzero(rows["position"] == 0)
    lengths = np.diff(np.r_[starts, n])
    arm = rows["is_rand"][starts]
    pieces, order = [], []
    for a, arm_name in enumerate((ARM_STANDARD, ARM_RANDOM)):
        for length in np.unique(lengths[arm == a]):
            first = starts[(arm == a) & (lengths == length)]
            at = first[:, None] + np.arange(length)  # (R, L) rows of these requests
            sid, k = rows["session_id"][first], rows["request_index"][first]
            cols = {
                "request_id": sid * MAX_REQUESTS_PER_SESSION + k,
                "session_id": sid,
                "user_id": rows["user_id"][first],
                "timestamp": rows["timestamp"][first],
                "request_index": k.astype(np.int32),
                "item_id": rows["item_id"][at],
                "propensity": np.full(at.shape, PROPENSITY_PLACEHOLDER),
                **{f: rows[f][at].astype(np.int8) for f in FEEDBACK_MAP.values()},
                "watch_time": rows["watch_time"][at].astype(np.float32),
            }
            pieces.append(log_table(cols, arm_name, MODEL_VERSION))
            order.append(at.ravel())
    table = pa.concat_tables(pieces).take(np.argsort(np.concatenate(order)))
    ts = LOG_SCHEMA.get_field_index("timestamp")
    return table.set_column(ts, LOG_SCHEMA.field(ts), pa.array(rows["timestamp"], pa.int64()))


# ---------------------------------------------------------------------------------------
# The conversion


def convert_kuairand(
    logs: list[str],
    users_csv: str,
    videos_csv: str,
    out: str,
    session_gap_minutes: float = 30.0,
    list_size: int = 10,
    overwrite: bool = False,
    valid_days: int = 1,
    test_days: int = 1,
    progress: bool = True,
    *,
    shard_rows: int = 2_000_000,
    chunk_rows: int = 1_000_000,
) -> dict[str, Any]:
    """Convert KuaiRand log CSVs (paths or glob patterns) into the dataset folder ``out``.

    See the module docstring for the mapping. Returns the dataset meta (``dataset.json``).
    Raises FileNotFoundError (a pattern matches nothing, a file is missing),
    LogValidationError (missing column, malformed value: names file, column and row; a users or
    videos table with no rows: names the file),
    DatasetError (``out`` exists without ``overwrite``; too few days for the split) and
    ConfigError (a bad argument). Nothing is left under ``out`` when it fails.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if not session_gap_minutes > 0:
        raise ConfigError(f"session_gap_minutes={session_gap_minutes}: must be > 0")
    if not 1 <= list_size <= np.iinfo(np.int16).max:
        raise ConfigError(f"list_size={list_size}: must be in [1, 32767]")
    if chunk_rows < 1 or shard_rows < 1:
        raise ConfigError(f"chunk_rows={chunk_rows}, shard_rows={shard_rows}: must be >= 1")
    if valid_days < 0 or test_days < 0:
        raise ConfigError(f"valid_days={valid_days}, test_days={test_days}: must be >= 0")

    files = expand_logs(list(logs))
    for f in files:  # fail fast on headers, before anything is read or written
        _header(f, LOG_COLUMNS)
    builder = DatasetBuilder(out, overwrite=overwrite, shard_rows=shard_rows)
    users = read_users(users_csv)
    items = read_videos(videos_csv)

    with builder:
        builder.write_side_tables(users, items)
        spill = builder.tmp / _SPILL
        spill.mkdir()
        n_rows = n_random = 0
        bar = tqdm(files, desc="read logs", unit="file", disable=not progress)
        for fi, path in enumerate(bar):
            for ci, chunk in enumerate(iter_log_chunks(path, chunk_rows)):
                date = chunk.column("date").to_numpy()
                for d in np.unique(date):
                    part = spill / str(int(d))
                    part.mkdir(exist_ok=True)
                    pq.write_table(
                        chunk.filter(pa.array(date == d)), part / f"{fi:05d}-{ci:07d}.parquet"
                    )
                n_rows += chunk.num_rows
                n_random += int(np.count_nonzero(chunk.column("is_rand").to_numpy()))
                bar.set_postfix(rows=f"{n_rows:,}")

        dates = sorted(int(p.name) for p in spill.iterdir())
        next_session = 0
        seen_users: list[np.ndarray] = []
        seen_items: list[np.ndarray] = []
        bar = tqdm(dates, desc="sessions", unit="day", disable=not progress)
        for day, d in enumerate(bar):
            parts = sorted((spill / str(d)).iterdir())
            day_rows = pa.concat_tables(pq.read_table(p) for p in parts)
            table, n_sessions = convert_day(day_rows, session_gap_minutes, list_size, next_session)
            next_session += n_sessions
            del day_rows
            seen_users.append(np.unique(table.column("user_id").to_numpy()))
            seen_items.append(np.unique(table.column("item_id").to_numpy()))
            for piece in session_pieces(table, min(_PIECE_ROWS, shard_rows)):
                builder.writer.write(piece, day)  # type: ignore[union-attr]
            builder.writer.flush()  # type: ignore[union-attr]
            shutil.rmtree(spill / str(d))
            bar.set_postfix(sessions=f"{next_session:,}")
        shutil.rmtree(spill)

        log_users = np.unique(np.concatenate(seen_users)) if seen_users else np.array([], np.int64)
        log_items = np.unique(np.concatenate(seen_items)) if seen_items else np.array([], np.int64)
        meta = builder.finish(
            {
                "source": "kuairand",
                "logs": files,
                "users_csv": str(users_csv),
                "videos_csv": str(videos_csv),
                "session_gap_minutes": session_gap_minutes,
                "list_size": list_size,
                "max_requests_per_session": MAX_REQUESTS_PER_SESSION,
                "dates": dates,
                "arms": {
                    ARM_STANDARD: "log_standard (is_rand=0)",
                    ARM_RANDOM: "log_random (is_rand=1)",
                },
                "model_version": MODEL_VERSION,
                "propensity": "unknown",
                "propensity_note": (
                    "none: KuaiRand logs carry no propensities; the column holds the placeholder "
                    "1.0 (unknown). Do not run NCIS/IPS on this data, except on the "
                    f"{ARM_RANDOM} arm under a uniform-exposure assumption."
                ),
                "random_rows": n_random,
                "log_users_without_profile": int(
                    np.count_nonzero(~np.isin(log_users, users.column("user_id").to_numpy()))
                ),
                "log_items_without_features": int(
                    np.count_nonzero(~np.isin(log_items, items.column("item_id").to_numpy()))
                ),
                "seconds": round(time.perf_counter() - t0, 2),
            },
            valid_days=valid_days,
            test_days=test_days,
        )
    return meta
