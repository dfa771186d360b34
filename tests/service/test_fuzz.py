"""API fuzzing in CI: schemathesis against the app's own /openapi.json, in process (ASGI), a
few derandomised examples per operation and mode (``loadtest/fuzz.py`` is the engine; its
long run against a live server is ``python loadtest/fuzz.py --cases 10000``), and regression
tests of what fuzzing found: an undeclared status or error body, a 5xx on a lone surrogate or
a bad experiment coverage.

The fuzzed app: the default bundle, an admin token, logs under a temporary folder, and small
limits (16 candidates, k 10, 4 KB bodies) so generated requests reach them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.python.asgi import shutdown_lifespans  # noqa: E402

from loadtest.fuzz import CHECK_NAMES, TOKEN, Names, checks, fuzz, fuzz_settings  # noqa: E402
from service.app import create_app  # noqa: E402
from service.schemas import INT64  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.service.app_support import DEFAULT_BUNDLE, TestClient  # noqa: E402

AUTH = {"authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}
SCALE = 5  # max_examples per operation and mode = weight * SCALE (about 400 cases, 6 s here)


@dataclass
class Fuzzed:
    settings: Settings
    schema: Any  # schemathesis' OpenApiSchema of the in-process app


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Iterator[Fuzzed]:
    settings = Settings(**fuzz_settings(tmp_path_factory.mktemp("fuzz") / "logs"))
    app = create_app(settings)
    # schemathesis runs the app's lifespan (bundle load, log sinks) on its own event loop.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    try:
        yield Fuzzed(settings, schema)
    finally:
        shutdown_lifespans()  # flush and close the log sinks now, not at interpreter exit


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    """A second app with the same settings, for hand-written requests (raw bytes, escapes)."""
    settings = Settings(**fuzz_settings(tmp_path_factory.mktemp("regress") / "logs"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def conforms(schema: Any, method: str, path: str, response: Any) -> None:
    """``response`` passes every fuzz check against the operation's declared responses."""
    case = schema[path][method].Case()
    for name, check in checks().items():
        try:
            case.validate_response(response, checks=[check])
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"{method} {path}: {name} fails: {e}\n{response.text}") from None


def test_schemathesis_every_operation_no_5xx_and_responses_match_the_document(fuzzed) -> None:
    tally = fuzz(fuzzed.schema, scale=SCALE, names=Names.of(DEFAULT_BUNDLE))
    s = tally.summary()
    bad = {c: n for c, n in s["failures_by_check"].items() if n}
    shown = "\n\n".join(f"{e['target']} {e['check']} ({e['status']}): {e['detail'][:400]}\n"
                         f"  {e['curl'][:400]}" for e in s["failure_examples"][:5])  # fmt: skip
    assert not bad, f"failed cases by check {bad}; the first:\n{shown}"
    assert set(s["failures_by_check"]) == set(CHECK_NAMES)
    # Every operation was fuzzed; the admin routes with and without the token.
    ops = {t.split(" [")[0] for t in s["cases_by_target"]}
    assert ops == {"GET /healthz", "GET /readyz", "GET /metrics", "GET /v1/models",
                   "POST /v1/rank", "POST /v1/noop", "POST /v1/feedback",
                   "POST /admin/reload", "POST /admin/experiment"}  # fmt: skip
    st = s["statuses_by_target"]
    for route in ("/admin/reload", "/admin/experiment"):
        # Without the token a body that parses is refused 401, never served.
        assert set(st[f"POST {route} [positive]"]) == {"401"}, st[f"POST {route} [positive]"]
        valid = st[f"POST {route} [valid +token]"]
        assert set(valid) <= {"200", "413"} and valid["200"] >= 0.9 * sum(valid.values()), valid
    # Valid shapes are served: a rank, noop or feedback with real names answers 200 (or 413
    # when it outgrows the 4 KB body limit: a feedback may hold 1000 events).
    for label in ("POST /v1/rank", "POST /v1/noop", "POST /v1/feedback"):
        valid = st[f"{label} [valid]"]
        assert set(valid) <= {"200", "413"} and valid["200"] >= 0.9 * sum(valid.values()), valid
        assert set(st[f"{label} [negative]"]) <= {"400", "413", "422"}, st[f"{label} [negative]"]
    seen = {code for statuses in st.values() for code in statuses}
    assert {"200", "401", "409", "422"} <= seen, seen
    assert s["cases"] >= 200


