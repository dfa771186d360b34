"""Fixtures of the service tests: the shared Redis, a private redis-server, a fake clock."""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from loadtest.procs import RedisServer

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"


def wait_until(predicate, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


def free_port() -> int:
    """A TCP port the OS has just handed out (bind to 0), free at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_answers(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=0.2, socket_connect_timeout=0.2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class FakeClock:
    """A monotonic clock in seconds that moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started private redis-server; skipped when redis-server is not installed."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)  # loadtest's: the drills start the same kind
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def shared_redis() -> Iterator[redis.Redis]:
    """A sync client of the project's shared Redis (127.0.0.1:6379); skipped if it is down."""
    if not redis_answers(6379):
        pytest.skip("the shared Redis at 127.0.0.1:6379 is not answering")
    client = redis.Redis(port=6379)
    yield client
    client.close()


@pytest.fixture
def unique_prefix(shared_redis: redis.Redis) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(shared_redis.scan_iter(match=prefix + "*", count=1000))
    if keys:
        shared_redis.delete(*keys)
