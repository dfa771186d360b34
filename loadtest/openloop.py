"""Open-loop load generator for the ranking service (the coordinated-omission rule of wrk2 and
vegeta): a fixed offered rate, a send schedule fixed before the run (request i at
``t0 + i / rate``), every request sent at its scheduled time whatever earlier requests are
doing, and latency measured from the *scheduled* send time, so a server that stalls is
charged for every request it delays, not just the one it was busy with.

Requests are realistic: real item ids of the bundle (``items.parquet``), ``--candidates``
(200) distinct ones per request, users drawn from ``users.parquet``, sessions of 2 to 8
requests that carry the ``session_id`` of their first response, and feedback (a click and a
watch time on the served list) for a share of the requests. Sessions are served round-robin
from a pool sized so that a session's requests are ``--think`` seconds apart. The same plan
of bodies goes to ``/v1/noop`` (the app's HTTP floor: the rank request's parsing and
validation, no ranking), so the two endpoints are measured with the same payload, in the same
run, against the same server.

One asyncio loop keeps the schedule: a dispatcher wakes at each scheduled time and starts the
request on a keep-alive HTTP/1.1 connection from a pool (opened on demand up to
``--connections``; beyond that a request waits for a connection, and that wait is in its
latency, as in wrk2). The client is a small ``asyncio.Protocol`` (pre-encoded bodies,
Content-Length framing): it costs a fraction of ``httpx.AsyncClient``'s CPU per request,
which matters on a 2-core machine where the generator and the server share the CPUs
(``--client httpx`` runs the same plan through httpx for comparison). Each level reports the
generator's own schedule keeping (``dispatch_lag_ms``: wake-up time minus scheduled time) and
the wait for a connection (``write_lag_ms``), its CPU and the server's.

A sweep runs levels of increasing offered rate (doubling from ``--start-rate``, then steps of
1.25x, 1.5x, 1.75x of the last unsaturated rate) for each endpoint until a level saturates
(errors, achieved rate below 95% of the offered one, or p99 above ``--saturation-p99-ms``),
then one level at half of each endpoint's saturation throughput. A saturated level is run once
more before the sweep stops (this machine is shared: a burst of someone else's work can
saturate one level), and both runs are kept. Everything is bounded:
requests per level, a per-request timeout, ``--max-seconds`` for the sweep; only loopback
URLs are accepted.

    python -m loadtest.openloop --url http://127.0.0.1:8000 --out results/load/x.json
    python -m loadtest.openloop --serve --workers 2 --out results/load/openloop.json \\
        --plot results/load/openloop.png
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

LOOPBACK = ("127.0.0.1", "localhost", "::1")
RANK, FEEDBACK = 0, 1
QUANTILES = (50, 90, 95, 99, 99.9)


# --- schedule, percentiles, the request plan ----------------------------------------------------


def check_loopback(url: str) -> tuple[str, int]:
    """(host, port) of an ``http://`` loopback URL; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"url {url!r}: only http:// is supported")
    if parts.hostname not in LOOPBACK:
        raise ValueError(f"url {url!r}: load is only sent to loopback ({', '.join(LOOPBACK)})")
    return parts.hostname, parts.port or 80


def send_schedule(rate: float, n: int) -> np.ndarray:
    """Offsets (seconds from t0) of ``n`` requests at ``rate`` per second: ``i / rate``, fixed
    before the first request is sent."""
    if not rate > 0:
        raise ValueError(f"rate {rate!r} must be > 0")
    return np.arange(n, dtype=np.float64) / rate


