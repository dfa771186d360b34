"""Session-state stores: round trips, TTLs, bounded size, and a Redis that dies and returns."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis

from service.settings import Settings
from service.state_store import (
    InProcessStore,
    RedisStore,
    build_state_store,
    state_key,
)
from tests.service.conftest import SHARED_REDIS_URL, FakeClock, RedisServer

CONNECT_MS = 50.0
READ_MS = 300.0
# A call may cost one connect plus one read timeout, plus slack for a busy machine; a retried
# call (two read timeouts) would exceed the bound.
CALL_BOUND_S = (CONNECT_MS + READ_MS) / 1000 + 0.2
assert CALL_BOUND_S < 2 * READ_MS / 1000


# state_key ---------------------------------------------------------------------------------


def test_state_key_separates_schema_versions_and_arms() -> None:
    keys = {state_key("1", "A", "s1"), state_key("2", "A", "s1"), state_key("1", "B", "s1")}
    assert len(keys) == 3
    assert state_key("3", "drl", 42) == "state:v3:drl:42"


@pytest.mark.parametrize(("version", "arm"), [("1:2", "A"), ("1", "A:B"), ("", "A"), ("1", "")])
def test_state_key_refuses_ambiguous_parts(version: str, arm: str) -> None:
    with pytest.raises(ValueError, match="schema_version|arm"):
        state_key(version, arm, "s")


# InProcessStore ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_in_process_round_trip_and_counts() -> None:
    events: list[tuple[str, str | None]] = []
    store = InProcessStore(10, 60.0, on_event=lambda e, r: events.append((e, r)))
    key = state_key("1", "A", "s1")
    assert await store.get(key) is None
    await store.set(key, b"\x00state")
    assert await store.get(key) == b"\x00state"
    await store.delete(key)
    assert await store.get(key) is None
    assert (store.stats.hits, store.stats.misses, store.stats.sets) == (1, 2, 1)
    assert events == [("miss", None), ("set", None), ("hit", None), ("miss", None)]


@pytest.mark.asyncio
async def test_in_process_state_expires_after_ttl() -> None:
    clock = FakeClock()
    store = InProcessStore(10, ttl_s=5.0, timer=clock)
    await store.set("k", b"v")
    clock.advance(4.9)
    assert await store.get("k") == b"v"
    clock.advance(0.2)
    assert await store.get("k") is None


@pytest.mark.asyncio
async def test_in_process_ttl_restarts_on_every_set() -> None:
    clock = FakeClock()
    store = InProcessStore(10, ttl_s=5.0, timer=clock)
    await store.set("k", b"v1")
    clock.advance(4.0)
    await store.set("k", b"v2")
    clock.advance(4.0)
    assert await store.get("k") == b"v2"


@pytest.mark.asyncio
async def test_full_in_process_store_evicts_least_recent_and_never_fails() -> None:
    store = InProcessStore(2, 60.0)
    await store.set("a", b"1")
    await store.set("b", b"2")
    assert await store.get("a") == b"1"  # "a" is now more recent than "b"
    await store.set("c", b"3")
    assert len(store) == 2
    assert await store.get("b") is None
    assert await store.get("a") == b"1" and await store.get("c") == b"3"
    assert store.stats.evictions == 1


@pytest.mark.asyncio
async def test_store_refuses_non_bytes_values() -> None:
    store = InProcessStore(2, 60.0)
    with pytest.raises(TypeError, match="'k'"):
        await store.set("k", "not bytes")  # type: ignore[arg-type]


def test_build_state_store_follows_settings() -> None:
    assert isinstance(build_state_store(Settings()), InProcessStore)
    store = build_state_store(Settings(redis_url=SHARED_REDIS_URL, state_key_prefix="p:"))
    assert isinstance(store, RedisStore) and store.prefix == "p:"


# RedisStore on the shared Redis ------------------------------------------------------------


@pytest.mark.asyncio
async def test_redis_round_trip_with_ttl_set(shared_redis: redis.Redis, unique_prefix: str) -> None:
    store = RedisStore(SHARED_REDIS_URL, ttl_s=30.0, prefix=unique_prefix)
    key = state_key("1", "A", "s1")
    assert await store.get(key) is None
    await store.set(key, b"\x01\x02")
    assert await store.get(key) == b"\x01\x02"
    pttl = shared_redis.pttl(unique_prefix + key)
    assert 0 < pttl <= 30_000
    await store.delete(key)
    assert shared_redis.exists(unique_prefix + key) == 0
    assert (store.stats.hits, store.stats.misses, store.stats.sets) == (1, 1, 1)
    assert not store.stats.errors
    await store.close()


@pytest.mark.asyncio
async def test_redis_keys_of_another_schema_version_are_not_read(unique_prefix: str) -> None:
    store = RedisStore(SHARED_REDIS_URL, ttl_s=30.0, prefix=unique_prefix)
    await store.set(state_key("1", "A", "s"), b"old layout")
    assert await store.get(state_key("2", "A", "s")) is None
    await store.close()


# RedisStore against a private redis-server that dies -------------------------------------


async def timed(coro) -> tuple[object, float]:
    t0 = time.monotonic()
    result = await coro
    return result, time.monotonic() - t0


@pytest.mark.asyncio
async def test_killed_redis_degrades_then_recovers_without_rebuilding(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(
        redis_server.url,
        60.0,
        connect_timeout_ms=CONNECT_MS,
        read_timeout_ms=READ_MS,
        breaker_ms=0,
    )
    await store.set("k", b"before")
    assert await store.get("k") == b"before"

    redis_server.kill()
    for _ in range(3):
        value, took = await timed(store.get("k"))
        assert value is None and took < CALL_BOUND_S
        _, took = await timed(store.set("k", b"during"))
        assert took < CALL_BOUND_S
    assert store.stats.errors["connection"] == 6

    redis_server.start()  # same port, empty (no persistence)
    assert await store.get("k") is None
    await store.set("k", b"after")
    assert await store.get("k") == b"after"
    assert store.stats.errors["connection"] == 6
    assert store.stats.hits == 2
    await store.close()


@pytest.mark.asyncio
async def test_stalled_redis_times_out_within_the_read_timeout(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(
        redis_server.url,
        60.0,
        connect_timeout_ms=CONNECT_MS,
        read_timeout_ms=READ_MS,
        breaker_ms=0,
    )
    await store.set("k", b"v")
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(2):
            value, took = await timed(store.get("k"))
            assert value is None and took < CALL_BOUND_S
            _, took = await timed(store.set("k", b"w"))
            assert took < CALL_BOUND_S
        assert store.stats.errors["timeout"] == 4
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert await store.get("k") is not None
    await store.close()


@pytest.mark.asyncio
async def test_circuit_breaker_skips_redis_for_its_window_then_retries(
    redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    store = RedisStore(
        redis_server.url,
        60.0,
        connect_timeout_ms=CONNECT_MS,
        read_timeout_ms=READ_MS,
        breaker_ms=500,
        clock=clock,
    )
    await store.set("k", b"v")
    redis_server.kill()
    assert await store.get("k") is None
    assert store.stats.errors["connection"] == 1 and store.breaker_open

    redis_server.start()
    await store.set("k", b"v2")  # skipped: the breaker is open although Redis is back
    assert await store.get("k") is None
    assert store.stats.errors["circuit_open"] == 2
    assert store.stats.errors["connection"] == 1

    clock.advance(0.5)
    assert not store.breaker_open
    await store.set("k", b"v3")
    assert await store.get("k") == b"v3"
    await store.close()


@pytest.mark.asyncio
async def test_breaker_reopens_when_the_retry_fails(redis_server: RedisServer) -> None:
    clock = FakeClock()
    store = RedisStore(redis_server.url, 60.0, breaker_ms=500, clock=clock)
    redis_server.kill()
    await store.get("k")
    clock.advance(0.5)
    await store.get("k")  # tries Redis again, fails again
    assert store.stats.errors["connection"] == 2 and store.breaker_open
    await store.close()


@pytest.mark.asyncio
async def test_connections_pooled_before_an_outage_are_not_reused_after_it(
    redis_server: RedisServer,
) -> None:
    """Concurrent calls pool several connections; Redis dies and comes back. The first
    failure drops the whole pool, so after one breaker window every call gets a fresh
    connection: no stale one fails later and reopens the breaker (the short-outage drill)."""
    clock = FakeClock()
    # Generous timeouts: this is about connection errors, not timeouts on a loaded machine.
    store = RedisStore(redis_server.url, 60.0, connect_timeout_ms=2000, read_timeout_ms=2000,
                       breaker_ms=500, clock=clock)  # fmt: skip
    await asyncio.gather(*(store.set(f"k{i}", b"v") for i in range(8)))
    assert len(store.client.connection_pool._available_connections) > 1  # several pooled
    redis_server.kill()
    assert await store.get("k0") is None and store.breaker_open
    redis_server.start()
    clock.advance(0.5)
    for _ in range(3):
        got = await asyncio.gather(*(store.lookup(f"k{i}") for i in range(8)))
        assert [ok for _, ok in got] == [True] * 8, dict(store.stats.errors)
    assert store.stats.errors["connection"] == 1, dict(store.stats.errors)
    await store.close()


@pytest.mark.asyncio
async def test_timeouts_open_the_breaker_only_when_consecutive(redis_server: RedisServer) -> None:
    """One late reply (a busy event loop) costs that call its state and leaves the breaker
    closed; ``breaker_timeouts`` timeouts in a row open it; a success in between resets the
    count. A connection error still opens it at once (the tests above)."""
    clock = FakeClock()
    store = RedisStore(redis_server.url, 60.0, connect_timeout_ms=2000, read_timeout_ms=200,
                       breaker_ms=500, breaker_timeouts=2, clock=clock)  # fmt: skip
    await store.set("k", b"v")
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # replies stop: every call times out
    try:
        assert await store.lookup("k") == (None, False)
        assert store.stats.errors["timeout"] == 1 and not store.breaker_open
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert await store.lookup("k") == (b"v", True)  # a success: the count starts again
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        await store.lookup("k")
        assert not store.breaker_open
        await store.lookup("k")  # the second in a row
        assert store.stats.errors["timeout"] == 3 and store.breaker_open
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    await store.close()
    with pytest.raises(ValueError, match="breaker_timeouts"):
        RedisStore(redis_server.url, 60.0, breaker_timeouts=0)
