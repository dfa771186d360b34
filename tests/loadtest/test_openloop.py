"""The open-loop generator: a schedule fixed in advance, latency from the scheduled send time
(coordinated omission avoided, shown on a fake server that answers one request at a time),
percentiles as numpy computes them, request bodies the service's schemas accept."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from loadtest.openloop import (
    FEEDBACK,
    RANK,
    RawClient,
    Session,
    Workload,
    check_loopback,
    feedback_body,
    goals,
    make_plan,
    percentiles,
    rank_body,
    run_level,
    saturated,
    send_schedule,
    summarise,
)

ITEMS = np.arange(1000, 1500, dtype=np.int64)
USERS = np.arange(7, 107, dtype=np.int64)


def small_workload(n_candidates: int = 20) -> Workload:
    return Workload.from_ids(ITEMS, USERS, n_candidates=n_candidates, k=5, pool=16, seed=3)


# --- the schedule and the plan ------------------------------------------------------------------


def test_schedule_is_fixed_in_advance_at_i_over_rate() -> None:
    s = send_schedule(250.0, 1000)
    assert s[0] == 0.0 and s[-1] == pytest.approx(999 / 250)
    np.testing.assert_allclose(np.diff(s), 1 / 250)
    with pytest.raises(ValueError, match="rate"):
        send_schedule(0.0, 3)


def test_plan_is_deterministic_and_sessions_are_round_robin() -> None:
    w = small_workload()
    a, b = make_plan(w, 500, 10, 0.2, seed=5), make_plan(w, 500, 10, 0.2, seed=5)
    for x, y in zip((a.kind, a.session, a.cands), (b.kind, b.session, b.cands), strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.sessions == b.sessions
    # A session's visits are 10 requests apart; it has 2 to 8 rank requests; its first visit
    # is a rank request (feedback needs a served list).
    for s in np.unique(a.session):
        idx = np.flatnonzero(a.session == s)
        assert (np.diff(idx) == 10).all()
        assert a.kind[idx[0]] == RANK
        ranks = int((a.kind[idx] == RANK).sum())
        user, length = a.sessions[s]
        assert user in USERS
        assert ranks == length or idx[-1] >= 490  # complete, or cut by the end of the plan
        assert 2 <= length <= 8
    share = (a.kind == FEEDBACK).mean()
    assert 0.05 < share < 0.3


def test_bodies_are_valid_service_requests() -> None:
    from service.schemas import FeedbackRequest, RankRequest

    w = small_workload()
    s = Session(user_id=17, length=3)
    first = RankRequest.model_validate_json(rank_body(w, s, 2, 1_700_000_000_000))
    assert first.session_id is None and len(first.candidates) == 20
    assert len(set(first.candidates)) == 20 and set(first.candidates) <= set(ITEMS.tolist())
    s.sid, s.last = 12345, (99, 1003, 4)
    later = RankRequest.model_validate_json(rank_body(w, s, 2, 1_700_000_000_000))
    assert later.session_id == 12345 and later.k == 5
    fb = FeedbackRequest.model_validate_json(feedback_body(s, 12.5))
    assert (fb.request_id, fb.session_id, fb.events[0].item_id, fb.events[0].click) == (
        99,
        12345,
        1003,
        1,
    )


def test_only_loopback_urls() -> None:
    assert check_loopback("http://127.0.0.1:8123") == ("127.0.0.1", 8123)
    assert check_loopback("http://localhost:9") == ("localhost", 9)
    for bad in ("http://10.0.0.1:80", "https://127.0.0.1:443", "http://example.com"):
        with pytest.raises(ValueError):
            check_loopback(bad)


# --- percentiles --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000, 4097])
def test_percentiles_match_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.lognormal(1.0, 1.2, n)
    qs = [0, 1, 25, 50, 90, 95, 99, 99.9, 100]
    np.testing.assert_allclose(percentiles(x, qs), np.percentile(x, qs), rtol=1e-12)
    np.testing.assert_allclose(percentiles(x.tolist(), qs), np.percentile(x, qs), rtol=1e-12)


def test_percentiles_edge_cases() -> None:
    assert all(math.isnan(v) for v in percentiles([], [50, 99]))
    assert percentiles([3.0], [0, 50, 100]) == [3.0, 3.0, 3.0]
    with pytest.raises(ValueError):
        percentiles([1.0], [101])


# --- coordinated omission on a fake slow server -------------------------------------------------


class SerialServer:
    """An HTTP/1.1 server that handles one request at a time for ``service_s`` seconds each
    (a global lock), and answers /v1/rank and /v1/feedback like the service would."""

    def __init__(self, service_s: float) -> None:
        self.service_s = service_s
        self.lock = asyncio.Lock()
        self.served: list[float] = []
        self.next_id = 1

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                length = next(
                    int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length")
                )
                body = json.loads(await reader.readexactly(length))
                async with self.lock:
                    await asyncio.sleep(self.service_s)
                    self.served.append(asyncio.get_running_loop().time())
                if lines[0].startswith("POST /v1/rank"):
                    self.next_id += 1
                    out = {
                        "request_id": self.next_id,
                        "session_id": body.get("session_id", 77),
                        "state": "cold",
                        "bundle_version": "fake",
                        "items": [{"item_id": body["candidates"][0], "position": 0}],
                    }
                else:
                    out = {"accepted": 1}
                data = json.dumps(out).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(data), data)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def _level_on_serial_server(
    connections: int, n: int = 30, rate: float = 100.0, service_s: float = 0.03
):
    server = SerialServer(service_s)
    port = await server.start()
    client = RawClient("127.0.0.1", port, max_connections=connections)
    try:
        lv = await run_level(
            client,
            "/v1/rank",
            rate,
            n / rate,
            small_workload(),
            think_s=0.05,
            feedback=0.0,
            timeout_s=30.0,
        )
    finally:
        await client.aclose()
        await server.stop()
    return lv


def test_latency_is_measured_from_the_scheduled_time_not_the_send() -> None:
    """One connection: a closed-loop client in disguise. Requests wait for the connection, so
    each is written late; the service time from the actual write stays ~30 ms while the
    latency from the schedule grows by the queueing delay (30 - 10 ms per request)."""
    n, rate, service = 30, 100.0, 0.03
    lv = asyncio.run(_level_on_serial_server(connections=1, n=n, rate=rate, service_s=service))
    assert (lv.status == 200).all()
    s = summarise(lv)
    latency = lv.done - lv.sched
    service_time = lv.done - lv.sent
    np.testing.assert_allclose(s["latency_ms"]["max"], latency.max() * 1000, atol=1e-3)
    np.testing.assert_allclose(
        s["latency_ms"]["p99"], percentiles(latency * 1000, [99])[0], atol=1e-3
    )
    np.testing.assert_allclose(
        s["service_time_ms"]["p50"], percentiles(service_time * 1000, [50])[0], atol=1e-3
    )
    # The client sent late (it waited for the connection): write lag grows along the run ...
    assert (lv.sent - lv.sched)[-1] > (n - 2) * (service - 1 / rate)
    # ... the service time hides it, the latency from the schedule does not.
    assert np.median(service_time) < 3 * service
    expected_last = n * service - (n - 1) / rate  # queueing of the last request
    assert latency[-1] >= 0.9 * expected_last
    assert s["latency_ms"]["p99"] > 5 * s["service_time_ms"]["p50"]


def test_requests_go_out_on_schedule_whatever_the_server_does() -> None:
    """Enough connections: each request is written at its scheduled time although the server
    has not answered the earlier ones (it takes 30 ms each, one at a time, with a request
    due every 10 ms), and its latency includes its wait in the server's queue."""
    n, rate, service = 30, 100.0, 0.03
    lv = asyncio.run(_level_on_serial_server(connections=64, n=n, rate=rate, service_s=service))
    assert (lv.status == 200).all()
    # Sent before the previous request was answered: the schedule does not wait for answers.
    sent_early = lv.sent[1:] < lv.done[:-1]
    assert sent_early.mean() > 0.9
    # Dispatch order is the schedule order, and dispatch never precedes the schedule.
    assert (np.diff(lv.dispatched) >= 0).all() and (lv.dispatched >= lv.sched - 1e-9).all()
    latency = lv.done - lv.sched
    assert latency[-1] >= 0.9 * (n * service - (n - 1) / rate)
    assert (np.diff(lv.done) > 0).all()  # served one at a time, in order