def percentiles(values: Sequence[float] | np.ndarray, qs: Sequence[float]) -> list[float]:
    """The ``qs`` percentiles (0-100) of ``values`` by linear interpolation between closest
    ranks (numpy's default method); NaN for each when ``values`` is empty."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0:
        return [math.nan] * len(qs)
    out = []
    for q in qs:
        if not 0 <= q <= 100:
            raise ValueError(f"percentile {q!r} outside [0, 100]")
        h = (x.size - 1) * q / 100.0
        lo = math.floor(h)
        hi = min(lo + 1, x.size - 1)
        out.append(float(x[lo] + (h - lo) * (x[hi] - x[lo])))
    return out


@dataclass(frozen=True)
class Workload:
    """What request bodies are made of: user ids, candidate lists (pre-encoded JSON arrays of
    distinct real item ids) and the list length."""

    users: np.ndarray
    candidate_lists: tuple[str, ...]
    n_candidates: int
    k: int = 10

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: Path,
        n_candidates: int = 200,
        k: int = 10,
        pool: int = 512,
        seed: int = 0,
    ) -> Workload:
        import pyarrow.parquet as pq

        items = pq.read_table(Path(bundle_dir) / "items.parquet", columns=["item_id"])
        users = pq.read_table(Path(bundle_dir) / "users.parquet", columns=["user_id"])
        return cls.from_ids(
            items["item_id"].to_numpy(), users["user_id"].to_numpy(), n_candidates, k, pool, seed
        )

    @classmethod
    def from_ids(
        cls,
        item_ids: np.ndarray,
        user_ids: np.ndarray,
        n_candidates: int = 200,
        k: int = 10,
        pool: int = 512,
        seed: int = 0,
    ) -> Workload:
        if n_candidates > len(item_ids):
            raise ValueError(f"{n_candidates} candidates asked, {len(item_ids)} items exist")
        rng = np.random.default_rng(seed)
        lists = tuple(
            "[" + ",".join(map(str, rng.choice(item_ids, n_candidates, replace=False))) + "]"
            for _ in range(pool)
        )
        return cls(np.asarray(user_ids, dtype=np.int64), lists, n_candidates, k)


@dataclass
class Session:
    user_id: int
    length: int
    sent: int = 0
    sid: int | None = None
    last: tuple[int, int, int] | None = None  # (request_id, item_id, position) of a response


@dataclass(frozen=True)
class Plan:
    """Every request of a level, fixed before it starts: kind (RANK or FEEDBACK), session
    index and candidate-list index; and the sessions (users, lengths)."""

    kind: np.ndarray
    session: np.ndarray
    cands: np.ndarray
    sessions: tuple[tuple[int, int], ...]  # (user_id, length)

    def __len__(self) -> int:
        return len(self.kind)


def make_plan(
    workload: Workload, n: int, concurrent_sessions: int, feedback: float, seed: int = 0
) -> Plan:
    """``n`` requests over ``concurrent_sessions`` session slots served round-robin (a
    session's requests are ``concurrent_sessions`` requests apart); a session has 2 to 8
    rank requests (mean 5, as in the simulated world) and is then replaced by a new one; after
    a session's first rank request, a visit is a feedback request with probability
    ``feedback``."""
    rng = random.Random(seed)
    p = max(1, concurrent_sessions)
    sessions: list[tuple[int, int]] = []
    slots: list[int] = []
    ranks: list[int] = []

    def new_session() -> int:
        sessions.append(
            (int(workload.users[rng.randrange(len(workload.users))]), rng.randint(2, 8))
        )
        return len(sessions) - 1

    kind = np.zeros(n, np.int8)
    sess = np.zeros(n, np.int64)
    cands = np.zeros(n, np.int64)
    for i in range(n):
        j = i % p
        if j == len(slots):
            slots.append(new_session())
            ranks.append(0)
        s = slots[j]
        sess[i] = s
        if ranks[j] > 0 and rng.random() < feedback:
            kind[i] = FEEDBACK
            continue
        cands[i] = rng.randrange(len(workload.candidate_lists))
        ranks[j] += 1
        if ranks[j] == sessions[s][1]:
            slots[j] = new_session()
            ranks[j] = 0
    return Plan(kind, sess, cands, tuple(sessions))


def rank_body(workload: Workload, s: Session, cands: int, ts_ms: int) -> bytes:
    sid = "" if s.sid is None else f'"session_id":{s.sid},'
    return (
        f'{{"user_id":{s.user_id},{sid}"candidates":{workload.candidate_lists[cands]},'
        f'"k":{workload.k},"context":{{"timestamp_ms":{ts_ms}}}}}'
    ).encode()


def feedback_body(s: Session, watch_time: float) -> bytes:
    assert s.last is not None and s.sid is not None
    rid, item, pos = s.last
    return (
        f'{{"request_id":{rid},"session_id":{s.sid},"user_id":{s.user_id},"events":'
        f'[{{"item_id":{item},"position":{pos},"click":1,"long_view":0,'
        f'"watch_time":{watch_time:.1f}}}]}}'
    ).encode()


# --- HTTP clients -------------------------------------------------------------------------------


class TransportError(Exception):
    """The connection failed or closed before a whole response arrived."""


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time; Content-Length framing."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = loop.time()
        self._body_at = -1
        self._length = -1
        self._status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes) -> asyncio.Future:
        assert self.transport is not None and self.waiter is None
        self.waiter = self.loop.create_future()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            return
        if self._body_at < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            try:
                self._status = int(lines[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                return self._fail(TransportError(f"bad status line {lines[0]!r}"))
            self._length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    self._length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    self.reusable = False
                elif name == "transfer-encoding":
                    return self._fail(TransportError("chunked responses are not supported"))
            self._body_at = end + 4
        end = self._body_at + self._length
        if len(self.buf) >= end:
            body = bytes(self.buf[self._body_at : end])
            del self.buf[:end]
            waiter, self.waiter = self.waiter, None
            self._body_at = self._length = -1
            if not waiter.done():
                waiter.set_result((self._status, body, self.loop.time()))

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(TransportError(f"connection closed before the response ({exc!r})"))

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


class RawClient:
    """A pool of up to ``max_connections`` keep-alive connections to ``host:port``, opened on
    demand, reused first-in first-out (round-robin over the idle ones), so requests spread
    over every open connection, and so over the server's workers, as many clients' traffic
    does (last-in first-out sent most of a low rate down one connection: one worker busy, the
    other idle); a connection idle for ``idle_s`` (below uvicorn's 5 s keep-alive) is closed
    rather than reused."""

    name = "raw"

    def __init__(
        self, host: str, port: int, max_connections: int = 256, idle_s: float = 3.0
    ) -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.idle_s = idle_s
        self._idle: collections.deque[_Conn] = collections.deque()
        self._open = 0
        self._waiters: list[asyncio.Future] = []
        self.opened = 0

    async def _acquire(self) -> _Conn:
        loop = asyncio.get_running_loop()
        while self._idle:
            conn = self._idle.popleft()
            if not conn.closed and conn.reusable and loop.time() - conn.idle_since < self.idle_s:
                return conn
            conn.close()
            self._open -= 1
        if self._open >= self.max_connections:
            fut = loop.create_future()
            self._waiters.append(fut)
            try:
                return await fut
            except _Retry:
                raise
            except BaseException:  # cancelled (the request's timeout) while waiting
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._release(fut.result())
                elif fut in self._waiters:
                    self._waiters.remove(fut)
                raise
        self._open += 1
        try:
            _, conn = await loop.create_connection(lambda: _Conn(loop), self.host, self.port)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        self.opened += 1
        return conn

    def _wake_one(self) -> None:
        """A connection slot freed with nothing to hand over: let a waiter open one."""
        while self._waiters:
            fut = self._waiters.pop(0)
            if not fut.done():
                fut.set_exception(_Retry())
                return

    def _release(self, conn: _Conn) -> None:
        if conn.closed or not conn.reusable:
            conn.close()
            self._open -= 1
            self._wake_one()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        while self._waiters:
            fut = self._waiters.pop(0)
            if not fut.done():
                fut.set_result(conn)
                return
        self._idle.append(conn)

    async def request(self, path: str, body: bytes) -> tuple[int, bytes, float, float]:
        """POST ``body`` (JSON) to ``path``: (status, body, time written, time the response
        was complete), loop-clock seconds. Raises TransportError, OSError; cancellable (the
        connection is then closed)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn = await self._acquire()
                break
            except _Retry:
                continue
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        t_sent = loop.time()
        try:
            status, data, t_done = await conn.send(head.encode() + body)
        except BaseException:
            conn.close()
            self._release(conn)
            raise
        self._release(conn)
        return status, data, t_sent, t_done

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        self._open = 0


class _Retry(Exception):
    pass


class HttpxClient:
    """The same interface over ``httpx.AsyncClient`` (for comparison with :class:`RawClient`:
    same plan, more client CPU per request)."""

    name = "httpx"

    def __init__(self, host: str, port: int, max_connections: int = 256) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            base_url=f"http://{host}:{port}",
            timeout=None,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=3.0,
            ),
        )
        self.opened = 0

    async def request(self, path: str, body: bytes) -> tuple[int, bytes, float, float]:
        import httpx

        loop = asyncio.get_running_loop()
        t_sent = loop.time()
        try:
            r = await self._client.post(
                path, content=body, headers={"content-type": "application/json"}
            )
        except httpx.TransportError as e:
            raise TransportError(repr(e)) from None
        return r.status_code, r.content, t_sent, loop.time()

    async def aclose(self) -> None:
        await self._client.aclose()