def test_openapi_declares_every_status_with_the_service_error_bodies(fuzzed) -> None:
    doc = fuzzed.schema.raw_schema
    statuses = {
        ("get", "/healthz"): {"200", "400", "413"},
        ("get", "/readyz"): {"200", "503", "400", "413"},
        ("get", "/metrics"): {"200", "400", "413"},
        ("get", "/v1/models"): {"200", "400", "413"},
        ("post", "/v1/rank"): {"200", "400", "413", "422"},
        ("post", "/v1/noop"): {"200", "400", "413", "422"},
        ("post", "/v1/feedback"): {"200", "400", "413", "422"},
        ("post", "/admin/reload"): {"200", "400", "401", "403", "409", "413", "422"},
        ("post", "/admin/experiment"): {"200", "400", "401", "403", "413", "422"},
    }
    for (method, path), codes in statuses.items():
        assert set(doc["paths"][path][method]["responses"]) == codes, (method, path)
    comps = doc["components"]["schemas"]
    assert "HTTPValidationError" not in comps  # FastAPI's default 422 body is not ours
    assert set(comps["ValidationErrorBody"]["required"]) == {"error", "errors"}
    assert set(comps["ErrorBody"]["required"]) == {"error", "field"}
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    # /v1/rank's limits are declared on its body; /v1/noop takes the same body without them.
    rank_body = doc["paths"]["/v1/rank"]["post"]["requestBody"]["content"]["application/json"]
    ref, limits = rank_body["schema"]["allOf"]
    assert ref == {"$ref": "#/components/schemas/RankRequest"}
    assert limits["properties"]["candidates"]["maxItems"] == fuzzed.settings.max_candidates
    assert limits["properties"]["k"]["maximum"] == fuzzed.settings.max_k
    rank = comps["RankRequest"]["properties"]
    assert "maxItems" not in rank["candidates"] and "maximum" not in rank["k"]
    assert rank["user_id"]["maximum"] == INT64 and isinstance(rank["user_id"]["maximum"], int)
    body = doc["paths"]["/admin/experiment"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["required"] == ["seed", "arms"]


def test_body_that_is_not_utf8_is_400_with_the_service_error_body(fuzzed, client) -> None:
    # Was FastAPI's {"detail": "There was an error parsing the body"}, undeclared.
    for path in ("/v1/rank", "/v1/noop", "/v1/feedback"):
        r = client.post(path, content=b'{"user_id": \xff}', headers=JSON)
        assert r.status_code == 400 and r.json()["field"] == "body", r.text
        assert "UnicodeDecodeError" in r.json()["error"]
        conforms(fuzzed.schema, "POST", path, r)
    r = client.post("/admin/reload", content=b"\xfe", headers={**JSON, **AUTH})
    assert r.status_code == 400, r.text
    conforms(fuzzed.schema, "POST", "/admin/reload", r)


def test_lone_surrogate_escapes_are_refused_4xx_not_500(fuzzed, client) -> None:
    # JSON's "\ud800" is a lone surrogate: valid JSON text, no UTF-8 encoding. Error bodies
    # that echoed it failed to render (500); they are now ASCII-escaped.
    cases = [
        ("/v1/noop", b'{"user_id": 1, "candidates": [1], "\\ud800": 1}', {}, 422),
        ("/v1/rank", b'"\\ud800"', {}, 422),
        ("/v1/rank", b'{"user_id": 1, "candidates": [1], "arm": "\\udfff"}', {}, 422),
        ("/v1/feedback", b'{"request_id": 1, "session_id": 1, "user_id": 1, "events": '
                         b'[{"item_id": 1, "position": 0, "\\ud800": 1}]}', {}, 422),
        ("/admin/reload", b'{"bundle_dir": "\\ud800"}', AUTH, 409),
    ]  # fmt: skip
    for path, body, headers, status in cases:
        r = client.post(path, content=body, headers={**JSON, **headers})
        assert r.status_code == status, (path, r.status_code, r.text)
        assert "\\ud" in r.text.lower() or "ud800" in r.text.lower(), r.text  # named, escaped
        conforms(fuzzed.schema, "POST", path, r)


def test_experiment_with_a_bad_coverage_or_a_surrogate_is_422_and_models_keep_answering(
    fuzzed, client
) -> None:
    arms = [{"name": "drl_student", "weight": 1.0}]
    bad = [
        {"seed": "s", "arms": arms, "coverage": []},  # TypeError in float(): was a 500
        {"seed": "s", "arms": arms, "coverage": {"x": 1}},
        {"seed": "\ud800", "arms": arms},  # applied, then every /v1/models answered 500
        {"seed": "s", "arms": arms, "overrides": {"\udfff": "drl_student"}},
        {"seed": "s", "arms": arms, "overrides": {"7": "\ud800"}},
    ]
    before = client.get("/v1/models").json()
    for body in bad:
        r = client.post("/admin/experiment", content=json.dumps(body),  # ASCII: escapes kept
                        headers={**JSON, **AUTH})  # fmt: skip
        assert r.status_code == 422 and r.json()["field"] == "experiment", (body, r.text)
        conforms(fuzzed.schema, "POST", "/admin/experiment", r)
    after = client.get("/v1/models")
    assert after.status_code == 200 and after.json() == before
    conforms(fuzzed.schema, "GET", "/v1/models", after)
    ok = client.post("/admin/experiment", json={"seed": "sé", "arms": arms}, headers=AUTH)
    assert ok.status_code == 200 and ok.json()["experiment"]["seed"] == "sé"
    r = client.post("/v1/rank", json={"user_id": 3, "candidates": [1, 2, 3], "k": 2})
    assert r.status_code == 200 and r.json()["arm"] == "drl_student"
    conforms(fuzzed.schema, "POST", "/v1/rank", r)


def test_whole_floats_for_integer_fields_are_refused_422_as_documented(fuzzed, client) -> None:
    # JSON Schema counts 7.0 as an integer; the service's strict types refuse it (not a
    # coercion it makes). schemathesis' positive mode sends such values: a declared 422.
    r = client.post("/v1/rank", json={"user_id": 7.0, "candidates": [1]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "user_id"
    conforms(fuzzed.schema, "POST", "/v1/rank", r)
