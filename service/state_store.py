"""Session-state stores: opaque ``bytes`` per session, in this process or in Redis.

The runtime encodes a session's cached model state; a store only keeps the bytes for a TTL.
Keys come from :func:`state_key`, which puts the bundle's state-schema version and the arm in
the key, so a bundle reload with a new state layout never reads a state written by the old
one (the old keys simply expire).

Both stores have the same async interface: ``get(key) -> bytes | None``, ``set(key, value)``,
``delete(key)``, ``close()``, and a :class:`StoreStats` of counters (hits, misses, sets,
errors by reason). A store never raises for a backend failure: ``get`` returns None (the
caller serves a cold state) and ``set`` is skipped, and the failure is counted. The stats
take an optional ``on_event(event, reason)`` callback so the app can forward the counts to
Prometheus (``Metrics.record_state_event``); the store creates no metrics itself.

``RedisStore`` and a failing Redis: every command is bounded by the socket connect and read
timeouts (redis-py's own retries are switched off, so a call costs at most one connect plus
one read timeout). A connection error, or ``breaker_timeouts`` read timeouts in a row, open a
circuit breaker that skips Redis for ``breaker_ms``: calls in that window return a cold state
at once (counted as ``circuit_open``) instead of each paying the timeout. A single timeout
does not open it: a worker whose event loop is busy near saturation reads a healthy Redis's
reply late now and then, and one late reply should cost one request its state, not every
request for a second. After the window one more failure reopens it; a success closes it.
A connection error also closes every idle pooled connection (they died with the one that
failed), so the first calls after the window open new connections and the store recovers by
itself, within one window, when Redis is back.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis
from cachetools import TTLCache
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.settings import Settings

EventCallback = Callable[[str, str | None], None]
"""``on_event(event, reason)``: event is "hit", "miss", "set" or "error" (reason set)."""

ERROR_REASONS = ("timeout", "connection", "circuit_open", "redis_error")
"""Reasons a store call can fail: a fixed set, so a metric labelled by it stays small."""


def state_key(schema_version: str, arm: str, session_id: str | int) -> str:
    """The store key of a session's state: ``state:v<schema_version>:<arm>:<session_id>``.

    ``schema_version`` and ``arm`` must be non-empty and free of ``:`` (so two different
    triples never build the same key); raises ValueError naming the bad part.
    """
    for name, part in (("schema_version", schema_version), ("arm", arm)):
        if not part or ":" in part:
            raise ValueError(f"state key {name} {part!r} must be non-empty and contain no ':'")
    sid = str(session_id)
    if not sid:
        raise ValueError("state key session_id is empty")
    return f"state:v{schema_version}:{arm}:{sid}"


@dataclass
class StoreStats:
    """Counters of one store since it was built; ``on_event`` sees every increment."""

    hits: int = 0
    misses: int = 0
    sets: int = 0
    evictions: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    on_event: EventCallback | None = None

    def record(self, event: str, reason: str | None = None) -> None:
        """Count one event ("hit", "miss", "set", "evict" or "error" with a reason)."""
        if event == "hit":
            self.hits += 1
        elif event == "miss":
            self.misses += 1
        elif event == "set":
            self.sets += 1
        elif event == "evict":
            self.evictions += 1
        elif event == "error":
            if reason not in ERROR_REASONS:
                raise ValueError(f"unknown store error reason {reason!r}")
            self.errors[reason] += 1
        else:
            raise ValueError(f"unknown store event {event!r}")
        if self.on_event is not None:
            self.on_event(event, reason)


def _check_value(key: str, value: bytes) -> None:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"state for key {key!r} must be bytes, got {type(value).__name__}")


class _CountingTTLCache(TTLCache[str, bytes]):
    """A TTLCache that reports capacity evictions (cachetools' documented hook)."""

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float], stats: StoreStats):
        super().__init__(maxsize=maxsize, ttl=ttl, timer=timer)
        self._stats = stats

    def popitem(self) -> tuple[str, bytes]:
        item = super().popitem()
        self._stats.record("evict")
        return item


