"""Exposure and feedback logs: non-blocking submit, bounded buffer, atomic shards, Redis
streams, and the join that turns them into a valid impression log."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import service.exposure as exposure
from contract.schema import (
    FEEDBACK,
    LOG_SCHEMA,
    LogValidationError,
    validate_log_file,
    validate_log_table,
)
from service.exposure import (
    FEEDBACK_SCHEMA,
    LogSink,
    ParquetShardWriter,
    RedisStreamWriter,
    build_log_sinks,
    join_feedback,
    join_logs,
    read_shards,
    read_stream,
)
from service.settings import Settings
from tests.service.conftest import SHARED_REDIS_URL, free_port


def exposure_table(
    rng: np.random.Generator,
    first_request: int,
    n_requests: int,
    n_candidates: int = 8,
    k: int = 4,
    session_of=lambda r: r // 3,
) -> pa.Table:
    """Served requests as LOG_SCHEMA rows: k shown items by position, then the rest (-1)."""
    cols: dict[str, list] = {name: [] for name in LOG_SCHEMA.names}
    for r in range(first_request, first_request + n_requests):
        items = rng.choice(10_000, size=n_candidates, replace=False)
        for j, item in enumerate(items):
            shown = j < k
            cols["request_id"].append(r)
            cols["session_id"].append(session_of(r))
            cols["user_id"].append(7)
            cols["timestamp"].append(1_700_000_000_000 + 1000 * r)
            cols["request_index"].append(r % 3)
            cols["position"].append(j if shown else -1)
            cols["item_id"].append(int(item))
            cols["arm"].append("A")
            cols["model_version"].append("m1")
            cols["propensity"].append(float(rng.uniform(0.05, 1.0)) if shown else None)
            for name in FEEDBACK:
                cols[name].append(None)
    return pa.table(cols, schema=LOG_SCHEMA)


def event_on(row: dict, **feedback) -> dict:
    """A feedback event on a served row, a moment after it was served."""
    return {
        "request_id": row["request_id"],
        "item_id": row["item_id"],
        "position": row["position"],
        "timestamp": row["timestamp"] + 10,
        **feedback,
    }


def feedback_table(events: list[dict]) -> pa.Table:
    """Feedback events from dicts (position and timestamp default to 0, feedback to null)."""
    defaults = {"position": 0, "timestamp": 0}
    cols = {n: [e.get(n, defaults.get(n)) for e in events] for n in FEEDBACK_SCHEMA.names}
    return pa.table(cols, schema=FEEDBACK_SCHEMA)


def parquet_sink(directory: Path, **kw) -> LogSink:
    opts = {"flush_rows": 1000, "flush_s": 60.0, "max_pending_rows": 100_000} | kw
    return LogSink("exposures", LOG_SCHEMA, ParquetShardWriter(directory), **opts)


async def poll(predicate, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Yield to the event loop until ``predicate`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


def part_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("part-*.parquet"))


# The sink ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rows_submitted_equal_rows_written_after_close(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sink = parquet_sink(tmp_path, flush_rows=100)
    sink.start()
    tables = [exposure_table(rng, 10 * i, 3) for i in range(30)]  # 30 x 24 rows
    for t in tables:
        assert sink.submit(t)
    await sink.close()
    written = read_shards(tmp_path, LOG_SCHEMA)
    assert written.num_rows == 720 == sink.stats.written_rows == sink.stats.submitted_rows
    assert all(pq.read_metadata(p).num_rows <= 100 for p in part_files(tmp_path))
    assert sorted(written.column("request_id").to_pylist()) == sorted(
        pa.concat_tables(tables).column("request_id").to_pylist()
    )
    assert not sink.stats.dropped_rows


@pytest.mark.asyncio
async def test_a_full_batch_is_flushed_without_waiting_for_the_timer(tmp_path: Path) -> None:
    sink = parquet_sink(tmp_path, flush_rows=48, flush_s=3600.0)
    sink.start()
    sink.submit(exposure_table(np.random.default_rng(1), 0, 6))  # 48 rows
    await poll(lambda: len(part_files(tmp_path)) == 1, what="a shard")
    assert sink.pending_rows == 0
    await sink.close()


@pytest.mark.asyncio
async def test_rows_are_flushed_after_flush_s(tmp_path: Path) -> None:
    sink = parquet_sink(tmp_path, flush_rows=10_000, flush_s=0.05)
    sink.start()
    sink.submit(exposure_table(np.random.default_rng(2), 0, 1))
    assert part_files(tmp_path) == []  # submit never writes on the caller's path
    # The writer counts the rows after the file is in place: wait for the count, not the file
    # (the file alone raced the counter on a loaded machine).
    await poll(lambda: sink.stats.written_rows == 8, what="a timed flush")
    assert len(part_files(tmp_path)) == 1
    await sink.close()


@pytest.mark.asyncio
async def test_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    drops: list[tuple[str, str, int]] = []
    sink = parquet_sink(tmp_path, max_pending_rows=20, on_drop=lambda *a: drops.append(a))
    rng = np.random.default_rng(3)
    assert sink.submit(exposure_table(rng, 0, 2))  # 16 rows: fits
    assert not sink.submit(exposure_table(rng, 2, 1))  # 8 more: over 20, dropped
    assert sink.stats.dropped_rows["queue_full"] == 8
    assert drops == [("exposures", "queue_full", 8)]
    sink.start()
    await sink.close()
    assert read_shards(tmp_path, LOG_SCHEMA).num_rows == 16
    assert sink.stats.submitted_rows == 24


@pytest.mark.asyncio
async def test_submit_after_close_is_dropped_as_closed(tmp_path: Path) -> None:
    sink = parquet_sink(tmp_path)
    sink.start()
    await sink.close()
    assert not sink.submit(exposure_table(np.random.default_rng(4), 0, 1))
    assert sink.stats.dropped_rows["closed"] == 8


@pytest.mark.asyncio
async def test_a_table_with_a_wrong_column_is_refused_by_name(tmp_path: Path) -> None:
    sink = parquet_sink(tmp_path)
    table = exposure_table(np.random.default_rng(5), 0, 1)
    bad = table.set_column(
        table.schema.get_field_index("position"),
        "position",
        table.column("position").cast(pa.int32()),
    )
    with pytest.raises(LogValidationError, match="'position'"):
        sink.submit(bad)
    with pytest.raises(LogValidationError, match="'arm'"):
        sink.submit(table.drop_columns(["arm"]))
    await sink.close()


@pytest.mark.asyncio
async def test_shards_appear_only_whole_under_their_final_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[list[str], list[str]]] = []
    real_write = pq.write_table

    def observing_write(table, where, **kw):
        real_write(table, where, **kw)
        # Written, not yet renamed: the data exists only under the temporary name.
        seen.append(
            (
                [p.name for p in part_files(tmp_path)],
                [p.name for p in tmp_path.glob(".part-*.tmp")],
            )
        )

    monkeypatch.setattr(exposure.pq, "write_table", observing_write)
    sink = parquet_sink(tmp_path)
    sink.start()
    sink.submit(exposure_table(np.random.default_rng(6), 0, 2))
    await sink.close()
    assert len(seen) == 1
    finals_during_write, tmps_during_write = seen[0]
    assert finals_during_write == [] and len(tmps_during_write) == 1
    assert [p.name for p in part_files(tmp_path)] == [tmps_during_write[0][1:-4]]
    assert list(tmp_path.glob(".*")) == []


@pytest.mark.asyncio
async def test_a_failed_write_leaves_no_file_and_the_sink_keeps_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = pq.write_table
    calls = {"n": 0}

    def failing_once(table, where, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            Path(where).write_bytes(b"PAR1 half a file")
            raise OSError(28, "No space left on device")
        real_write(table, where, **kw)

    monkeypatch.setattr(exposure.pq, "write_table", failing_once)
    sink = parquet_sink(tmp_path, flush_rows=16)
    sink.start()
    rng = np.random.default_rng(7)
    sink.submit(exposure_table(rng, 0, 2))
    await poll(lambda: sink.stats.write_errors["io"] == 1, what="the failed write")
    sink.submit(exposure_table(rng, 2, 2))
    await sink.close()
    assert sink.stats.dropped_rows["write_error"] == 16
    assert sink.stats.written_rows == 16
    assert len(part_files(tmp_path)) == 1
    assert list(tmp_path.glob(".*")) == []


@pytest.mark.asyncio
async def test_build_log_sinks_writes_parquet_under_log_dir(tmp_path: Path) -> None:
    sinks = build_log_sinks(Settings(log_dir=tmp_path, log_flush_rows=5))
    sinks.start()
    sinks.exposures.submit(exposure_table(np.random.default_rng(8), 0, 1))
    sinks.feedback.submit(feedback_table([{"request_id": 0, "item_id": 1, "click": 1}]))
    await sinks.close()
    assert read_shards(tmp_path / "exposures", LOG_SCHEMA).num_rows == 8
    assert len(part_files(tmp_path / "exposures")) == 2  # 8 rows in files of at most 5
    assert read_shards(tmp_path / "feedback", FEEDBACK_SCHEMA).num_rows == 1


# Redis streams -----------------------------------------------------------------------------


@pytest.fixture
def stream_key(shared_redis: redis.Redis):
    key = f"test:{uuid.uuid4().hex}:exposures"
    yield key
    shared_redis.delete(key)


@pytest.mark.asyncio
async def test_redis_stream_sink_round_trips_every_row(
    shared_redis: redis.Redis, stream_key: str
) -> None:
    writer = RedisStreamWriter(aioredis.from_url(SHARED_REDIS_URL), stream_key, maxlen=1000)
    sink = LogSink(
        "exposures", LOG_SCHEMA, writer, flush_rows=20, flush_s=60.0, max_pending_rows=10_000
    )
    sink.start()
    rng = np.random.default_rng(9)
    tables = [exposure_table(rng, 5 * i, 5) for i in range(4)]  # 4 x 40 rows
    for t in tables:
        sink.submit(t)
    await sink.close()
    assert shared_redis.xlen(stream_key) == 8  # 160 rows in entries of 20
    reader = aioredis.from_url(SHARED_REDIS_URL)
    got = await read_stream(reader, stream_key, LOG_SCHEMA)
    await reader.aclose()
    assert got.num_rows == 160
    assert got.equals(pa.concat_tables(tables))


@pytest.mark.asyncio
async def test_build_log_sinks_writes_streams_when_a_stream_key_is_set(
    shared_redis: redis.Redis,
) -> None:
    key = f"test:{uuid.uuid4().hex}"
    settings = Settings(redis_url=SHARED_REDIS_URL, log_stream_key=key, log_stream_maxlen=50)
    sinks = build_log_sinks(settings)
    sinks.start()
    try:
        sinks.exposures.submit(exposure_table(np.random.default_rng(15), 0, 2))
        sinks.feedback.submit(feedback_table([{"request_id": 0, "item_id": 3, "like": 1}]))
        await sinks.close()
        assert shared_redis.xlen(f"{key}:exposures") == 1
        assert shared_redis.xlen(f"{key}:feedback") == 1
        entry = shared_redis.xrange(f"{key}:exposures")[0][1]
        assert int(entry[b"rows"]) == 16
    finally:
        shared_redis.delete(f"{key}:exposures", f"{key}:feedback")


@pytest.mark.asyncio
async def test_redis_stream_is_trimmed_to_about_maxlen(
    shared_redis: redis.Redis, stream_key: str
) -> None:
    writer = RedisStreamWriter(aioredis.from_url(SHARED_REDIS_URL), stream_key, maxlen=10)
    sink = LogSink(
        "exposures", LOG_SCHEMA, writer, flush_rows=1, flush_s=60.0, max_pending_rows=10_000
    )
    sink.start()
    sink.submit(exposure_table(np.random.default_rng(10), 0, 40))  # 320 one-row entries
    await sink.close()
    # MAXLEN ~ trims whole radix-tree nodes (100 entries by default), never below 10.
    assert 10 <= shared_redis.xlen(stream_key) < 320


@pytest.mark.asyncio
async def test_redis_stream_errors_are_counted_and_rows_dropped() -> None:
    dead = aioredis.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        socket_connect_timeout=0.2,
        socket_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
    )
    drops: list[tuple[str, str, int]] = []
    sink = LogSink(
        "exposures",
        LOG_SCHEMA,
        RedisStreamWriter(dead, "nowhere", maxlen=10),
        flush_rows=8,
        flush_s=60.0,
        max_pending_rows=1000,
        on_drop=lambda *a: drops.append(a),
    )
    sink.start()
    sink.submit(exposure_table(np.random.default_rng(11), 0, 2))
    await sink.close()
    assert sink.stats.write_errors["connection"] == 2
    assert sink.stats.dropped_rows["write_error"] == 16
    assert drops == [("exposures", "write_error", 8)] * 2


# Joining feedback onto exposures -----------------------------------------------------------


def test_joined_log_has_feedback_filled_and_passes_the_validator() -> None:
    rng = np.random.default_rng(12)
    exp = exposure_table(rng, 0, 6)
    rows = exp.to_pylist()
    shown = [r for r in rows if r["position"] >= 0]
    hidden = [r for r in rows if r["position"] < 0]
    a, b = shown[0], shown[5]

    events = [
        event_on(a, click=1, watch_time=3.0),
        event_on(a, like=1, watch_time=12.5),  # a later event on the same item
        event_on(b, click=1, long_view=1),
        event_on(hidden[0], click=1),  # a candidate never shown: unmatched
        {"request_id": 999, "item_id": 1, "click": 1},
    ]
    result = join_feedback(exp, feedback_table(events))
    validate_log_table(result.table, "joined")
    assert result.table.num_rows == exp.num_rows
    assert result.unmatched_events == 2

    by_key = {(r["request_id"], r["item_id"]): r for r in result.table.to_pylist()}
    ra = by_key[(a["request_id"], a["item_id"])]
    assert (ra["click"], ra["like"], ra["hate"], ra["watch_time"]) == (1, 1, 0, 12.5)
    rb = by_key[(b["request_id"], b["item_id"])]
    assert (rb["click"], rb["long_view"], rb["watch_time"]) == (1, 1, 0.0)
    quiet = by_key[(shown[1]["request_id"], shown[1]["item_id"])]
    assert all(quiet[name] == 0 for name in FEEDBACK)
    unshown = by_key[(hidden[0]["request_id"], hidden[0]["item_id"])]
    assert all(unshown[name] is None for name in FEEDBACK)
    assert unshown["propensity"] is None


def test_joined_rows_come_in_session_request_position_order() -> None:
    rng = np.random.default_rng(13)
    exp = exposure_table(rng, 0, 6)
    shuffled = exp.take(pa.array(rng.permutation(exp.num_rows)))
    table = join_feedback(shuffled, FEEDBACK_SCHEMA.empty_table()).table
    rid = table.column("request_id").to_pylist()
    pos = table.column("position").to_pylist()
    assert rid == sorted(rid)
    first = pos[:8]
    assert first[:4] == [0, 1, 2, 3] and first[4:] == [-1] * 4


@pytest.mark.asyncio
async def test_join_logs_of_written_shards_is_a_valid_log_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    sinks = build_log_sinks(Settings(log_dir=tmp_path, log_flush_rows=30))
    sinks.start()
    served = [exposure_table(rng, 4 * i, 4) for i in range(5)]
    events = []
    for t in served:
        sinks.exposures.submit(t)
        for r in t.to_pylist():
            if r["position"] >= 0 and rng.uniform() < 0.4:
                events.append(event_on(r, click=1, watch_time=float(rng.uniform(0, 30))))
    sinks.feedback.submit(feedback_table(events))
    await sinks.close()

    joined = join_logs(tmp_path / "exposures", tmp_path / "feedback")
    out = tmp_path / "joined" / "part-00000.parquet"
    out.parent.mkdir()
    pq.write_table(joined, out)
    assert validate_log_file(out) == 160
    assert pc_sum(joined, "click") == len(events)


def pc_sum(table: pa.Table, column: str) -> int:
    return int(np.nansum(table.column(column).to_numpy(zero_copy_only=False)))


@pytest.mark.asyncio
async def test_submitted_columns_are_written_as_the_row_builder_builds_them(tmp_path: Path) -> None:
    """Column records (the service's request path) are built into rows in the background,
    runs of one arm in one ``log_table`` call, in submission order among plain tables."""
    from contract.schema import log_table

    rng = np.random.default_rng(1)
    sink = parquet_sink(tmp_path)
    sink.start()
    expected = []
    for i, arm in enumerate(["a", "a", "b", "table", "a"]):
        if arm == "table":
            t = exposure_table(rng, 900, 2)
            sink.submit(t)
            expected.append(t)
            continue
        cols = {
            "request_id": np.array([i]), "session_id": np.array([7]), "user_id": np.array([3]),
            "timestamp": np.array([1_700_000_000_000 + i]),
            "request_index": np.array([i], dtype=np.int32),
            "item_id": rng.choice(1000, size=(1, 6), replace=False),
            "propensity": rng.uniform(0.1, 1, size=(1, 3)),
        }  # fmt: skip
        assert sink.submit_columns(cols, arm, f"v-{arm}")
        expected.append(log_table(cols, arm, f"v-{arm}"))
    await sink.close()
    written = read_shards(tmp_path, LOG_SCHEMA)
    want = pa.concat_tables(expected)
    assert written.num_rows == want.num_rows == sink.stats.written_rows == sink.stats.submitted_rows
    assert written.equals(want)