def test_sessions_carry_the_session_id_of_their_first_answer() -> None:
    lv = asyncio.run(_level_on_serial_server(connections=64, n=12, rate=200.0, service_s=0.001))
    assert (lv.status == 200).all()
    assert lv.fallbacks == 0
    assert set(lv.state) == {"cold"} and set(lv.bundle) == {"fake"}


# --- summaries, saturation, goals ---------------------------------------------------------------


def _summary(offered: float, achieved: float, p99: float, errors: int = 0) -> dict:
    return {
        "offered_rate": offered,
        "achieved_rate": achieved,
        "errors": errors,
        "latency_ms": {"p99": p99},
    }


def test_saturation_rule() -> None:
    assert not saturated(_summary(100, 99, 20), p99_ms=500)
    assert saturated(_summary(100, 94, 20), p99_ms=500)  # achieved < 95% of offered
    assert saturated(_summary(100, 100, 600), p99_ms=500)  # queue growing
    assert saturated(_summary(100, 100, 20, errors=1), p99_ms=500)


def test_goals_on_made_up_numbers() -> None:
    summary = {
        "/v1/rank": {
            "saturation_throughput": 300.0,
            "errors_below_saturation": 0,
            "half_saturation": {"latency_ms": {"p99": 8.5}},
        },
        "/v1/noop": {"saturation_throughput": 1000.0, "errors_below_saturation": 0},
    }
    g = goals(summary)
    assert g["throughput_ratio_rank_to_noop"] == 0.3 and g["throughput_ratio_met"] is False
    assert g["rank_p99_at_half_saturation_ms"] == 8.5 and g["p99_met"] is True
    assert g["errors_met"] is True
    summary["/v1/noop"]["errors_below_saturation"] = 2
    summary["/v1/rank"]["saturation_throughput"] = 600.0
    g = goals(summary)
    assert g["throughput_ratio_met"] is True and g["errors_met"] is False
