"""Import an impression log of any layout (CSV or Parquet) into a dataset folder.

``ranker import --mapping MAPPING --out DIR``: the mapping file (:mod:`training.data.mapping`;
README "Bring your own logs") names the log's files and columns, what its positions,
propensities and timestamps mean, which feedback aspects it has, and the user and item fields
to build from the side tables; the columns are checked by :mod:`training.data.columns`. The
result is the dataset layout every trainer reads (:mod:`training.data.pipeline`): log shards
in :data:`contract.schema.LOG_SCHEMA` written by the contract's row builder,
``users.parquet``/``items.parquet`` with the raw columns the fields read, and ``dataset.json``
with the keys this module adds:

``slots``
    ``"contiguous"`` (each request shows slots ``0..n-1``) or ``"as_logged"`` (positions kept
    as logged: a request may show one impression at position 2). A contiguous declaration is
    checked here; a log with gaps must declare ``as_logged``.
``aspects``
    the feedback aspects the log has (subset of :data:`contract.schema.FEEDBACK`, in that
    order). The others are written as null, never 0 (0 reads as "observed, negative").
``propensity``
    what the propensity column means: ``"conditional"`` (the probability of the item at its
    slot given the earlier slots, the contract's meaning; a slate's probability is the product),
    ``"marginal"`` (the probability of the item at that position, over the policy's lists; a
    product of marginals is not a slate probability) or ``"unknown"`` (the column holds the
    placeholder 1.0, as the KuaiRand converter writes; nothing propensity-weighted may run).
``feature_spec``
    the :class:`contract.features.FeatureSpec` (``to_dict``) built from the mapping's fields and
    the data: category vocabularies, bucket edges, hash sizes.

Everything is checked before anything is written, and refused with the file, column and a
sample of the bad values (:class:`contract.schema.LogValidationError`) or the mapping key
(:class:`training.sim.config.ConfigError`); the dataset is built under a temporary name
(:class:`training.data.pipeline.DatasetBuilder`), so a failed import leaves no folder. Nothing
is dropped silently: ids of the log missing from a side table and values outside a field's
vocabulary map to the unknown id 0 and are counted in ``import.json`` (also printed).

Sessions and requests: rows sharing the request id are one request (one user, one timestamp:
the earliest of its rows). Sessions come from a session column when the mapping names one,
else a session is one user's requests within a UTC day, cut where two consecutive requests
are more than ``session_gap_minutes`` apart. A session belongs to the UTC day it starts on
(one shard per day, so the chronological split never cuts a session). ``request_index``
counts the requests of a session in time order.

Memory: the whole log is read at once (one pass per file): about 0.5 GB and 3 s per million
rows here (the fixture's log tiled to 1.0 M rows).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from contract.features import (
    CONTEXT_FIELDS,
    DEFAULT_SPEC,
    LIST_FIELDS,
    FeatureSpec,
    Field,
    Group,
    bucket_field,
    category_field,
    category_ids,
    check_standard_layout,
    hashed_field,
    unknown_counts,
)
from contract.schema import FEEDBACK, LOG_SCHEMA, LogValidationError, log_table, validate_log_table
from training.data.columns import (
    DAY_MS,
    binary_column,
    check_slots,
    column_error,
    id_column,
    numeric_column,
    positions,
    read_table,
    sample_values,
    sessions,
    stable_id,
    timestamps_ms,
)
from training.data.mapping import Mapping, TableMap, load_mapping
from training.data.pipeline import DatasetBuilder, DatasetError, session_pieces

IMPORT_REPORT = "import.json"
#: Written in the propensity column when ``propensity = "unknown"``: a stand-in, never a
#: probability (the contract wants a value in (0, 1] on every impression).
PROPENSITY_PLACEHOLDER = 1.0


# ---------------------------------------------------------------------------------------
# Side tables and the feature spec


def build_fields(table: pd.DataFrame, tm: TableMap, group: Group, source: str
                 ) -> tuple[list[Field], dict[str, np.ndarray]]:  # fmt: skip
    """The declared fields of a side table and the raw columns they read (by field name,
    which is each field's ``source``): category fields get their vocabulary from the table's
    values (:func:`contract.features.category_field`), bucket fields their edges (given, or
    quantiles: :func:`contract.features.bucket_field`), hash fields their size.

    Raises LogValidationError naming the file and column when a column cannot make its field
    (fractional values for a category, text for a bucket, no value at all)."""
    fields: list[Field] = []
    cols: dict[str, np.ndarray] = {}
    for f in tm.fields:
        s = table[f.column]
        try:
            if f.kind == "category":
                fields.append(category_field(f.name, group, s, min_count=f.min_count,
                                             max_size=f.max_size))  # fmt: skip
                cols[f.name] = s.to_numpy()
            elif f.kind == "hash":
                fields.append(hashed_field(f.name, group, int(f.size or 0)))
                cols[f.name] = s.to_numpy()
            else:
                v = pd.to_numeric(s, errors="coerce")
                bad = v.isna() & s.notna()
                if bad.any():
                    raise ValueError(f"non-numeric values {sample_values(s[bad])}")
                x = v.to_numpy(dtype=np.float64)
                fields.append(
                    bucket_field(f.name, group, x, f.n_buckets, f.edges)
                    if f.edges is None
                    else bucket_field(f.name, group, edges=f.edges)
                )
                cols[f.name] = x
        except ValueError as e:
            raise column_error(source, f.column, f"{f.kind} field {f.name!r}: {e}") from None
    return fields, cols


def _hash_or_missing(s: pd.Series, source: str, column: str) -> np.ndarray:
    """int64 raw ids of an author column: integers as they are, text through
    :func:`stable_id`, missing as -1 (which hashes to the unknown id 0)."""
    out = np.full(len(s), -1, dtype=np.int64)
    ok = s.notna().to_numpy()
    if pd.api.types.is_numeric_dtype(s):
        out[ok] = id_column(s[ok], source, column)
    else:
        out[ok] = stable_id(s.to_numpy()[ok])
    return out


def feature_spec(user_fields: list[Field], item_fields: list[Field], users: TableMap,
                 items: TableMap, n_tags: int, has_author: bool) -> FeatureSpec:  # fmt: skip
    """The dataset's spec: hashed user id and the declared user fields; the standard context
    fields; hashed item id, the author (hashed, reads ``author_raw``) and tag (the tag
    vocabulary's ids, kind ``vocab``) when the mapping names them, the declared item fields;
    the standard list fields (computed by :func:`contract.features.list_fields`)."""
    fields = [hashed_field("user_id", "user", users.id_hash_size), *user_fields]
    fields += list(CONTEXT_FIELDS)
    fields.append(hashed_field("item_id", "item", items.id_hash_size))
    if has_author:
        a = DEFAULT_SPEC.field("author_id")
        fields.append(Field("author_id", "item", a.size, "hash", source="author_raw"))
    if n_tags:
        fields.append(Field("tag", "item", n_tags + 1, "vocab"))
    fields += item_fields
    fields += list(LIST_FIELDS)
    spec = FeatureSpec(tuple(fields), version=DEFAULT_SPEC.version,
                       recent_window=DEFAULT_SPEC.recent_window)  # fmt: skip
    check_standard_layout(spec)
    return spec


def _arrow(values: np.ndarray) -> pa.Array:
    """A raw column for Parquet: numbers as they are, text with missing values as null."""
    if values.dtype == object:
        return pa.array([None if (v is None or (isinstance(v, float) and v != v)) else v
                         for v in values])  # fmt: skip
    return pa.array(values)


def read_side(tm: TableMap, group: Group, log_ids: np.ndarray
              ) -> tuple[dict[str, pa.Array], list[Field], dict[str, Any]]:  # fmt: skip
    """A side table's columns (its id as ``user_id``/``item_id``; for items ``tag`` and
    ``author_raw``; the raw column of every declared field under the field's name), its
    declared fields, and its part of the import report (rows, the log's ids missing from it).

    Items: ``tag`` is ``1 +`` the index of the item's tag in the sorted tag vocabulary (0 when
    the mapping names no tag column or the value is missing), ``author_raw`` the author as an
    int64 id (-1 when absent). Raises LogValidationError for an empty table or a repeated id.
    """
    source = str(tm.file)
    cols = [tm.id, *(f.column for f in tm.fields), *(c for c in (tm.tag, tm.author) if c)]
    df = read_table(tm.file, cols, f"{group}s table")
    if df.empty:
        raise LogValidationError(f"{source}: the {group}s table has no rows")
    ids = id_column(df[tm.id], source, tm.id)
    u, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = df[tm.id].iloc[int(first[np.argmax(counts > 1)])]
        raise column_error(source, tm.id, f"id {dup!r} appears twice")
    order = np.argsort(ids, kind="stable")
    fields, raw = build_fields(df, tm, group, source)
    out: dict[str, pa.Array] = {f"{group}_id": pa.array(ids[order], pa.int64())}
    report: dict[str, Any] = {"rows": int(len(ids))}
    if group == "item":
        tags = np.zeros(len(df), np.int64)
        if tm.tag:
            try:
                tf = category_field("tag", "item", df[tm.tag])
            except ValueError as e:
                raise column_error(source, tm.tag, f"tag: {e}") from None
            tags = category_ids(tf.vocab, df[tm.tag].to_numpy(), "tag")
            report["tag_vocab"] = list(tf.vocab)
        author = (_hash_or_missing(df[tm.author], source, tm.author) if tm.author
                  else np.full(len(df), -1, np.int64))  # fmt: skip
        out["tag"] = pa.array(tags[order], pa.int64())
        out["author_raw"] = pa.array(author[order], pa.int64())
    for name, v in raw.items():
        out[name] = _arrow(v[order])
    missing = np.setdiff1d(log_ids, ids)
    report[f"log_{group}s"] = int(len(log_ids))
    report[f"log_{group}s_missing"] = int(missing.size)
    report[f"log_{group}s_missing_examples"] = [int(x) for x in missing[:5]]
    return out, fields, report


# ---------------------------------------------------------------------------------------
# The log


def read_log(m: Mapping, say: Callable[[str], None]) -> pd.DataFrame:
    """The log's mapped columns of every file, checked and typed: request, user, item (int64
    ids), t_ms, pos (0-based), propensity, the aspects, session (when mapped), arm."""
    parts: list[pd.DataFrame] = []
    for f in m.log_files:
        t0 = time.perf_counter()
        need = list(m.columns.values()) + list(m.aspects.values())
        df = read_table(f, need, "log")
        src = str(f)
        c = m.columns
        out = pd.DataFrame({
            "request": id_column(df[c["request_id"]], src, c["request_id"]),
            "user": id_column(df[c["user_id"]], src, c["user_id"]),
            "item": id_column(df[c["item_id"]], src, c["item_id"]),
            "t_ms": timestamps_ms(df[c["timestamp"]], m.timestamp_unit, src, c["timestamp"]),
            "pos": positions(df[c["position"]], m.position_base, src, c["position"]),
        })  # fmt: skip
        if "propensity" in c:
            out["propensity"] = numeric_column(df[c["propensity"]], src, c["propensity"],
                                               1e-300, 1.0, "propensity in (0, 1]")  # fmt: skip
            if (out["propensity"] <= 0).any():
                raise column_error(src, c["propensity"], "propensity 0 (must be in (0, 1])")
        else:
            out["propensity"] = PROPENSITY_PLACEHOLDER
        for a, col in m.aspects.items():
            if a == "watch_time":
                v = numeric_column(df[col], src, col, 0.0, np.inf, "watch time >= 0")
                out[a] = v / (1000.0 if m.watch_time_unit == "ms" else 1.0)
            else:
                out[a] = binary_column(df[col], src, col)
        if "session_id" in c:
            out["session"] = id_column(df[c["session_id"]], src, c["session_id"])
        out["arm"] = df[c["arm"]].astype(str).to_numpy() if "arm" in c else m.arm_name
        out["file"] = len(parts)
        parts.append(out)
        say(f"read {len(out):,} rows of {f} in {time.perf_counter() - t0:.1f} s")
    return pd.concat(parts, ignore_index=True)


def arrange(log: pd.DataFrame, m: Mapping) -> pd.DataFrame:
    """Requests, sessions, request indices and days of a checked log (:func:`read_log`),
    rows sorted by (day, session start, session, request time, request, position).

    Adds ``session`` (0.. in that order), ``request_index``, ``t_req`` (the request's earliest
    timestamp) and ``day`` (0.. over the UTC days present). Raises LogValidationError when a
    request id has rows of two users, an item twice, or a slot twice (see :func:`check_slots`).
    """
    src = ", ".join(str(f) for f in m.log_files)
    c = m.columns
    g = log.groupby("request", sort=False)
    if (g["user"].nunique() > 1).any():
        r = int(g["user"].nunique().gt(1).idxmax())
        raise column_error(src, c["user_id"], f"request {r} has rows of more than one user")
    log = log.assign(t_req=g["t_ms"].transform("min"))
    if "session" in log:
        if (g["session"].nunique() > 1).any():
            r = int(g["session"].nunique().gt(1).idxmax())
            raise column_error(
                src, c["session_id"], f"request {r} has rows of more than one session"
            )
    log = log.sort_values(["request", "pos"], kind="stable").reset_index(drop=True)
    check_slots(log["request"].to_numpy(), log["pos"].to_numpy(), m.slots, src, c["position"],
                m.position_base)  # fmt: skip
    dup = log.duplicated(["request", "item"])
    if dup.any():
        i = int(np.argmax(dup.to_numpy()))
        raise column_error(src, c["item_id"], f"request {log['request'][i]}: item "
                    f"{log['item'][i]} logged twice")  # fmt: skip
    req = log.drop_duplicates("request")[["request", "user", "t_req", *(
        ["session"] if "session" in log else [])]]  # fmt: skip
    if "session" in req:
        req = req.sort_values(["session", "t_req", "request"], kind="stable")
        s_start = req.groupby("session")["t_req"].transform("min")
        req = req.assign(s_start=s_start, s_user=req.groupby("session")["user"].transform("first"))
        if (req.groupby("session")["user"].nunique() > 1).any():
            s = req.groupby("session")["user"].nunique().gt(1).idxmax()
            raise column_error(
                src, c["session_id"], f"session {s} has requests of more than one user"
            )
        key = ["s_start", "s_user", "session", "t_req", "request"]
    else:
        req = req.sort_values(["user", "t_req", "request"], kind="stable")
        req["session"] = sessions(req["user"].to_numpy(), req["t_req"].to_numpy(),
                                  m.session_gap_minutes * 60_000.0)  # fmt: skip
        req["s_start"] = req.groupby("session")["t_req"].transform("min")
        req["s_user"] = req["user"]
        key = ["s_start", "s_user", "session", "t_req", "request"]
    req = req.sort_values(key, kind="stable").reset_index(drop=True)
    new_sess = np.r_[True, req["session"].to_numpy()[1:] != req["session"].to_numpy()[:-1]]
    sess_no = np.cumsum(new_sess) - 1
    first = np.maximum.accumulate(np.where(new_sess, np.arange(len(req)), 0))
    req_index = np.arange(len(req)) - first
    if len(req) and req_index.max() > np.iinfo(np.int32).max:
        raise column_error(src, "session", "a session has more than 2^31 requests")
    day_abs = req["s_start"].to_numpy() // DAY_MS
    days = np.unique(day_abs)
    meta = pd.DataFrame({
        "request": req["request"].to_numpy(),
        "session_no": sess_no,
        "request_index": req_index.astype(np.int32),
        "order": np.arange(len(req)),
        "day": np.searchsorted(days, day_abs),
    })  # fmt: skip
    log = log.drop(columns=["session"], errors="ignore").merge(meta, on="request", how="left")
    log = log.sort_values(["order", "pos"], kind="stable").reset_index(drop=True)
    log.attrs["days"] = [str(np.datetime64(int(d) * DAY_MS, "ms"))[:10] for d in days]
    return log


def log_rows(log: pd.DataFrame, aspects: list[str], model_version: str) -> pa.Table:
    """Impression-log rows of arranged requests (:func:`arrange`) through the contract's row
    builder :func:`contract.schema.log_table`, one call per (arm, request length); positions
    are then set to the logged ones (``log_table`` numbers shown slots ``0..k-1``). Every row
    of a request has the request's timestamp (its earliest row's). Aspects not in ``aspects``
    are left null."""
    n = len(log)
    if n == 0:
        return LOG_SCHEMA.empty_table()
    rq = log["request"].to_numpy()
    starts = np.flatnonzero(np.r_[True, rq[1:] != rq[:-1]])
    lengths = np.diff(np.r_[starts, n])
    arm = log["arm"].to_numpy()[starts].astype(str)
    pieces, order = [], []
    for a in np.unique(arm):
        for length in np.unique(lengths[arm == a]):
            first = starts[(arm == a) & (lengths == length)]
            at = first[:, None] + np.arange(length)  # (R, L) rows of these requests
            cols: dict[str, np.ndarray] = {
                "request_id": rq[first],
                "session_id": log["session_no"].to_numpy()[first].astype(np.int64),
                "user_id": log["user"].to_numpy()[first],
                "timestamp": log["t_req"].to_numpy()[first],
                "request_index": log["request_index"].to_numpy()[first].astype(np.int32),
                "item_id": log["item"].to_numpy()[at],
                "propensity": log["propensity"].to_numpy(dtype=np.float64)[at],
            }
            for name in aspects:
                v = log[name].to_numpy()[at]
                cols[name] = v.astype(np.float32 if name == "watch_time" else np.int8)
            pieces.append(log_table(cols, str(a), model_version))
            order.append(at.ravel())
    table = pa.concat_tables(pieces).take(np.argsort(np.concatenate(order)))
    i = LOG_SCHEMA.get_field_index("position")
    pos = pa.array(log["pos"].to_numpy().astype(np.int16), pa.int16())
    table = table.set_column(i, LOG_SCHEMA.field(i), pos)
    return table


# ---------------------------------------------------------------------------------------
# The import


def import_log(
    mapping: str | Path,
    out: str | Path,
    overwrite: bool = False,
    shard_rows: int = 2_000_000,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Import the log a mapping file describes into the dataset folder ``out``.

    Returns the import report (also written as ``out/import.json``): rows, requests,
    sessions, days, the dataset.json keys above, and per side table the rows, the unknown
    values per field and the log ids missing from it. Raises ConfigError (a bad mapping),
    FileNotFoundError, LogValidationError (bad values: file, column, sample) and DatasetError
    (``out`` exists without ``overwrite``; too few days for the split). Nothing is left
    under ``out`` when it fails.
    """
    from tqdm.auto import tqdm

    def say(msg: str) -> None:
        if log is not None and progress:
            log(msg)

    t0 = time.perf_counter()
    m = load_mapping(mapping)
    if Path(out).exists() and not overwrite:
        raise DatasetError(f"{out} exists (pass --overwrite to replace it)")
    raw = read_log(m, say)
    if raw.empty:
        raise LogValidationError(f"{m.log_files[0]}: the log has no rows")
    arranged = arrange(raw, m)
    del raw
    n_days = len(arranged.attrs["days"])
    if n_days < m.valid_days + m.test_days + 1:
        raise DatasetError(
            f"the log spans {n_days} UTC day(s) ({', '.join(arranged.attrs['days'])}); "
            f"valid_days={m.valid_days} + test_days={m.test_days} need at least "
            f"{m.valid_days + m.test_days + 1}"
        )
    say(f"{arranged['request'].nunique():,} requests, {int(arranged['session_no'].max()) + 1:,} "
        f"sessions over {n_days} days")  # fmt: skip
    users, user_fields, user_rep = read_side(m.users, "user",
                                             np.unique(arranged["user"].to_numpy()))  # fmt: skip
    items, item_fields, item_rep = read_side(m.items, "item",
                                             np.unique(arranged["item"].to_numpy()))  # fmt: skip
    spec = feature_spec(user_fields, item_fields, m.users, m.items,
                        len(item_rep.get("tag_vocab", [])), bool(m.items.author))  # fmt: skip
    sides: tuple[tuple[dict, Group, dict, list[Field]], ...] = (
        (user_rep, "user", users, user_fields), (item_rep, "item", items, item_fields))  # fmt: skip
    for rep, group, table, declared in sides:
        raw = {name: table[name].to_numpy(zero_copy_only=False) for name in table}
        counts = unknown_counts(spec, group, raw)
        rep["unknown_values"] = {f.name: counts[f.name] for f in declared}
    aspects = list(m.aspects)
    builder = DatasetBuilder(out, overwrite=overwrite, shard_rows=shard_rows)
    with builder:
        builder.write_side_tables(pa.table(users), pa.table(items), spec)
        assert builder.writer is not None
        builder.writer.validate = False  # checked below with the declared aspects
        days = arranged["day"].to_numpy()
        bounds = np.r_[np.flatnonzero(np.r_[True, days[1:] != days[:-1]]), len(days)]
        bar = tqdm(range(len(bounds) - 1), desc="write days", unit="day", disable=not progress)
        for j in bar:
            part = arranged.iloc[bounds[j] : bounds[j + 1]]
            table = log_rows(part, aspects, m.model_version)
            validate_log_table(table, f"{out} day {part['day'].iloc[0]}", aspects=aspects)
            for piece in session_pieces(table, shard_rows):
                builder.writer.write(piece, int(part["day"].iloc[0]))
            builder.writer.flush()
        n_slots = int(arranged["pos"].max()) + 1
        report = {
            "source": "import",
            "mapping": str(m.path),
            "log_files": [str(f) for f in m.log_files],
            "rows": int(len(arranged)),
            "requests": int(arranged["request"].nunique()),
            "sessions": int(arranged["session_no"].max()) + 1,
            "days": arranged.attrs["days"],
            "slots": m.slots,
            "aspects": aspects,
            "absent_aspects": [a for a in FEEDBACK if a not in aspects],
            "propensity": m.propensity_kind,
            "users": user_rep,
            "items": item_rep,
        }
        meta = builder.finish(
            {
                "source": "import",
                "mapping": m.raw,
                "slots": m.slots,
                "aspects": aspects,
                "propensity": m.propensity_kind,
                "list_size": n_slots,
                "timestamp_unit": m.timestamp_unit,
                "position_base": m.position_base,
                "dates": arranged.attrs["days"],
                "model_version": m.model_version,
                "import": {k: report[k] for k in ("users", "items")},
                "seconds": round(time.perf_counter() - t0, 2),
            },
            valid_days=m.valid_days,
            test_days=m.test_days,
        )
        report["counts"] = meta["counts"]
        report["split"] = {k: len(v) for k, v in meta["split"].items()}
        report["seconds"] = meta["seconds"]
        (builder.tmp / IMPORT_REPORT).write_text(json.dumps(report, indent=2))
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The printed summary of an import report."""
    c = report["counts"]
    lines = [
        f"{c['rows']:,} impressions, {report['requests']:,} requests, {c['sessions']:,} sessions, "
        f"{len(report['days'])} days (split: " + ", ".join(
            f"{k} {v}" for k, v in report["split"].items()) + " shards)",
        f"slots {report['slots']}; propensity {report['propensity']}; aspects "
        f"{', '.join(report['aspects'])}"
        + (f" (absent, written as null: {', '.join(report['absent_aspects'])})"
           if report["absent_aspects"] else ""),
    ]  # fmt: skip
    for g in ("users", "items"):
        r = report[g]
        one = g[:-1]
        lines.append(
            f"{g}: {r['rows']:,} rows; {r[f'log_{g}_missing']:,} of {r[f'log_{g}']:,} log "
            f"{one} ids missing from the table ("
            + ("unknown profile)" if g == "users" else "unknown features)")
        )
        unk = {k: v for k, v in r["unknown_values"].items() if v}
        if unk:
            lines.append("  values outside the vocabulary / missing (-> unknown id 0): "
                         + ", ".join(f"{k} {v:,}" for k, v in unk.items()))  # fmt: skip
    return lines