Client = RawClient | HttpxClient


def make_client(url: str, kind: str = "raw", max_connections: int = 256) -> Client:
    host, port = check_loopback(url)
    if kind == "raw":
        return RawClient(host, port, max_connections)
    if kind == "httpx":
        return HttpxClient(host, port, max_connections)
    raise ValueError(f"client {kind!r}: raw or httpx")


# --- one level ----------------------------------------------------------------------------------


@dataclass
class Action:
    """Something a drill does during a level: ``fn()`` runs in a thread at ``at_s`` after t0;
    its start, end (seconds after t0) and return value are recorded."""

    at_s: float
    name: str
    fn: Callable[[], Any]
    started_s: float = math.nan
    ended_s: float = math.nan
    result: Any = None


@dataclass
class Level:
    """Per-request records of one level (times in seconds after t0, the first scheduled send;
    NaN where a request never got that far)."""

    path: str
    rate: float
    duration_s: float
    sched: np.ndarray
    kind: np.ndarray
    n_cands: np.ndarray
    dispatched: np.ndarray
    sent: np.ndarray
    done: np.ndarray
    status: np.ndarray  # HTTP status; 0: no response (error in ``error``); -1: skipped
    error: list[str]
    state: list[str]
    bundle: list[str]
    request_id: np.ndarray
    fallbacks: int = 0
    client: str = "raw"
    connections: int = 0
    generator_cpu_s: float = 0.0
    server_cpu_s: float = math.nan
    server_cpu_by_process: list[float] = field(default_factory=list)
    machine_busy_s: float = math.nan
    wall_s: float = 0.0
    loadavg: tuple[list[float], list[float]] = ((), ())  # type: ignore[assignment]
    actions: list[Action] = field(default_factory=list)