class InProcessStore:
    """Session states in this process: a ``cachetools.TTLCache`` bounded to ``max_sessions``.

    A state expires ``ttl_s`` seconds after its last ``set``; a full store evicts the least
    recently used state, never fails. ``timer`` (seconds, monotonic) is for tests.
    Raises ValueError for ``max_sessions < 1`` or ``ttl_s <= 0``.
    """

    def __init__(
        self,
        max_sessions: int,
        ttl_s: float,
        *,
        timer: Callable[[], float] = time.monotonic,
        on_event: EventCallback | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions {max_sessions!r} must be >= 1")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s {ttl_s!r} must be > 0")
        self.stats = StoreStats(on_event=on_event)
        self._cache = _CountingTTLCache(max_sessions, ttl_s, timer, self.stats)

    def __len__(self) -> int:
        return len(self._cache)

    async def get(self, key: str) -> bytes | None:
        """The state stored under ``key``, or None if absent or expired."""
        return (await self.lookup(key))[0]

    async def lookup(self, key: str) -> tuple[bytes | None, bool]:
        """``(state or None, True)``: an in-process store never fails."""
        value = self._cache.get(key)
        self.stats.record("miss" if value is None else "hit")
        return value, True

    async def set(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds. TypeError if not bytes."""
        _check_value(key, value)
        self._cache[key] = bytes(value)
        self.stats.record("set")

    async def delete(self, key: str) -> None:
        """Forget ``key`` (no error if absent)."""
        self._cache.pop(key, None)

    async def close(self) -> None:
        self._cache.clear()


class RedisStore:
    """Session states in Redis, shared by replicas; a failing Redis degrades to cold states.

    Keys are ``prefix + key``; every ``set`` carries the TTL (``SET .. PX ttl_ms``). Timeouts
    are in milliseconds; ``breaker_ms`` is how long Redis is skipped after a connection error
    or ``breaker_timeouts`` consecutive timeouts (0: never skip). ``clock`` (seconds,
    monotonic) is for tests. The client is built here with ``redis.asyncio.from_url``; raises
    ValueError for a malformed URL, a non-positive TTL or timeout, or ``breaker_timeouts < 1``.
    """

    def __init__(
        self,
        url: str,
        ttl_s: float,
        *,
        prefix: str = "ranker:",
        connect_timeout_ms: float = 50.0,
        read_timeout_ms: float = 20.0,
        breaker_ms: float = 1000.0,
        breaker_timeouts: int = 3,
        clock: Callable[[], float] = time.monotonic,
        on_event: EventCallback | None = None,
    ) -> None:
        for name, v in (
            ("ttl_s", ttl_s),
            ("connect_timeout_ms", connect_timeout_ms),
            ("read_timeout_ms", read_timeout_ms),
        ):
            if not v > 0:
                raise ValueError(f"{name} {v!r} must be > 0")
        if breaker_ms < 0:
            raise ValueError(f"breaker_ms {breaker_ms!r} must be >= 0")
        if breaker_timeouts < 1:
            raise ValueError(f"breaker_timeouts {breaker_timeouts!r} must be >= 1")
        self.breaker_timeouts = breaker_timeouts
        self._timeouts = 0  # consecutive read timeouts; a success resets it
        self.prefix = prefix
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.breaker_s = breaker_ms / 1000
        self.stats = StoreStats(on_event=on_event)
        self._clock = clock
        self._skip_until = float("-inf")
        self._client: aioredis.Redis = aioredis.from_url(
            url,
            socket_connect_timeout=connect_timeout_ms / 1000,
            socket_timeout=read_timeout_ms / 1000,
            # One attempt per call, stated (redis.Redis() alone defaults to 10 retries): a
            # retry would add a timeout to the request it delays.
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )

    @property
    def client(self) -> aioredis.Redis:
        """The underlying ``redis.asyncio`` client (tests and health checks)."""
        return self._client

    @property
    def breaker_open(self) -> bool:
        """True while calls skip Redis after a recent failure."""
        return self._clock() < self._skip_until

    def _skip(self) -> bool:
        if self.breaker_open:
            self.stats.record("error", "circuit_open")
            return True
        return False

    async def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, RedisTimeoutError | TimeoutError):
            reason = "timeout"
        elif isinstance(exc, RedisConnectionError | OSError):
            reason = "connection"
        else:
            reason = "redis_error"
        self.stats.record("error", reason)
        if reason == "timeout":
            self._timeouts += 1
        if self.breaker_s > 0 and (reason != "timeout" or self._timeouts >= self.breaker_timeouts):
            self._skip_until = self._clock() + self.breaker_s
        if reason == "connection":
            # The idle pooled connections died with this one (Redis restarted, or the network
            # dropped): close them all now, so the calls after the breaker window connect
            # afresh instead of each finding a dead socket and reopening the breaker.
            with contextlib.suppress(RedisError, OSError):
                await self._client.connection_pool.disconnect(inuse_connections=False)

    async def get(self, key: str) -> bytes | None:
        """The state under ``key``; None if absent, expired, or Redis failed (counted)."""
        return (await self.lookup(key))[0]

    async def lookup(self, key: str) -> tuple[bytes | None, bool]:
        """``(state or None, ok)``: ``ok`` is False when Redis failed or was skipped (the
        caller serves a degraded, cold state) and True for a hit or a plain miss."""
        if self._skip():
            return None, False
        try:
            value = await self._client.get(self.prefix + key)
        except (RedisError, OSError, TimeoutError) as exc:
            await self._failed(exc)
            return None, False
        self._timeouts = 0
        self.stats.record("miss" if value is None else "hit")
        return cast(bytes | None, value), True  # decode_responses=False: Redis returns bytes

    async def set(self, key: str, value: bytes) -> None:
        """Store ``value`` with the TTL; skipped (counted) when Redis fails. TypeError if not
        bytes."""
        _check_value(key, value)
        if self._skip():
            return
        try:
            await self._client.set(self.prefix + key, bytes(value), px=self.ttl_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            await self._failed(exc)
            return
        self._timeouts = 0
        self.stats.record("set")

    async def delete(self, key: str) -> None:
        """Delete ``key``; skipped (counted) when Redis fails."""
        if self._skip():
            return
        try:
            await self._client.delete(self.prefix + key)
        except (RedisError, OSError, TimeoutError) as exc:
            await self._failed(exc)

    async def close(self) -> None:
        """Close the client and its connection pool."""
        await self._client.aclose()


StateStore = InProcessStore | RedisStore
"""Either store; both have the same async interface."""


def build_state_store(settings: Settings, on_event: EventCallback | None = None) -> StateStore:
    """The store the settings ask for: Redis when ``redis_url`` is set, else in-process."""
    if settings.redis_url is None:
        return InProcessStore(settings.state_max_sessions, settings.state_ttl_s, on_event=on_event)
    return RedisStore(
        settings.redis_url,
        settings.state_ttl_s,
        prefix=settings.state_key_prefix,
        connect_timeout_ms=settings.redis_connect_timeout_ms,
        read_timeout_ms=settings.redis_read_timeout_ms,
        breaker_ms=settings.redis_breaker_ms,
        breaker_timeouts=settings.redis_breaker_timeouts,
        on_event=on_event,
    )
