"""The ranking service through HTTP (one app on the committed default bundle, lifespan run by
TestClient): the rank/feedback contract, refusals of bad input, bucketing, exploration
propensities, and the session state carried across requests."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from runtime.bundle import Bundle, LoadedModel
from runtime.lists import Exploration, SessionState, build_lists
from service.app import create_app
from service.bucketing import Experiment
from service.metrics import STAGES
from service.settings import Settings
from service.state_store import state_key
from tests.service.app_support import (
    ARMS,
    AUTH,
    DEFAULT_BUNDLE,
    N_BUCKETS,
    TS,
    WEIGHTS,
    TestClient,
    assert_refused,
    make_settings,
    write_experiment,
)

RESPONSE_KEYS = {"request_id", "session_id", "arm", "bucket", "model_version",
                 "bundle_version", "state", "unknown_items", "items"}  # fmt: skip
ITEM_KEYS = {"item_id", "position", "score", "explored", "propensity"}


@dataclass
class Served:
    app: FastAPI
    client: TestClient
    settings: Settings
    experiment: Experiment  # parsed by the test from the file the app reads

    @property
    def bundle(self) -> Bundle:
        return self.app.state.services.serving.bundle

    def rank(self, **body: Any) -> dict:
        r = self.client.post("/v1/rank", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def rank_many(self, bodies: list[dict]) -> list[dict]:
        """POST each body to /v1/rank in turn through httpx's ASGI transport on the app's own
        event loop (TestClient's thread hand-off costs more than the ranking)."""

        async def run() -> list[dict]:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                out = []
                for body in bodies:
                    r = await c.post("/v1/rank", json=body)
                    assert r.status_code == 200, r.text
                    out.append(r.json())
                return out

        return self.client.portal.call(run)

    def stored(self, arm: str, session_id: int) -> SessionState | None:
        """The session's state as the app's store holds it (read on the app's event loop)."""
        svc = self.app.state.services
        key = state_key(self.bundle.manifest.state_schema_version, arm, session_id)
        raw = self.client.portal.call(svc.store.get, key)
        return None if raw is None else SessionState.from_bytes(raw)

    def metrics(self) -> dict:
        r = self.client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(r.text)}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("app")
    exp = write_experiment(tmp / "experiment.json", exploration={"drl_student": (0.2, 3)})
    settings = make_settings(tmp, experiment_file=tmp / "experiment.json", max_candidates=500,
                             max_k=50, max_body_bytes=64_000)  # fmt: skip
    app = create_app(settings)
    with TestClient(app) as client:
        yield Served(app, client, settings, exp)


