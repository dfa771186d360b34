"""The row-level checks of a dataset's log shards: the layout the streaming reader and the
featurisation assume (sessions contiguous in one shard, requests in order, slots), and the
column types every shard must share. Pure functions of tables and arrays; the whole-dataset
pass that runs them is :func:`training.data.validate.validate_dataset`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contract.schema import Problem

#: Values of dataset.json's ``slots``: positions ``0..n-1`` per request, or kept as logged.
SLOTS = ("contiguous", "as_logged")


def session_order_problems(table: pa.Table, source: str, row_offset: int = 0) -> list[Problem]:
    """Problems of the order of requests within the sessions of ``table`` (rows in file order).

    A session here is a run of rows with one ``session_id`` (that a session forms one run is
    checked across the whole file by :func:`validate_dataset`); a request is a run with one
    ``(session_id, request_index)``, as :func:`~training.data.features.build_requests` groups
    them. Within a session ``user_id`` is constant and ``timestamp`` never decreases from row
    to row (so requests are in time order; the rows of one request may carry one time, as the
    row builder writes them, or each impression's own, as KuaiRand logs them: the request's
    time is its first shown slot's); within a request ``request_id`` is constant; from one
    request to the next ``request_index`` strictly increases. At most one problem per column,
    at its first row.
    """
    if table.num_rows == 0:
        return []
    c = {n: table.column(n).to_numpy() for n in
         ("session_id", "request_index", "request_id", "user_id", "timestamp")}  # fmt: skip
    sid = c["session_id"]
    same_sess = np.r_[False, sid[1:] == sid[:-1]]
    same_req = same_sess & np.r_[False, c["request_index"][1:] == c["request_index"][:-1]]
    next_req = same_sess & ~same_req
    out: list[Problem] = []

    def first(column: str, bad: np.ndarray, what: str) -> None:
        if bad.any():
            i = int(np.argmax(bad))
            v, prev = c[column][i], c[column][i - 1]
            out.append(Problem(source, column, what.format(prev=prev, sid=sid[i]),
                               row_offset + i, int(v)))  # fmt: skip

    first("user_id", same_sess & (c["user_id"] != np.r_[0, c["user_id"][:-1]]),
          "session {sid} changes user (the row before has {prev})")  # fmt: skip
    first("request_id", same_req & (c["request_id"] != np.r_[0, c["request_id"][:-1]]),
          "two requests share a request_index in session {sid} (the row before is request "
          "{prev})")  # fmt: skip
    first("request_index", next_req & (c["request_index"] <= np.r_[0, c["request_index"][:-1]]),
          "session {sid}'s requests are out of order or not contiguous (the row before has "
          "request_index {prev}); sort each session's rows by request")  # fmt: skip
    first(
        "timestamp",
        same_sess & (c["timestamp"] < np.r_[0, c["timestamp"][:-1]]),
        "session {sid}'s rows are not in time order (the row before is at {prev})",
    )
    return out


def slot_problems(
    table: pa.Table,
    source: str,
    row_offset: int = 0,
    *,
    slots: str = "contiguous",
    list_size: int | None = None,
) -> list[Problem]:
    """Problems of the shown positions of each request (a run of one ``(session_id,
    request_index)``): a position repeated in a request; with ``slots="contiguous"``, shown
    positions that are not ``0..n-1`` (a skipped slot); with ``list_size``, more than
    ``list_size`` shown items or a position ``>= list_size``. The value reported is the
    request's sorted shown positions. Raises ValueError for ``slots`` outside :data:`SLOTS`.
    """
    if slots not in SLOTS:
        raise ValueError(f"slots={slots!r}: expected one of {SLOTS}")
    if table.num_rows == 0:
        return []
    sid = table.column("session_id").to_numpy()
    rix = table.column("request_index").to_numpy()
    pos = table.column("position").to_numpy().astype(np.int64)
    new_req = np.r_[True, (sid[1:] != sid[:-1]) | (rix[1:] != rix[:-1])]
    starts = np.flatnonzero(new_req)
    req = np.cumsum(new_req) - 1
    shown = pos >= 0
    n_shown = np.bincount(req, weights=shown, minlength=len(starts)).astype(np.int64)
    max_pos = np.maximum.reduceat(pos, starts)
    rows = np.flatnonzero(shown)
    key = req[rows] * (int(pos.max()) + 1) + pos[rows]
    order = np.argsort(key, kind="stable")
    repeat = np.zeros(len(starts), dtype=bool)
    repeat[req[rows[order[1:]][key[order[1:]] == key[order[:-1]]]]] = True
    out = []

    def report(column: str, bad: np.ndarray, what: str) -> None:
        if bad.any():
            r = int(np.argmax(bad))
            lo = starts[r]
            hi = starts[r + 1] if r + 1 < len(starts) else len(pos)
            p = pos[lo:hi]
            i = lo + int(np.argmax(p >= 0))
            shown_pos = sorted(int(x) for x in p[p >= 0])
            out.append(Problem(source, column, what.format(n=int(bad.sum()), sid=sid[lo],
                                                           rix=rix[lo]),
                               row_offset + i, shown_pos))  # fmt: skip

    report("position", repeat, "a slot repeated in request {rix} of session {sid} "
           "({n} requests so)")  # fmt: skip
    if slots == "contiguous":
        report("position", ~repeat & (n_shown > 0) & (max_pos + 1 != n_shown),
               "request {rix} of session {sid} skips a slot (shown positions must be 0..n-1; "
               "{n} requests so); a log that keeps positions as shown declares "
               '"slots": "as_logged" in dataset.json')  # fmt: skip
    if list_size is not None:
        report("position", (n_shown > list_size) | (max_pos >= list_size),
               f"request {{rix}} of session {{sid}} shows more slots than list_size {list_size} "
               "({n} requests so)")  # fmt: skip
    return out


def shard_chunks(pf: pq.ParquetFile, read_rows: int) -> Iterator[tuple[int, pa.Table]]:
    """``(first row, table)`` pieces of a shard in order, each ending where a session run
    ends (the last at the file's end), so no run of one session is cut between pieces."""
    carry: pa.Table | None = None
    start = 0
    for rb in pf.iter_batches(batch_size=read_rows):
        t = pa.Table.from_batches([rb])
        if carry is not None:
            t = pa.concat_tables([carry, t]).combine_chunks()
        sid = t.column("session_id").to_numpy()
        cut = np.flatnonzero(sid[1:] != sid[:-1])
        if cut.size == 0:
            carry = t
            continue
        last = int(cut[-1]) + 1
        yield start, t.slice(0, last)
        carry, start = t.slice(last), start + last
    if carry is not None and carry.num_rows:
        yield start, carry


@dataclass
class SessionRuns:
    """The session runs of every shard: session id, shard index, first row."""

    sid: list[np.ndarray] = field(default_factory=list)
    shard: list[np.ndarray] = field(default_factory=list)
    row: list[np.ndarray] = field(default_factory=list)


def merge_types(
    problems: list[Problem], schema: pa.Schema, ref: tuple[str, pa.Schema], src: str
) -> list[Problem]:
    """Add to a shard's column problems where its types differ from the first shard's."""
    ref_src, ref_schema = ref
    by_col = {p.column: i for i, p in enumerate(problems)}
    for f in schema:
        j = ref_schema.get_field_index(f.name)
        if j < 0 or ref_schema.field(j).type == f.type:
            continue
        note = f"{ref_src} has {ref_schema.field(j).type}"
        if f.name in by_col:
            p = problems[by_col[f.name]]
            problems[by_col[f.name]] = Problem(src, f.name, f"{p.problem} ({note})")
        else:
            problems.append(Problem(src, f.name, f"type {f.type}, but {note}"))
    return problems


def session_run_problems(runs: SessionRuns, files: list[str]) -> list[Problem]:
    """A session must be one run of rows in one shard: each later run of a session is a
    problem, one line per shard (with the count), at the first such run's row."""
    if not runs.sid:
        return []
    sid = np.concatenate(runs.sid)
    shard = np.concatenate(runs.shard)
    row = np.concatenate(runs.row)
    order = np.argsort(sid, kind="stable")  # runs of one session stay in file order
    s = sid[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if not dup.size:
        return []
    later, earlier = order[dup + 1], order[dup]
    out = []
    for k in np.unique(shard[later]):
        here = np.flatnonzero(shard[later] == k)
        j, e = later[here[np.argmin(row[later[here]])]], earlier[here[np.argmin(row[later[here]])]]
        n = here.size
        if shard[e] == k:
            what = (
                f"session not contiguous: its rows start at row {row[e]} and start again "
                f"here ({n} runs so in this shard); the streaming reader would cut it into "
                "pieces and restart its counters: sort the rows by session, then request"
            )
        else:
            what = (f"session also in {files[shard[e]]} from row {row[e]} ({n} sessions so in "
                    "this shard); a session must lie in one shard: the reader ends every "
                    "session at its shard's end")  # fmt: skip
        out.append(Problem(files[k], "session_id", what, int(row[j]), int(sid[j])))
    return out