async def run_level(
    client: Client,
    path: str,
    rate: float,
    duration_s: float,
    workload: Workload,
    *,
    think_s: float = 2.0,
    feedback: float = 0.05,
    timeout_s: float = 5.0,
    max_requests: int = 50_000,
    seed: int = 0,
    actions: Sequence[Action] = (),
    server_cpu: Callable[[], dict[int, float]] | None = None,
    start_delay_s: float = 0.05,
    offsets: np.ndarray | None = None,
) -> Level:
    """Send ``rate * duration_s`` requests (at most ``max_requests``) of a fixed plan to
    ``path`` on the fixed schedule (``offsets``, seconds after t0, when given: a drill's
    schedule with a burst); wait for every answer or its timeout (``timeout_s`` after its
    scheduled time); the per-request records. Feedback requests go to /v1/feedback and are
    only planned when ``path`` is /v1/rank (they need a served list)."""
    loop = asyncio.get_running_loop()
    now = loop.time
    if offsets is None:
        n = min(max_requests, max(1, round(rate * duration_s)))
        offsets = send_schedule(rate, n)
    else:
        offsets = np.sort(np.asarray(offsets, dtype=np.float64))
        n = len(offsets)
    is_rank = path.endswith("/v1/rank")
    plan = make_plan(workload, n, round(rate * think_s), feedback if is_rank else 0.0, seed)
    sessions = [Session(u, length) for u, length in plan.sessions]
    nan = np.full(n, np.nan)
    lv = Level(
        path,
        rate,
        duration_s,
        offsets,
        plan.kind.copy(),
        np.zeros(n, np.int64),
        nan.copy(),
        nan.copy(),
        nan.copy(),
        np.zeros(n, np.int64),
        [""] * n,
        [""] * n,
        [""] * n,
        np.zeros(n, np.int64),
        client=getattr(client, "name", "?"),
        actions=list(actions),
    )
    rng = random.Random(seed + 1)
    fallback_ids = iter(rng.getrandbits(53) for _ in range(n + 1))
    feedback_path = path[: -len("/v1/rank")] + "/v1/feedback" if is_rank else ""

    async def one(i: int, t0: float) -> None:
        s = sessions[plan.session[i]]
        if plan.kind[i] == FEEDBACK:
            if s.last is None or s.sid is None:
                lv.status[i], lv.error[i] = -1, "skipped: no served list yet"
                return
            target, body = feedback_path, feedback_body(s, 3.0 + 20.0 * rng.random())
            lv.request_id[i] = s.last[0]  # the served list this feedback is about
        else:
            if s.sid is None and s.sent > 0:  # the first answer is not back: go on without it
                s.sid = next(fallback_ids)
                lv.fallbacks += is_rank
            s.sent += 1
            target = path
            body = rank_body(workload, s, int(plan.cands[i]), int(time.time() * 1000))
            lv.n_cands[i] = workload.n_candidates
        try:
            async with asyncio.timeout_at(t0 + offsets[i] + timeout_s):
                status, data, t_sent, t_done = await client.request(target, body)
        except TimeoutError:
            lv.error[i] = "timeout"
            return
        except (TransportError, OSError) as e:
            lv.error[i] = f"transport: {type(e).__name__}"
            return
        lv.sent[i], lv.done[i], lv.status[i] = t_sent - t0, t_done - t0, status
        if status != 200:
            lv.error[i] = f"http {status}"
            return
        if plan.kind[i] == RANK and is_rank:
            r = json.loads(data)
            if s.sid is None:
                s.sid = r["session_id"]
            items = r["items"]
            if items:
                it = items[rng.randrange(len(items))]
                s.last = (r["request_id"], it["item_id"], it["position"])
            lv.state[i], lv.bundle[i], lv.request_id[i] = (
                r["state"],
                r["bundle_version"],
                r["request_id"],
            )

    async def act(a: Action, t0: float) -> None:
        await asyncio.sleep(max(0.0, t0 + a.at_s - now()))
        a.started_s = now() - t0
        try:
            a.result = await asyncio.to_thread(a.fn)
        except Exception as e:  # a drill's action failing is a result, not a crash
            a.result = {"error": repr(e)}
        a.ended_s = now() - t0

    cpu0 = _own_cpu()
    machine0 = machine_cpu()
    srv0 = server_cpu() if server_cpu else {}
    load0 = list(os.getloadavg())
    t0 = now() + start_delay_s
    wall0 = time.monotonic()
    tasks = [loop.create_task(act(a, t0)) for a in lv.actions]
    pending: set[asyncio.Task] = set()
    i = 0
    while i < n:
        delay = t0 + offsets[i] - now()
        if delay > 0:
            await asyncio.sleep(delay)
        t = now()
        while i < n and t0 + offsets[i] <= t:  # everything due now, even if we are late
            lv.dispatched[i] = t - t0
            task = loop.create_task(one(i, t0))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
    while pending:
        await asyncio.wait(list(pending))
    await asyncio.gather(*tasks)
    lv.wall_s = time.monotonic() - wall0
    lv.generator_cpu_s = _own_cpu() - cpu0
    machine1 = machine_cpu()
    lv.machine_busy_s = machine1[0] - machine0[0]
    if server_cpu:
        srv1 = server_cpu()
        per = {p: srv1[p] - srv0.get(p, 0.0) for p in srv1}
        lv.server_cpu_s = sum(per.values())
        lv.server_cpu_by_process = sorted(per.values(), reverse=True)
    lv.loadavg = (load0, list(os.getloadavg()))
    lv.connections = getattr(client, "opened", 0)
    return lv


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (``/proc/stat``;
    busy counts user, system, irq and softirq time: what else runs here shows in it)."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return math.nan, math.nan
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle, iowait
    total = sum(fields[:8])  # user..steal; guest time is already inside user
    return (total - idle) / tick, total / tick


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- summaries, saturation, the sweep -----------------------------------------------------------


