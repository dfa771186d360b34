"""The exposure and feedback logs: written off the request path, joined into the training log.

What the service served is logged as impression-log rows (``contract.schema.LOG_SCHEMA``: one
row per candidate, ``position`` -1 for a candidate not shown, propensity, arm and model
version set, feedback null); what users did arrives later as feedback events
(:data:`FEEDBACK_SCHEMA`: ``request_id``, ``item_id``, ``position``, ``timestamp`` and the
log's feedback columns, each nullable: an event reports what it knows).

A :class:`LogSink` takes ``pyarrow.Table`` batches from the request path with a non-blocking
:meth:`LogSink.submit` into a buffer bounded in rows (when full, the batch is dropped and
counted, never awaited), and a background task writes them: a flush when ``flush_rows`` rows
are waiting or ``flush_s`` seconds after the oldest waiting row, each written batch at most
``flush_rows`` rows. Writers:

- :class:`ParquetShardWriter` (default): one Parquet file per batch,
  ``<dir>/part-<start-ms>-<pid>-<seq>.parquet`` (start of the writer in epoch ms, the process
  id so several workers can share a folder, a sequence number), written under a hidden
  temporary name and renamed, so a reader never sees a partial file;
- :class:`RedisStreamWriter`: one ``XADD`` per batch to a Redis stream, the batch as Arrow IPC
  bytes (``rows``, ``arrow`` fields), ``MAXLEN ~`` bounding the stream.

A failed write is counted and its rows dropped (``write_error``); the task keeps running.
:meth:`LogSink.close` writes everything still buffered: nothing is lost on a clean shutdown.

:func:`join_logs` (folders) and :func:`join_feedback` (tables) join the events onto the
exposures by ``(request_id, item_id)`` into impression-log rows that pass the contract's
validator: an impression's feedback is the events' maximum per column (a later event may
report more watch time), 0 where no event reported it; non-impressions keep null feedback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from contract.schema import FEEDBACK, FEEDBACK_BINARY, LOG_SCHEMA, check_columns, log_table
from service.settings import Settings

log = logging.getLogger(__name__)

FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("position", pa.int16(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        *[pa.field(name, pa.int8(), nullable=True) for name in FEEDBACK_BINARY],
        pa.field("watch_time", pa.float32(), nullable=True),
    ],
    metadata={"schema": "feedback_events", "version": "1"},
)
"""Feedback events: what a user did with a served item; ``timestamp`` epoch ms (UTC),
``watch_time`` seconds, a null column means the event does not report it."""

LOG_NAMES = ("exposures", "feedback")
"""The two logs; also their sub-folder and stream-key suffix."""

DROP_REASONS = ("queue_full", "write_error", "closed")
"""Why rows were not written: buffer full, writer failed, submitted after close."""

DropCallback = Callable[[str, str, int], None]
"""``on_drop(log, reason, rows)``."""

KEYS = ["request_id", "item_id"]


class LogWriter(Protocol):
    """Where a sink's batches go: one call per batch, raising on failure."""

    async def write(self, table: pa.Table) -> None: ...

    async def close(self) -> None: ...


class ParquetShardWriter:
    """One atomically written Parquet file per batch under ``directory`` (created if absent).

    Files are ``part-<start-ms>-<pid>-<seq:06d>.parquet``; a file is written as
    ``.part-...parquet.tmp`` and renamed, so ``part-*.parquet`` only ever matches whole files.
    """

    def __init__(self, directory: str | Path, *, compression: str = "zstd") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.compression = compression
        self._start_ms = time.time_ns() // 1_000_000
        self._pid = os.getpid()
        self._seq = 0

    def write_sync(self, table: pa.Table) -> Path:
        """Write ``table`` as the next shard; returns its path. Raises OSError/ArrowException
        and leaves no file behind when the write fails."""
        name = f"part-{self._start_ms}-{self._pid}-{self._seq:06d}.parquet"
        self._seq += 1
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        try:
            pq.write_table(table, tmp, compression=self.compression)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    async def write(self, table: pa.Table) -> None:
        """Write in a worker thread, so the event loop keeps serving."""
        await asyncio.to_thread(self.write_sync, table)

    async def close(self) -> None:
        return None


def table_to_ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC stream bytes (schema included)."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def ipc_to_table(data: bytes) -> pa.Table:
    """The table encoded by :func:`table_to_ipc`."""
    return ipc.open_stream(pa.py_buffer(data)).read_all()


