"""The service on a Redis session store, through HTTP: cold then warm through the shared Redis
with TTLs on every key; a private Redis killed mid-test degrades requests (200, "degraded",
errors counted) and the service recovers by itself when Redis is back."""

from __future__ import annotations

import re

import redis

from runtime.lists import SessionState
from service.app import create_app
from service.state_store import state_key
from tests.service.app_support import TS, TestClient, make_settings
from tests.service.conftest import SHARED_REDIS_URL, wait_until


def _rank(client: TestClient, body: dict) -> dict:
    r = client.post("/v1/rank", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _store_errors(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    pat = r'^ranker_state_store_errors_total\{reason="(\w+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pat, text, re.M)}


def test_state_is_cold_then_warm_through_the_shared_redis_with_a_ttl(
    tmp_path, shared_redis: redis.Redis, unique_prefix: str
) -> None:
    ttl_s = 120.0
    settings = make_settings(tmp_path, redis_url=SHARED_REDIS_URL, state_key_prefix=unique_prefix,
                             state_ttl_s=ttl_s)  # fmt: skip
    app = create_app(settings)
    with TestClient(app) as client:
        bundle = app.state.services.serving.bundle
        cands = bundle.tables.item_ids[::100][:40].tolist()
        body = {"user_id": 31, "candidates": cands, "k": 5, "context": {"timestamp_ms": TS}}
        first = _rank(client, body)
        assert first["state"] == "cold"
        sid, arm = first["session_id"], first["arm"]
        second = _rank(client, {**body, "session_id": sid})
        assert (second["state"], second["arm"]) == ("warm", arm)
        shown = second["items"][0]["item_id"]
        fb = client.post("/v1/feedback", json={
            "request_id": second["request_id"], "session_id": sid, "user_id": 31,
            "events": [{"item_id": shown, "position": 0, "click": 1}]})  # fmt: skip
        assert fb.json() == {"accepted": 1, "session_clicks": 1}

        key = unique_prefix + state_key(bundle.manifest.state_schema_version, arm, sid)
        assert list(shared_redis.scan_iter(match=unique_prefix + "*")) == [key.encode()]
        ttl_ms = shared_redis.pttl(key)
        assert 0 < ttl_ms <= ttl_s * 1000
        state = SessionState.from_bytes(shared_redis.get(key))
        assert (state.request_index, state.depth, state.clicks) == (2, 10, 1)
        errors = _store_errors(client)
        assert errors and not any(errors.values()), errors
    # (unique_prefix deletes the keys)


def test_redis_killed_mid_test_degrades_then_the_service_recovers(tmp_path, redis_server) -> None:
    settings = make_settings(tmp_path, redis_url=redis_server.url, redis_breaker_ms=50.0,
                             state_key_prefix="t:")  # fmt: skip
    app = create_app(settings)
    with TestClient(app) as client:
        cands = app.state.services.serving.bundle.tables.item_ids[::100][:40].tolist()
        body = {"user_id": 8, "candidates": cands, "k": 5, "context": {"timestamp_ms": TS}}
        sid = _rank(client, body)["session_id"]
        body["session_id"] = sid
        assert _rank(client, body)["state"] == "warm"
        assert not any(_store_errors(client).values())

        redis_server.kill()
        degraded = [_rank(client, body) for _ in range(5)]
        assert [r["state"] for r in degraded] == ["degraded"] * 5
        assert all(len(r["items"]) == 5 for r in degraded)  # a cold state was served
        errors = _store_errors(client)
        assert errors["connection"] >= 1, errors
        assert sum(errors.values()) >= 5, errors  # every degraded lookup is counted

        redis_server.start()  # the same port, empty: the session's state is gone
        seen: list[str] = []

        def recovered() -> bool:
            seen.append(_rank(client, body)["state"])
            return seen[-1] != "degraded"

        wait_until(recovered, timeout_s=10.0, what="the service to use Redis again")
        # "cold" (the restarted Redis is empty), or "warm" when the breaker closed between a
        # degraded request's skipped lookup and its write, which then stored a fresh state.
        assert seen[-1] in ("cold", "warm"), seen
        assert _rank(client, body)["state"] == "warm"
        ready = client.get("/readyz")
        assert ready.status_code == 200