def _stats_ms(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"n": 0}
    ps = percentiles(x * 1000.0, QUANTILES)
    out: dict[str, float] = {"n": int(x.size)}
    for q, v in zip(QUANTILES, ps, strict=True):
        out[f"p{q:g}".replace(".", "_")] = round(v, 3)
    out["max"] = round(float(x.max()) * 1000.0, 3)
    out["mean"] = round(float(x.mean()) * 1000.0, 3)
    return out


def summarise(lv: Level) -> dict[str, Any]:
    """The level's figures: achieved rate, latency from the scheduled time (2xx of the main
    path), the service time from the actual send (what a closed-loop client would report),
    errors by kind, the generator's schedule keeping, session states, CPU."""
    main = lv.kind == RANK
    ok = lv.status == 200
    attempted = lv.status != -1
    errors = Counter(e for e, a in zip(lv.error, attempted, strict=True) if e and a)
    done = lv.done[ok]
    span = float(np.nanmax(done)) if done.size else math.nan
    latency = (lv.done - lv.sched)[ok & main]
    service = (lv.done - lv.sent)[ok & main]
    fb = (lv.kind == FEEDBACK) & attempted
    out: dict[str, Any] = {
        "path": lv.path,
        "offered_rate": lv.rate,
        "duration_s": lv.duration_s,
        "requests": int(attempted.sum()),
        "ok": int(ok.sum()),
        "errors": int(sum(errors.values())),
        "errors_by_kind": dict(errors),
        "achieved_rate": round(float(ok.sum()) / span, 2) if span > 0 else 0.0,
        "latency_ms": _stats_ms(latency),
        "service_time_ms": _stats_ms(service),
        "dispatch_lag_ms": _stats_ms(lv.dispatched - lv.sched),
        "write_lag_ms": _stats_ms((lv.sent - lv.sched)[attempted]),
        "states": dict(Counter(s for s in lv.state if s)),
        "session_fallbacks": lv.fallbacks,
        "client": lv.client,
        "connections_opened": lv.connections,
        "wall_s": round(lv.wall_s, 3),
        "generator_cpu_cores": round(lv.generator_cpu_s / lv.wall_s, 3) if lv.wall_s else None,
        "server_cpu_cores": (
            round(lv.server_cpu_s / lv.wall_s, 3)
            if lv.wall_s and math.isfinite(lv.server_cpu_s)
            else None
        ),
        "server_cpu_cores_by_process": [round(x / lv.wall_s, 3) for x in lv.server_cpu_by_process]
        if lv.wall_s
        else [],
        "machine_busy_cores": (
            round(lv.machine_busy_s / lv.wall_s, 3)
            if lv.wall_s and math.isfinite(lv.machine_busy_s)
            else None
        ),
        "loadavg_start": [round(x, 2) for x in lv.loadavg[0]],
        "loadavg_end": [round(x, 2) for x in lv.loadavg[1]],
    }
    if fb.any():
        out["feedback"] = {
            "requests": int(fb.sum()),
            "ok": int((ok & fb).sum()),
            "latency_ms": _stats_ms((lv.done - lv.sched)[ok & fb]),
        }
    out["skipped"] = int((lv.status == -1).sum())
    return out


def saturated(s: dict[str, Any], p99_ms: float) -> bool:
    """A level is saturated when it had errors, achieved under 95% of its offered rate, or its
    p99 latency (from the scheduled time) exceeds ``p99_ms``."""
    p99 = s["latency_ms"].get("p99", math.inf)
    return bool(s["errors"] > 0 or s["achieved_rate"] < 0.95 * s["offered_rate"] or p99 > p99_ms)


@dataclass
class SweepConfig:
    start_rate: float = 50.0
    max_rate: float = 6400.0
    duration_s: float = 10.0
    think_s: float = 2.0
    feedback: float = 0.05
    timeout_s: float = 5.0
    max_requests: int = 40_000
    saturation_p99_ms: float = 500.0
    pause_s: float = 2.0
    max_seconds: float = 1200.0
    seed: int = 0
    repeat_saturated: bool = True