class RedisStreamWriter:
    """One ``XADD <stream> MAXLEN ~ <maxlen> * rows <n> arrow <ipc bytes>`` per batch.

    ``maxlen`` bounds entries (batches), not rows. The client is owned: closed by ``close``.
    """

    def __init__(self, client: aioredis.Redis, stream: str, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f"stream maxlen {maxlen!r} must be >= 1")
        self.client = client
        self.stream = stream
        self.maxlen = maxlen

    async def write(self, table: pa.Table) -> None:
        fields: dict[FieldT, EncodableT] = {"rows": table.num_rows, "arrow": table_to_ipc(table)}
        await self.client.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)

    async def close(self) -> None:
        await self.client.aclose()


async def read_stream(client: aioredis.Redis, stream: str, schema: pa.Schema) -> pa.Table:
    """Every batch in a log stream, oldest first, as one table of ``schema`` (for compaction
    to Parquet and tests). Reads the whole stream: bounded by its MAXLEN."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(stream))
    tables = [ipc_to_table(fields[b"arrow"]) for _, fields in entries]
    return pa.concat_tables(tables) if tables else schema.empty_table()


@dataclass
class SinkStats:
    """Rows through one sink: submitted = written + dropped + still buffered."""

    submitted_rows: int = 0
    written_rows: int = 0
    written_batches: int = 0
    dropped_rows: Counter[str] = field(default_factory=Counter)
    write_errors: Counter[str] = field(default_factory=Counter)


def _error_reason(exc: BaseException) -> str:
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError):
        return "connection"
    if isinstance(exc, RedisError):
        return "redis_error"
    if isinstance(exc, OSError):
        return "io"
    return type(exc).__name__


class LogSink:
    """Buffers submitted tables of one log and writes them in the background.

    ``name`` is "exposures" or "feedback"; ``schema`` the tables' schema (``LOG_SCHEMA`` or
    :data:`FEEDBACK_SCHEMA`); ``max_pending_rows`` bounds the buffer. ``on_drop(log, reason,
    rows)`` is told of every drop (the app forwards it to ``Metrics.record_log_drop``).
    Call :meth:`start` inside the running event loop and :meth:`close` at shutdown.
    """

    def __init__(
        self,
        name: str,
        schema: pa.Schema,
        writer: LogWriter,
        *,
        flush_rows: int,
        flush_s: float,
        max_pending_rows: int,
        on_drop: DropCallback | None = None,
    ) -> None:
        if name not in LOG_NAMES:
            raise ValueError(f"unknown log {name!r} (logs {list(LOG_NAMES)})")
        for what, v in (("flush_rows", flush_rows), ("max_pending_rows", max_pending_rows)):
            if v < 1:
                raise ValueError(f"{what} {v!r} must be >= 1")
        if not flush_s > 0:
            raise ValueError(f"flush_s {flush_s!r} must be > 0")
        self.name = name
        self.schema = schema
        self.writer = writer
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.max_pending_rows = max_pending_rows
        self.stats = SinkStats()
        self._on_drop = on_drop
        self._pending: list[pa.Table | _Columns] = []
        self._pending_rows = 0
        self._oldest_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False

    @property
    def pending_rows(self) -> int:
        """Rows submitted and not yet handed to the writer."""
        return self._pending_rows

    def start(self) -> None:
        """Start the background writer task on the running loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"log-sink-{self.name}"
            )

    def submit(self, table: pa.Table) -> bool:
        """Queue ``table`` for writing without blocking; False if it was dropped (counted).

        Call from the event loop's thread (a request handler); the table is not copied.

        The table must have the sink's columns and types (extra columns are ignored); raises
        ``contract.schema.LogValidationError`` (a ValueError) naming the bad column otherwise.
        """
        check_columns(table.schema, self.schema, f"{self.name} log")
        n = table.num_rows
        self.stats.submitted_rows += n
        if n == 0:
            return True
        if table.schema.names != self.schema.names:
            table = table.select(self.schema.names)
        if not table.schema.equals(self.schema):
            table = table.cast(self.schema)
        return self._admit(table, n)

    def submit_columns(self, cols: dict[str, np.ndarray], arm: str, model_version: str) -> bool:
        """Queue served lists as the column arrays of ``contract.schema.log_table`` (for the
        exposures log); the rows are built in the background, many requests per
        ``log_table`` call, so the request path pays for a dict, not for Arrow arrays.
        False if dropped (counted)."""
        r, c = cols["item_id"].shape
        self.stats.submitted_rows += r * c
        return self._admit(_Columns(cols, arm, model_version), r * c)

    def _admit(self, item: pa.Table | _Columns, n: int) -> bool:
        """Buffer ``item`` (``n`` rows) unless closing or full (then drop and count)."""
        if self._closing:
            self._drop("closed", n)
            return False
        if self._pending_rows + n > self.max_pending_rows:
            self._drop("queue_full", n)
            return False
        if not self._pending:
            self._oldest_at = asyncio.get_running_loop().time()
            self._wake.set()
        self._pending.append(item)
        self._pending_rows += n
        if self._pending_rows >= self.flush_rows:
            self._wake.set()
        return True

    async def close(self) -> None:
        """Write everything buffered, stop the task and close the writer (idempotent)."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        if self._task is None:
            await self._flush()
        else:
            await self._task
        await self.writer.close()
        self._closed = True

    def _drop(self, reason: str, rows: int) -> None:
        self.stats.dropped_rows[reason] += rows
        if self._on_drop is not None:
            self._on_drop(self.name, reason, rows)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = self._oldest_at + self.flush_s
            while self._pending_rows < self.flush_rows and not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(_materialise(self._pending, self.schema))
        self._pending, self._pending_rows = [], 0
        for start in range(0, table.num_rows, self.flush_rows):
            batch = table.slice(start, self.flush_rows)
            try:
                await self.writer.write(batch)
            except Exception as exc:  # the writer task must outlive any failed write
                reason = _error_reason(exc)
                self.stats.write_errors[reason] += 1
                self._drop("write_error", batch.num_rows)
                log.warning("%s log: %d rows dropped, write failed: %r", self.name, len(batch), exc)
                continue
            self.stats.written_rows += batch.num_rows
            self.stats.written_batches += 1


@dataclass(frozen=True)
class _Columns:
    """Served lists waiting to become impression-log rows (see ``LogSink.submit_columns``)."""

    cols: dict[str, np.ndarray]
    arm: str
    model_version: str

    @property
    def key(self) -> tuple:
        return (self.arm, self.model_version, self.cols["item_id"].shape[1],
                self.cols["propensity"].shape[1])  # fmt: skip


def _materialise(pending: list[pa.Table | _Columns], schema: pa.Schema) -> list[pa.Table]:
    """Tables in submission order; runs of column records of one arm, model version and
    list shape are built by one ``log_table`` call."""
    out: list[pa.Table] = []
    run: list[_Columns] = []

    def close_run() -> None:
        if run:
            cols = {k: np.concatenate([x.cols[k] for x in run]) for k in run[0].cols}
            out.append(log_table(cols, run[0].arm, run[0].model_version).cast(schema))
            run.clear()

    for item in pending:
        if isinstance(item, _Columns):
            if run and run[0].key != item.key:
                close_run()
            run.append(item)
        else:
            close_run()
            out.append(item)
    close_run()
    return out


@dataclass
class LogSinks:
    """The exposure and feedback sinks of one process, started and closed together."""

    exposures: LogSink
    feedback: LogSink

    def start(self) -> None:
        self.exposures.start()
        self.feedback.start()

    async def close(self) -> None:
        await asyncio.gather(self.exposures.close(), self.feedback.close())


def build_log_sinks(settings: Settings, on_drop: DropCallback | None = None) -> LogSinks:
    """The sinks the settings ask for: Redis streams ``<log_stream_key>:<log>`` when
    ``log_stream_key`` is set, else Parquet shards under ``<log_dir>/<log>/``."""
    if settings.log_stream_key is not None and settings.redis_url is None:
        raise ValueError(f"log_stream_key={settings.log_stream_key!r} needs redis_url")
    writers: dict[str, LogWriter] = {}
    for name in LOG_NAMES:
        if settings.log_stream_key is not None and settings.redis_url is not None:
            client = aioredis.from_url(
                settings.redis_url,
                socket_connect_timeout=settings.log_stream_timeout_ms / 1000,
                socket_timeout=settings.log_stream_timeout_ms / 1000,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            )
            stream = f"{settings.log_stream_key}:{name}"
            writers[name] = RedisStreamWriter(client, stream, settings.log_stream_maxlen)
        else:
            writers[name] = ParquetShardWriter(Path(settings.log_dir) / name)
    schemas = {"exposures": LOG_SCHEMA, "feedback": FEEDBACK_SCHEMA}
    sinks = {
        name: LogSink(
            name,
            schemas[name],
            writers[name],
            flush_rows=settings.log_flush_rows,
            flush_s=settings.log_flush_s,
            max_pending_rows=settings.log_queue_rows,
            on_drop=on_drop,
        )
        for name in LOG_NAMES
    }
    return LogSinks(**sinks)


# Joining feedback onto exposures --------------------------------------------------------


@dataclass(frozen=True)
class JoinResult:
    """The joined impression log and the feedback events that matched no impression."""

    table: pa.Table
    unmatched_events: int


def join_feedback(exposures: pa.Table, feedback: pa.Table) -> JoinResult:
    """Impression-log rows: ``exposures`` (LOG_SCHEMA) with ``feedback`` events joined on.

    Per ``(request_id, item_id)`` the events are reduced by column maximum (nulls ignored);
    an impression (``position >= 0``) gets that maximum or 0 where no event reported the
    column; a non-impression keeps null feedback, and events on non-impressions or unknown
    pairs are counted in ``unmatched_events``. An event's ``position`` and ``timestamp`` are
    informational: the exposure's are kept. Rows come out grouped by session, sessions in
    order of their first timestamp, requests in order, impressions by position then the
    non-impressions (the simulator's order). Raises LogValidationError naming a missing or
    mistyped column.
    """
    check_columns(exposures.schema, LOG_SCHEMA, "exposures")
    check_columns(feedback.schema, FEEDBACK_SCHEMA, "feedback")
    agg = (
        feedback.select([*KEYS, *FEEDBACK])
        .group_by(KEYS)
        .aggregate([(name, "max") for name in FEEDBACK])
    )
    base = exposures.select([n for n in LOG_SCHEMA.names if n not in FEEDBACK])
    joined = base.join(agg, keys=KEYS, join_type="left outer")

    shown = pc.greater_equal(joined.column("position"), 0)
    columns = {name: joined.column(name) for name in base.column_names}
    for name in FEEDBACK:
        typ = LOG_SCHEMA.field(name).type
        value = pc.coalesce(joined.column(f"{name}_max"), pa.scalar(0, typ))
        columns[name] = pc.if_else(shown, value, pa.scalar(None, typ))
    table = pa.table([columns[n] for n in LOG_SCHEMA.names], schema=LOG_SCHEMA)

    shown_keys = exposures.filter(pc.greater_equal(exposures.column("position"), 0)).select(KEYS)
    unmatched = feedback.select(KEYS).join(shown_keys, keys=KEYS, join_type="left anti")
    return JoinResult(_session_order(table), unmatched.num_rows)


def _session_order(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table
    sid = table.column("session_id").to_numpy()
    ts = table.column("timestamp").to_numpy()
    _, inverse = np.unique(sid, return_inverse=True)
    start = np.full(inverse.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(start, inverse, ts)
    pos = table.column("position").to_numpy().astype(np.int32)
    slot = np.where(pos < 0, np.iinfo(np.int32).max, pos)
    order = np.lexsort(
        (
            table.column("item_id").to_numpy(),
            slot,
            table.column("request_index").to_numpy(),
            table.column("request_id").to_numpy(),
            sid,
            start[inverse],
        )
    )
    return table.take(pa.array(order))


def read_shards(directory: str | Path, schema: pa.Schema) -> pa.Table:
    """Every ``part-*.parquet`` under ``directory`` (temporary files excluded), in name order,
    as one table of ``schema``; an absent or empty folder gives an empty table."""
    paths = sorted(Path(directory).glob("part-*.parquet"))
    tables = [pq.read_table(p, schema=schema) for p in paths]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def join_logs(exposure_dir: str | Path, feedback_dir: str | Path) -> pa.Table:
    """The impression log (LOG_SCHEMA) of the exposure shards with the feedback shards joined
    on (see :func:`join_feedback`); valid input to ``contract.schema.validate_log_table``."""
    return join_feedback(
        read_shards(exposure_dir, LOG_SCHEMA), read_shards(feedback_dir, FEEDBACK_SCHEMA)
    ).table