def items(bundle: Bundle, n: int, offset: int = 0) -> list[int]:
    """``n`` real item ids of the bundle, spread over its table."""
    ids = bundle.tables.item_ids
    return ids[offset :: max(1, len(ids) // (n + 1))][:n].tolist()


def user_for(exp: Experiment, arm: str, start: int = 1000) -> int:
    return next(u for u in range(start, start + 10_000) if exp.assign(u).arm == arm)


def check_rank_response(r: dict, served: Served, user_id: int, cands: list[int], k: int) -> None:
    assert set(r) == RESPONSE_KEYS, r
    a = served.experiment.assign(user_id)
    assert isinstance(r["request_id"], int) and 0 <= r["request_id"] < 2**63
    assert isinstance(r["session_id"], int) and 0 <= r["session_id"] < 2**63
    assert (r["arm"], r["bucket"]) == (a.arm, a.bucket)
    assert r["model_version"] == served.bundle.model(a.arm).spec.model_version
    assert r["bundle_version"] == served.bundle.version
    assert r["state"] in ("cold", "warm")
    assert r["unknown_items"] == 0
    listed = r["items"]
    assert [i["position"] for i in listed] == list(range(k))
    ids = [i["item_id"] for i in listed]
    assert len(set(ids)) == k and set(ids) <= set(cands)
    for i in listed:
        assert set(i) == ITEM_KEYS
        assert isinstance(i["item_id"], int) and isinstance(i["explored"], bool)
        assert isinstance(i["score"], float) and math.isfinite(i["score"])
        assert isinstance(i["propensity"], float) and 0.0 < i["propensity"] <= 1.0


# --- 1. the contract -----------------------------------------------------------------------


def test_ops_routes_answer_and_readyz_is_503_before_startup(served: Served) -> None:
    assert served.client.get("/healthz").json() == {"status": "ok"}
    ready = served.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "bundle_version": served.bundle.version}
    not_started = TestClient(create_app(served.settings))  # no `with`: lifespan not run
    assert not_started.get("/readyz").status_code == 503
    assert not_started.get("/healthz").status_code == 200


def test_rank_contract_session_issued_then_echoed_state_cold_then_warm(served: Served) -> None:
    cands = items(served.bundle, 60)
    for arm in ARMS:
        uid = user_for(served.experiment, arm)
        first = served.rank(user_id=uid, candidates=cands, k=10, context={"timestamp_ms": TS})
        check_rank_response(first, served, uid, cands, 10)
        assert first["state"] == "cold"
        sid = first["session_id"]
        second = served.rank(user_id=uid, session_id=sid, candidates=cands, k=10,
                             context={"timestamp_ms": TS + 60_000})  # fmt: skip
        check_rank_response(second, served, uid, cands, 10)
        assert (second["session_id"], second["state"]) == (sid, "warm")
        assert second["request_id"] != first["request_id"]
        # A client-chosen session id the service has not seen: echoed, cold.
        own = served.rank(user_id=uid, session_id=sid ^ 1, candidates=cands, k=3)
        assert (own["session_id"], own["state"]) == (sid ^ 1, "cold")
    # Issued session ids differ between requests.
    uid = user_for(served.experiment, "drl_teacher")
    sids = {served.rank(user_id=uid, candidates=cands, k=1)["session_id"] for _ in range(5)}
    assert len(sids) == 5
    # k beyond the candidate count: all candidates, documented cap.
    r = served.rank(user_id=uid, candidates=cands[:4], k=10)
    assert sorted(i["item_id"] for i in r["items"]) == sorted(cands[:4])


def test_unknown_item_ids_are_ranked_and_counted_not_refused(served: Served) -> None:
    cands = items(served.bundle, 20)
    top = int(served.bundle.tables.item_ids.max())
    unknown = [top + 1, top + 1000, 2**63 - 1]
    uid = user_for(served.experiment, "drl_teacher")
    before = served.metrics()["ranker_unknown_items"]
    r = served.rank(user_id=uid, candidates=cands + unknown, k=len(cands) + 3)
    assert r["unknown_items"] == 3
    assert set(unknown) <= {i["item_id"] for i in r["items"]}
    after = served.metrics()["ranker_unknown_items"]

    def count(fam) -> float:
        return sum(s.value for s in fam.samples if s.name == "ranker_unknown_items_total")

    assert count(after) - count(before) == 3


def test_feedback_counts_clicks_and_the_next_rank_uses_them(served: Served) -> None:
    b, client = served.bundle, served.client
    arm = "drl_teacher"  # no exploration in this arm: lists are greedy
    uid = user_for(served.experiment, arm)
    cands = items(b, 40)
    r1 = served.rank(user_id=uid, candidates=cands, k=5, context={"timestamp_ms": TS})
    sid, shown = r1["session_id"], [i["item_id"] for i in r1["items"]]

    def feedback(events: list[dict], **extra: Any) -> dict:
        body = {"request_id": r1["request_id"], "session_id": sid, "user_id": uid, **extra,
                "events": events}  # fmt: skip
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    assert feedback([{"item_id": shown[0], "position": 0, "click": 1, "watch_time": 12.5},
                     {"item_id": shown[1], "position": 1, "click": 0, "like": 1},
                     {"item_id": shown[2], "position": 2, "click": 1, "timestamp_ms": TS + 5}],
                    arm=arm) == {"accepted": 3, "session_clicks": 2}  # fmt: skip
    assert feedback([{"item_id": shown[3], "position": 3, "click": 1}]) == {
        "accepted": 1,
        "session_clicks": 3,
    }  # fmt: skip  (arm from the user's assignment)
    assert feedback([{"item_id": shown[4], "position": 4, "long_view": 1}]) == {
        "accepted": 1, "session_clicks": 3}  # fmt: skip
    # A session without state: accepted, clicks unknown.
    gone = client.post("/v1/feedback", json={"request_id": 1, "session_id": sid ^ 1,
                       "user_id": uid, "events": [{"item_id": shown[0], "position": 0,
                                                   "click": 1}]})  # fmt: skip
    assert gone.json() == {"accepted": 1, "session_clicks": None}

    state = served.stored(arm, sid)
    assert state is not None and (state.clicks, state.request_index, state.depth) == (3, 1, 5)
    ts2 = TS + 60_000
    r2 = served.rank(user_id=uid, session_id=sid, candidates=cands, k=5,
                     context={"timestamp_ms": ts2})  # fmt: skip
    assert r2["state"] == "warm"
    after = served.stored(arm, sid)
    assert after is not None and (after.clicks, after.request_index, after.depth) == (3, 2, 10)
    # The second list is the one built on the state with the 3 clicks, not with none.
    model = b.model(arm)

    def direct(s: SessionState):
        return build_lists(b, model, [s], np.array([uid]), np.array([ts2]),
                           np.array(cands)[None], 5)  # fmt: skip

    with_clicks, without = direct(state), direct(replace(state, clicks=0))
    assert [i["item_id"] for i in r2["items"]] == with_clicks.item_ids[0].tolist()
    served_scores = np.array([i["score"] for i in r2["items"]], dtype=np.float32)
    assert np.array_equal(served_scores, with_clicks.scores[0])
    assert not np.array_equal(with_clicks.scores[0], without.scores[0]), "clicks had no effect"


def test_models_lists_arms_ranges_and_model_versions(served: Served) -> None:
    m = served.client.get("/v1/models").json()
    b, exp = served.bundle, served.experiment
    assert m["bundle_version"] == b.version
    assert m["bundle_dir"] == str(DEFAULT_BUNDLE)
    assert m["state_schema_version"] == b.manifest.state_schema_version
    assert m["experiment_seed"] == exp.seed
    assert [a["name"] for a in m["arms"]] == list(ARMS)
    for a, rng in zip(m["arms"], exp.ranges(), strict=True):
        assert a["weight"] == WEIGHTS[a["name"]]
        assert tuple(a["bucket_range"]) == rng
        assert a["model_version"] == b.model(a["name"]).spec.model_version
        want = (0.2, 3) if a["name"] == "drl_student" else (0.0, 1)
        assert (a["exploration_rate"], a["exploration_top_k"]) == want
    assert set(m["models"]) == set(ARMS)
    for name, info in m["models"].items():
        assert info["model_version"] == b.model(name).spec.model_version
        assert info["kind"] == b.model(name).spec.kind


def test_metrics_have_request_latency_by_route_and_arm_and_every_stage(served: Served) -> None:
    cands = items(served.bundle, 30)
    for arm in ARMS:  # the last one, mmrf_watchtime, gets the feedback
        uid = user_for(served.experiment, arm)
        r = served.rank(user_id=uid, candidates=cands, k=3)
    fb = served.client.post("/v1/feedback", json={
        "request_id": r["request_id"], "session_id": r["session_id"], "user_id": uid,
        "events": [{"item_id": r["items"][0]["item_id"], "position": 0, "click": 1}]})  # fmt: skip
    assert fb.status_code == 200
    fams = served.metrics()
    req = fams["ranker_request_duration_seconds"]
    assert req.type == "histogram"
    counted = {(s.labels["route"], s.labels["arm"]) for s in req.samples
               if s.name == "ranker_request_duration_seconds_count" and s.value > 0}  # fmt: skip
    assert {("/v1/rank", a) for a in ARMS} <= counted
    assert ("/v1/feedback", "mmrf_watchtime") in counted
    buckets = [s for s in req.samples if s.name == "ranker_request_duration_seconds_bucket"]
    assert any(s.labels["le"] == "+Inf" for s in buckets)
    stage = fams["ranker_stage_duration_seconds"]
    assert stage.type == "histogram"
    for arm in ARMS:
        seen = {s.labels["stage"] for s in stage.samples
                if s.name == "ranker_stage_duration_seconds_count" and s.labels["arm"] == arm
                and s.value > 0}  # fmt: skip
        assert seen == set(STAGES), (arm, seen)
    assert "ranker_candidates_per_request" in fams
    assert "ranker_state_store_errors" in fams


# --- 2. bad input: 4xx naming the field and the value --------------------------------------

BAD_RANK = [
    # (overrides of a valid body, keys to delete, field, value named, status)
    ({"candidates": []}, (), "candidates", "[]", 422),
    ({"candidates": "x"}, (), "candidates", "x", 422),
    ({"candidates": ["abc"]}, (), "candidates.0", "abc", 422),
    ({"candidates": [-5]}, (), "candidates", "-5", 422),
    ({"candidates": [2**63]}, (), "candidates", str(2**63), 422),
    ({"user_id": "abc"}, (), "user_id", "abc", 422),
    ({"user_id": [1]}, (), "user_id", "[1]", 422),
    ({"user_id": -1}, (), "user_id", "-1", 422),
    ({"user_id": 1.5}, (), "user_id", "1.5", 422),
    ({"user_id": True}, (), "user_id", "True", 422),  # no coercion: a bool is not an id
    ({"user_id": "7"}, (), "user_id", "7", 422),
    ({"k": "10"}, (), "k", "10", 422),
    ({"session_id": "s-1"}, (), "session_id", "s-1", 422),
    ({"k": 0}, (), "k", "0", 422),
    ({"k": 51}, (), "k", "51", 422),
    ({"k": "ten"}, (), "k", "ten", 422),
    ({"foo": 1}, (), "foo", "1", 422),
    ({"context": {"timestamp_ms": -1}}, (), "context.timestamp_ms", "-1", 422),
    ({"context": {"hour": 3}}, (), "context.hour", "3", 422),
    ({"context": {"request_index": 100_001}}, (), "context.request_index", "100001", 422),
    ({"exploration": {"epsilon": 1.0}}, (), "exploration.epsilon", "1.0", 422),
    ({"exploration": {"epsilon": -0.1}}, (), "exploration.epsilon", "-0.1", 422),
    ({"exploration": {"epsilon": 0.1, "top_k": 0}}, (), "exploration.top_k", "0", 422),
    ({"exploration": {"top_k": 3}}, (), "exploration.epsilon", None, 422),
    ({"arm": "nope"}, (), "arm", "nope", 422),
    ({"user_features": {"bogus": 1}}, (), "user_features", "bogus", 422),
    ({"user_features": {"user_id": 3}}, (), "user_features", "user_id", 422),
    ({"user_features": {"u_active": -1}}, (), "user_features", "-1", 422),
    ({"user_features": {"u_active": "high"}}, (), "user_features.u_active", "high", 422),
    ({}, ("user_id",), "user_id", None, 422),
    ({}, ("candidates",), "candidates", None, 422),
]


@pytest.mark.parametrize(("over", "drop", "field", "value", "status"), BAD_RANK,
                         ids=[f"{c[2]}-{i}" for i, c in enumerate(BAD_RANK)])  # fmt: skip
def test_bad_rank_body_is_refused_naming_field_and_value(served, over, drop, field, value, status):
    body = {"user_id": 7, "candidates": items(served.bundle, 20), "k": 5, **over}
    for key in drop:
        del body[key]
    assert_refused(served.client.post("/v1/rank", json=body), field, value, status)


def test_too_many_and_duplicate_candidates_are_refused(served: Served) -> None:
    ids = served.bundle.tables.item_ids
    many = ids[: served.settings.max_candidates + 1].tolist()
    r = served.client.post("/v1/rank", json={"user_id": 7, "candidates": many})
    assert_refused(r, "candidates", str(len(many)), 422)
    dup = [int(ids[0]), int(ids[1]), int(ids[0])]
    r = served.client.post("/v1/rank", json={"user_id": 7, "candidates": dup})
    body = assert_refused(r, "candidates", str(dup[0]), 422)
    assert "more than once" in body["error"]


RAW = '{{"user_id": 7, "candidates": [{c0}, {c1}], {extra}}}'
NON_FINITE = [
    ('"exploration": {"epsilon": NaN}', "exploration.epsilon", "nan"),
    ('"exploration": {"epsilon": Infinity}', "exploration.epsilon", "inf"),
    ('"exploration": {"epsilon": -Infinity}', "exploration.epsilon", "-inf"),
    ('"k": NaN', "k", "nan"),
    ('"user_id": Infinity', "user_id", "inf"),
    ('"extra_field": NaN', "extra_field", "nan"),
]


@pytest.mark.parametrize(("extra", "field", "value"), NON_FINITE,
                         ids=[f"{c[1]}-{c[2]}" for c in NON_FINITE])  # fmt: skip
def test_nan_and_infinity_are_refused_with_4xx(served, extra, field, value):
    c0, c1 = items(served.bundle, 2)
    raw = RAW.format(c0=c0, c1=c1, extra=extra)
    assert json.loads(raw)  # Python's parser takes it, as the app's does
    r = served.client.post("/v1/rank", content=raw, headers={"content-type": "application/json"})
    assert_refused(r, field, value, 422)


def test_malformed_non_object_and_non_json_bodies_are_refused(served: Served) -> None:
    post = served.client.post
    r = post("/v1/rank", content='{"user_id": 7, "candidates": [1, 2]',
             headers={"content-type": "application/json"})  # fmt: skip
    body = assert_refused(r, "body", '"candidates": [1, 2]', 422)
    assert "invalid JSON at character" in body["error"]
    r = post("/v1/rank", content="[1, 2]", headers={"content-type": "application/json"})
    assert_refused(r, "body", "[1, 2]", 422)
    r = post("/v1/rank", content="", headers={"content-type": "application/json"})
    assert_refused(r, "body", None, 422)
    r = post("/v1/rank", content='{"user_id": 7, "candidates": [1]}',
             headers={"content-type": "text/plain"})  # fmt: skip
    assert_refused(r, "body", None, 422)
    r = post("/v1/rank", content='{"user_id": 7, "candidates": [1]}',
             headers={"content-type": "application/json", "content-length": "abc"})  # fmt: skip
    assert_refused(r, "content-length", "abc", 400)


def test_oversized_body_is_413_with_and_without_content_length(served: Served) -> None:
    limit = served.settings.max_body_bytes
    big = '{"user_id": 7, "candidates": [' + ", ".join(["1"] * limit) + "]}"
    r = served.client.post("/v1/rank", content=big, headers={"content-type": "application/json"})
    assert_refused(r, "body", str(len(big)), 413)

    def chunked(n_chunks: int):
        yield b'{"user_id": 7, "candidates": ['
        for _ in range(n_chunks):
            yield b" " * 1000
        yield b"%d]}" % served.bundle.tables.item_ids[0]

    r = served.client.post("/v1/rank", content=chunked(limit // 1000 + 1),
                           headers={"content-type": "application/json"})  # fmt: skip
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_refused(r, "body", str(limit), 413)
    # A chunked body under the limit still reaches the route whole.
    r = served.client.post("/v1/rank", content=chunked(3),
                           headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 200, r.text


BAD_FEEDBACK = [
    ({"arm": "nope"}, "arm", "nope"),
    ({"events": []}, "events", "[]"),
    ({"events": [{"item_id": 1, "position": 0}] * 1001}, "events", None),
    ({"events": [{"item_id": 1, "position": 0, "click": 2}]}, "events.0.click", "2"),
    ({"events": [{"item_id": 1, "position": -1}]}, "events.0.position", "-1"),
    (
        {"events": [{"item_id": 1, "position": 0, "watch_time": -3.0}]},
        "events.0.watch_time",
        "-3.0",
    ),
    ({"events": [{"item_id": 1, "position": 0, "dwell": 1}]}, "events.0.dwell", "1"),
    ({"events": [{"item_id": "one", "position": 0}]}, "events.0.item_id", "one"),
    ({"session_id": None}, "session_id", "None"),
    ({"user_id": "u"}, "user_id", "u"),
    ({"events": "click"}, "events", "click"),
]


@pytest.mark.parametrize(("over", "field", "value"), BAD_FEEDBACK,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(BAD_FEEDBACK)])  # fmt: skip
def test_bad_feedback_is_refused_naming_field_and_value(served, over, field, value):
    body = {"request_id": 1, "session_id": 2, "user_id": 3,
            "events": [{"item_id": 1, "position": 0, "click": 1}], **over}  # fmt: skip
    assert_refused(served.client.post("/v1/feedback", json=body), field, value, 422)


def test_feedback_with_nan_watch_time_is_refused(served: Served) -> None:
    raw = ('{"request_id": 1, "session_id": 2, "user_id": 3, "events": '
           '[{"item_id": 1, "position": 0, "watch_time": NaN}]}')  # fmt: skip
    r = served.client.post("/v1/feedback", content=raw,
                           headers={"content-type": "application/json"})  # fmt: skip
    assert_refused(r, "events.0.watch_time", "nan", 422)


def test_admin_routes_refuse_a_missing_or_wrong_token(served: Served) -> None:
    post = served.client.post
    for route, body in (("/admin/reload", {}), ("/admin/experiment", {"seed": "x", "arms": []})):
        assert_refused(post(route, json=body), "authorization", None, 401)
        bad = {"authorization": "Bearer wrong"}
        assert_refused(post(route, json=body, headers=bad), "authorization", None, 401)
        raw = {"authorization": served.settings.admin_token.get_secret_value()}  # no "Bearer"
        assert_refused(post(route, json=body, headers=raw), "authorization", None, 401)
    # With the token: a bundle folder that is not one, and a bad experiment, are refused.
    r = post("/admin/reload", json={"bundle_dir": "/nonexistent/bundle"}, headers=AUTH)
    assert_refused(r, "bundle_dir", "/nonexistent/bundle", 409)
    r = post("/admin/reload", json={"bundle_dir": 5, "x": 1}, headers=AUTH)
    assert_refused(r, "x", "1", 422)
    r = post("/admin/experiment", json={"seed": "x", "arms": [{"name": "nope", "weight": 1.0}]},
             headers=AUTH)  # fmt: skip
    assert_refused(r, "experiment", "nope", 422)
    assert served.client.get("/v1/models").json()["bundle_dir"] == str(DEFAULT_BUNDLE)


def test_admin_without_a_configured_token_is_403_and_the_default_split_serves(tmp_path):
    app = create_app(make_settings(tmp_path, admin_token=None))
    with TestClient(app) as client:
        for route in ("/admin/reload", "/admin/experiment"):
            r = client.post(route, json={}, headers=AUTH)
            assert_refused(r, "authorization", None, 403)
        m = client.get("/v1/models").json()
        split = {a["name"]: (a["weight"], a["exploration_rate"], a["exploration_top_k"])
                 for a in m["arms"]}  # fmt: skip
        # the README's default split (0.8, 0.1, 0.1, 0.1) renormalised over the four arms
        assert split == {"drl_student": (0.8 / 1.1, 0.05, 3), "drl_teacher": (0.1 / 1.1, 0.0, 1),
                         "wide_deep_weighted": (0.1 / 1.1, 0.0, 1),
                         "mmrf_watchtime": (0.1 / 1.1, 0.0, 1)}  # fmt: skip
        assert m["experiment_seed"] == "ranker-default"


# --- 3. bucketing ----------------------------------------------------------------------------


def test_split_over_3000_users_matches_the_configured_weights(served: Served) -> None:
    exp = served.app.state.services.serving.experiment
    assert exp == served.experiment and exp.arm_names == ARMS
    n = 3000
    counts = Counter(exp.assign(u).arm for u in range(n))
    for arm, w in WEIGHTS.items():
        assert abs(counts[arm] - n * w) <= 4 * math.sqrt(n * w * (1 - w)), (arm, counts)


def test_http_arm_and_bucket_equal_experiment_assign_and_are_stable(served: Served) -> None:
    exp = served.experiment
    cands = items(served.bundle, 5)
    big = np.random.default_rng(7).integers(0, 2**63 - 1, 150, dtype=np.int64).tolist()
    users = list(range(150)) + big
    got = {}
    responses = served.rank_many([{"user_id": u, "candidates": cands, "k": 1} for u in users])
    for u, r in zip(users, responses, strict=True):
        a = exp.assign(u)
        assert (r["arm"], r["bucket"]) == (a.arm, a.bucket), u
        assert 0 <= r["bucket"] < N_BUCKETS
        got[u] = r
    counts = Counter(r["arm"] for r in got.values())
    n = len(users)
    for arm, w in WEIGHTS.items():
        assert abs(counts[arm] - n * w) <= 4 * math.sqrt(n * w * (1 - w)), (arm, counts)
    # Stable across requests and sessions: new sessions, a given session, a later request.
    for u in users[::15]:
        sid = got[u]["session_id"]
        again = [served.rank(user_id=u, candidates=cands, k=1) for _ in range(2)]
        again.append(served.rank(user_id=u, session_id=sid, candidates=cands, k=1))
        again.append(served.rank(user_id=u, session_id=sid + 1, candidates=cands, k=1))
        assert {(r["arm"], r["bucket"]) for r in again} == {(got[u]["arm"], got[u]["bucket"])}


# --- 4. exploration propensities --------------------------------------------------------------


@pytest.mark.slow
def test_position_0_frequencies_match_the_returned_propensities(served: Served) -> None:
    uid = user_for(served.experiment, "drl_student")
    cands = items(served.bundle, 12)
    ctx = {"timestamp_ms": TS}
    greedy = served.rank(user_id=uid, candidates=cands, k=1, context=ctx,
                         exploration={"epsilon": 0.0})  # fmt: skip
    (best,) = greedy["items"]
    assert best["propensity"] == 1.0 and not best["explored"]
    eps, n = 0.5, 1500
    counts: Counter[int] = Counter()
    props: dict[int, set[float]] = {}
    body = {"user_id": uid, "candidates": cands, "k": 1, "context": ctx,
            "exploration": {"epsilon": eps, "top_k": 3}}  # fmt: skip
    for r in served.rank_many([body] * n):
        assert r["state"] == "cold"  # a new session each time: the same first position
        (first,) = r["items"]
        counts[first["item_id"]] += 1
        props.setdefault(first["item_id"], set()).add(first["propensity"])
        assert first["explored"] == (first["item_id"] != best["item_id"]), first
    # Position 0 draws from the 3 best candidates: the greedy pick and two others.
    assert len(counts) == 3 and best["item_id"] in counts, counts
    total = 0.0
    for item, seen in props.items():
        assert len(seen) == 1, (item, seen)  # the same propensity every time
        p = seen.pop()
        want = 1 - eps + eps / 3 if item == best["item_id"] else eps / 3
        assert p == pytest.approx(want, abs=1e-12), item
        total += p
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[item] - n * p) <= 4 * sigma, (item, counts[item], n * p, sigma)
    assert total == pytest.approx(1.0)


# --- 5. the state carried across requests ----------------------------------------------------


class Recording(LoadedModel):
    """A model whose step-graph calls are recorded (the impressions it placed, in order)."""

    steps: list[dict[str, np.ndarray]]

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if graph == "step":
            self.steps.append({k: v.copy() for k, v in feeds.items()})
        return super().run(graph, feeds)


def test_state_of_two_requests_equals_the_direct_builder_and_the_step_graph(served: Served):
    b, arm = served.bundle, "drl_student"
    model = b.model(arm)
    assert model.stateful and model.memory == 10
    uid = user_for(served.experiment, "drl_teacher")  # the arm is forced below
    cands = items(b, 40, offset=3)
    sid = 987_654_321_012
    ts = [TS, TS + 90_000]
    served_lists = []
    for t in ts:
        r = served.rank(user_id=uid, session_id=sid, candidates=cands, k=5, arm=arm,
                        exploration={"epsilon": 0.0}, context={"timestamp_ms": t})  # fmt: skip
        assert r["arm"] == arm and r["model_version"] == model.spec.model_version
        served_lists.append([i["item_id"] for i in r["items"]])
    state = served.stored(arm, sid)
    assert state is not None

    rec = Recording(model.spec, model.sessions)
    rec.steps = []
    direct = SessionState.new(model, b.spec.recent_window)
    for t, want in zip(ts, served_lists, strict=True):
        out = build_lists(b, rec, [direct], np.array([uid]), np.array([t]),
                          np.array(cands)[None], 5, Exploration(0.0, 3))  # fmt: skip
        assert out.item_ids[0].tolist() == want
        direct = out.states[0]
    np.testing.assert_array_equal(state.buffer, direct.buffer)
    np.testing.assert_array_equal(state.mask, direct.mask)
    np.testing.assert_array_equal(state.recent_tags, direct.recent_tags)
    assert (state.request_index, state.depth, state.clicks) == (2, 10, 0)
    assert (direct.request_index, direct.depth, direct.clicks) == (2, 10, 0)
    assert state.mask.all()  # 10 impressions fill the window of 10

    # The window is the step graph's encoding of the 10 placed impressions in order: replay
    # them through the step graph from an empty state, in one pass over both requests.
    placed = [i for lst in served_lists for i in lst]
    assert len(rec.steps) == 10
    item_f = b.tables.items(np.array(placed))[0]
    n_uc = model.spec.dims["n_user_ctx"]
    n_it = model.spec.dims["n_item"]
    buf = np.zeros((1, model.memory, model.enc_dim), np.float32)
    mask = np.zeros((1, model.memory), bool)
    for step, f in zip(rec.steps, item_f, strict=True):
        np.testing.assert_array_equal(step["impression_ids"][0, n_uc : n_uc + n_it], f)
        buf, mask, _ = model.run("step", {"buffer": buf, "mask": mask,
                                          "user_ctx": step["user_ctx"],
                                          "impression_ids": step["impression_ids"]})  # fmt: skip
    np.testing.assert_array_equal(state.buffer, buf[0])
    np.testing.assert_array_equal(state.mask, mask[0])
    tags = b.tables.items(np.array(placed))[1]
    np.testing.assert_array_equal(state.recent_tags[-10:], tags)