async def sweep(
    url: str,
    workload: Workload,
    cfg: SweepConfig,
    *,
    paths: Sequence[str] = ("/v1/rank", "/v1/noop"),
    client_kind: str = "raw",
    connections: int = 256,
    server_cpu: Callable[[], dict[int, float]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """For each path: levels at doubling offered rates until one saturates (twice in a row:
    a saturated level is repeated once), then 1.25x, 1.5x and 1.75x of the last unsaturated
    rate; saturation throughput = the most achieved; then a level at half of it for every
    path. Stops starting levels after ``cfg.max_seconds``."""
    deadline = time.monotonic() + cfg.max_seconds
    levels: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    seed = cfg.seed

    async def level(
        path: str, rate: float, duration: float | None = None, record: bool = True
    ) -> dict[str, Any] | None:
        nonlocal seed
        d = duration or cfg.duration_s
        if time.monotonic() + d + cfg.timeout_s + cfg.pause_s > deadline:
            log(f"  {path} at {rate:g}/s skipped: --max-seconds reached")
            return None
        seed += 1
        client = make_client(url, client_kind, connections)
        try:
            lv = await run_level(
                client,
                path,
                rate,
                d,
                workload,
                think_s=cfg.think_s,
                feedback=cfg.feedback,
                timeout_s=cfg.timeout_s,
                max_requests=cfg.max_requests,
                seed=seed,
                server_cpu=server_cpu,
            )
        finally:
            await client.aclose()
        s = summarise(lv)
        s["saturated"] = saturated(s, cfg.saturation_p99_ms)
        lat = s["latency_ms"]
        log(
            f"  {path:9s} offered {rate:7.1f}/s achieved {s['achieved_rate']:7.1f}/s "
            f"p50 {lat.get('p50', math.nan):8.2f} p99 {lat.get('p99', math.nan):8.2f} "
            f"max {lat.get('max', math.nan):8.2f} ms errors {s['errors']:4d} "
            f"lag p99 {s['dispatch_lag_ms'].get('p99', math.nan):.2f} ms "
            f"gen {s['generator_cpu_cores']} srv {s['server_cpu_cores']} "
            f"{s['server_cpu_cores_by_process'][:3]} machine {s['machine_busy_cores']} cores "
            f"load {s['loadavg_end'][0]}" + ("  SATURATED" if s["saturated"] else "")
        )
        await asyncio.sleep(cfg.pause_s)
        if s["saturated"]:
            s["quiesce_s"] = await quiesce()
        if record:
            levels[path].append(s)
        return s

    async def quiesce(limit_s: float = 60.0, idle_cores: float = 0.1) -> float:
        """After an overloaded level the server still works through requests whose clients
        have gone: wait until its processes use under ``idle_cores`` of CPU over half a
        second (at most ``limit_s``; with no server handle, sleep 10 s)."""
        t = time.monotonic()
        if server_cpu is None:
            await asyncio.sleep(10.0)
            return 10.0
        while time.monotonic() - t < limit_s:
            a = sum(server_cpu().values())
            await asyncio.sleep(0.5)
            if (sum(server_cpu().values()) - a) / 0.5 < idle_cores:
                break
        waited = time.monotonic() - t
        log(f"  server idle again after {waited:.1f} s")
        return round(waited, 2)

    async def confirmed(path: str, rate: float) -> dict[str, Any] | None:
        """A level; a saturated one is run once more (a shared machine has bursts of other
        work) and the sweep goes on if the repeat is not saturated. Both are recorded."""
        s = await level(path, rate)
        if s is not None and s["saturated"] and cfg.repeat_saturated:
            log(f"  {path} at {rate:g}/s saturated: repeating it once")
            again = await level(path, rate)
            if again is not None:
                again["repeat"] = True
                return again
        return s

    for path in paths:  # warm-up: connections, caches, the server's first requests
        await level(path, cfg.start_rate, duration=2.0, record=False)
    result: dict[str, Any] = {}
    for path in paths:
        log(f"{path}: sweep")
        rate, good = cfg.start_rate, None
        while rate <= cfg.max_rate:
            s = await confirmed(path, rate)
            if s is None or s["saturated"]:
                break
            good, rate = rate, rate * 2
        if good is not None and good * 2 <= cfg.max_rate:
            for f in (1.25, 1.5, 1.75):
                s = await confirmed(path, good * f)
                if s is None or s["saturated"]:
                    break
        lv = levels[path]
        sat = max((x["achieved_rate"] for x in lv), default=0.0)
        unsat = [x for x in lv if not x["saturated"]]
        below = [x for x in lv if x["offered_rate"] < sat]
        result[path] = {
            "saturation_throughput": sat,
            "max_unsaturated_offered_rate": max((x["offered_rate"] for x in unsat), default=None),
            "levels_below_saturation": len(below),
            "errors_below_saturation": sum(x["errors"] for x in below),
        }
    for path in paths:
        half = result[path]["saturation_throughput"] / 2
        if half > 0:
            log(f"{path}: half of saturation")
            s = await level(path, round(half, 1))
            if s is not None:
                s["half_saturation"] = True
                result[path]["half_saturation"] = {
                    "offered_rate": s["offered_rate"],
                    "achieved_rate": s["achieved_rate"],
                    "errors": s["errors"],
                    "latency_ms": s["latency_ms"],
                }
    return {"summary": result, "levels": levels}


def goals(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals against a sweep summary: rank throughput at least half the no-op
    floor; rank p99 at half of saturation at most 10 ms; zero errors below saturation."""
    rank, noop = summary.get("/v1/rank", {}), summary.get("/v1/noop", {})
    ratio = (
        rank["saturation_throughput"] / noop["saturation_throughput"]
        if rank and noop and noop["saturation_throughput"]
        else None
    )
    p99 = rank.get("half_saturation", {}).get("latency_ms", {}).get("p99")
    errs = sum(
        x.get("errors_below_saturation", 0) + x.get("half_saturation", {}).get("errors", 0)
        for x in summary.values()
    )
    return {
        "throughput_ratio_rank_to_noop": None if ratio is None else round(ratio, 3),
        "throughput_ratio_goal": 0.5,
        "throughput_ratio_met": None if ratio is None else ratio >= 0.5,
        "rank_p99_at_half_saturation_ms": p99,
        "p99_goal_ms": 10.0,
        "p99_met": None if p99 is None else p99 <= 10.0,
        "errors_below_saturation": errs,
        "errors_met": errs == 0,
    }


def plot(report: dict[str, Any], out: Path) -> None:
    """Latency (p50, p99, max; log scale) and achieved rate against the offered rate, both
    endpoints; the sweep's levels as lines (a repeated level by its repeat, the first run as
    a cross), the half-saturation level as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = {"/v1/rank": "tab:blue", "/v1/noop": "tab:orange"}
    for path, levels in report["levels"].items():
        c = colours.get(path)
        sweep = [x for x in levels if not x.get("half_saturation")]
        last = {x["offered_rate"]: x for x in sweep}  # a repeated level: its repeat
        lv = [last[r] for r in sorted(last)]
        r = [x["offered_rate"] for x in lv]
        first = [x for x in sweep if last[x["offered_rate"]] is not x]
        if first:
            ax.plot(
                [x["offered_rate"] for x in first],
                [x["latency_ms"].get("p99", math.nan) for x in first],
                "x",
                color=c,
                ms=5,
                alpha=0.5,
                label=f"{path} p99, a saturated level before its repeat",
            )
        for key, style in (("p50", ":"), ("p99", "-"), ("max", "--")):
            ax.plot(
                r,
                [x["latency_ms"].get(key, math.nan) for x in lv],
                style,
                color=c,
                marker="o",
                ms=3,
                label=f"{path} {key}",
            )
        bx.plot(r, [x["achieved_rate"] for x in lv], "-o", color=c, ms=3, label=path)
        for x in levels:
            if x.get("half_saturation"):
                ax.plot(
                    [x["offered_rate"]],
                    [x["latency_ms"].get("p99", math.nan)],
                    "*",
                    color=c,
                    ms=11,
                    label=f"{path} p99 at half saturation",
                )
        sat = report["summary"][path]["saturation_throughput"]
        bx.axhline(sat, color=c, lw=0.6, ls=":")
        bx.annotate(f"{sat:.0f}/s", (1.2, sat), color=c, fontsize=8, va="bottom")
    ax.axhline(10.0, color="grey", lw=0.6, ls="-.", label="10 ms goal")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="offered rate (requests/s)",
        ylabel="latency from scheduled send (ms)",
        title="Latency vs offered rate (open loop)",
    )
    top = max((x["offered_rate"] for lv in report["levels"].values() for x in lv), default=1)
    bx.plot([1, top], [1, top], color="grey", lw=0.6, ls="-.", label="achieved = offered")
    bx.set(
        xscale="log",
        yscale="log",
        xlabel="offered rate (requests/s)",
        ylabel="achieved rate (2xx/s)",
        title="Throughput",
    )
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    bx.legend(fontsize=7)
    meta = report.get("meta", {})
    load = meta.get("loadavg_start", ["?"])[0]
    load = f"{load:.2f}" if isinstance(load, float) else load
    fig.suptitle(
        f"ranker serve --workers {meta.get('workers', '?')}, state "
        f"{meta.get('state', '?')}, {meta.get('candidates', '?')} candidates, "
        f"k={meta.get('k', '?')}, {meta.get('cpus', '?')} CPUs shared with the load "
        f"generator, load average at start {load}",
        fontsize=9,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


# --- CLI ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.openloop",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", help="a running service (loopback only), e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--serve",
        action="store_true",
        help="start `ranker serve` on a free port (and a private redis-server for "
        "the session state with --state redis) and stop it at the end",
    )
    p.add_argument("--workers", type=int, default=2, help="with --serve: uvicorn workers")
    p.add_argument(
        "--state",
        choices=("redis", "memory"),
        default="redis",
        help="with --serve: session state in a private redis-server (shared by the "
        "workers) or in each worker's memory",
    )
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (ids; --serve)")
    p.add_argument("--paths", nargs="+", default=["/v1/rank", "/v1/noop"])
    p.add_argument(
        "--rate",
        type=float,
        nargs="+",
        help="fixed offered rates instead of a sweep (one level each)",
    )
    p.add_argument("--start-rate", type=float, default=50.0)
    p.add_argument("--max-rate", type=float, default=6400.0)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--think",
        type=float,
        default=2.0,
        help="seconds between a session's requests (sets the session pool size)",
    )
    p.add_argument(
        "--feedback",
        type=float,
        default=0.05,
        help="share of a session's later visits that send feedback (rank only)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="per request, from its schedule")
    p.add_argument("--max-requests", type=int, default=40_000, help="per level")
    p.add_argument("--saturation-p99-ms", type=float, default=500.0)
    p.add_argument("--max-seconds", type=float, default=1200.0, help="bound of the whole run")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw")
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON report")
    p.add_argument("--plot", type=Path, help="PNG: latency and throughput vs offered rate")
    p.add_argument("--replot", type=Path, help="draw --plot from this saved JSON report, no run")
    return p


async def _fixed_levels(
    url: str,
    workload: Workload,
    args: argparse.Namespace,
    server_cpu: Callable[[], dict[int, float]] | None,
) -> dict[str, Any]:
    levels: dict[str, list[dict[str, Any]]] = {p: [] for p in args.paths}
    for path in args.paths:
        for i, rate in enumerate(args.rate):
            client = make_client(url, args.client, args.connections)
            try:
                lv = await run_level(
                    client,
                    path,
                    rate,
                    args.duration,
                    workload,
                    think_s=args.think,
                    feedback=args.feedback,
                    timeout_s=args.timeout,
                    max_requests=args.max_requests,
                    seed=args.seed + i,
                    server_cpu=server_cpu,
                )
            finally:
                await client.aclose()
            s = summarise(lv)
            s["saturated"] = saturated(s, args.saturation_p99_ms)
            levels[path].append(s)
            print(
                json.dumps(
                    {
                        k: s[k]
                        for k in (
                            "path",
                            "offered_rate",
                            "achieved_rate",
                            "errors",
                            "latency_ms",
                            "dispatch_lag_ms",
                        )
                    }
                )
            )
    summary = {
        p: {"saturation_throughput": max((x["achieved_rate"] for x in lv), default=0.0)}
        for p, lv in levels.items()
    }
    return {"summary": summary, "levels": levels}


def git_head() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def main(argv: Sequence[str] | None = None) -> int:
    from loadtest.procs import DEFAULT_BUNDLE, RankerServer, RedisServer

    args = build_parser().parse_args(argv)
    if args.replot:
        if not args.plot:
            print("--replot needs --plot", file=sys.stderr)
            return 2
        plot(json.loads(args.replot.read_text()), args.plot)
        print(f"wrote {args.plot}")
        return 0
    if bool(args.url) == bool(args.serve):
        print("give exactly one of --url and --serve", file=sys.stderr)
        return 2
    if args.url:
        check_loopback(args.url)
    bundle = args.bundle or DEFAULT_BUNDLE
    workload = Workload.from_bundle(bundle, args.candidates, args.k, seed=args.seed)
    cfg = SweepConfig(
        start_rate=args.start_rate,
        max_rate=args.max_rate,
        duration_s=args.duration,
        think_s=args.think,
        feedback=args.feedback,
        timeout_s=args.timeout,
        max_requests=args.max_requests,
        saturation_p99_ms=args.saturation_p99_ms,
        max_seconds=args.max_seconds,
        seed=args.seed,
    )
    meta: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "candidates": args.candidates,
        "k": args.k,
        "think_s": args.think,
        "feedback": args.feedback,
        "timeout_s": args.timeout,
        "client": args.client,
        "connection_reuse": "fifo" if args.client == "raw" else "httpx pool",
        "connections": args.connections,
        "duration_s": args.duration,
        "saturation_rule": f"errors > 0, achieved < 0.95 x offered, or p99 > "
        f"{args.saturation_p99_ms:g} ms",
        "python": sys.version.split()[0],
        "commit": git_head(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="ranker-load-"))
    redis = server = None
    try:
        url, server_cpu = args.url, None
        if args.serve:
            env = {}
            if args.state == "redis":
                redis = RedisServer(tmp / "redis")
                redis.start()
                env["RANKER_REDIS_URL"] = redis.url
            server = RankerServer(
                tmp / "logs",
                workers=args.workers,
                env=env,
                bundle=bundle,
            ).start()
            url, server_cpu = server.url, server.cpu_by_pid
            meta.update(
                {
                    "workers": args.workers,
                    "state": args.state,
                    "bundle": str(bundle),
                    "server": "ranker serve",
                }
            )
        meta["url"] = url
        t = time.monotonic()
        if args.rate:
            report = asyncio.run(_fixed_levels(url, workload, args, server_cpu))
        else:
            report = asyncio.run(
                sweep(
                    url,
                    workload,
                    cfg,
                    paths=args.paths,
                    client_kind=args.client,
                    connections=args.connections,
                    server_cpu=server_cpu,
                )
            )
        meta["run_s"] = round(time.monotonic() - t, 1)
        meta["loadavg_end"] = list(os.getloadavg())
        report = {"meta": meta, **report}
        if not args.rate:
            report["goals"] = goals(report["summary"])
        if server is not None:
            rc = server.stop()
            report["server_exit"] = {"returncode": rc, "clean": server.clean_exit()}
    finally:
        if server is not None:
            server.stop()
        if redis is not None:
            redis.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"summary": report["summary"], "goals": report.get("goals")}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
