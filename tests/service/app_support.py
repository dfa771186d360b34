"""Helpers of the HTTP-level service tests: the default bundle, test settings, an experiment
file, and the check that a refused request names its field and value."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from starlette.exceptions import StarletteDeprecationWarning

from service.bucketing import Experiment, experiment_from_dict
from service.settings import Settings

with warnings.catch_warnings():  # starlette asks for httpx2 at import; httpx is what we have
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = ROOT / "models" / "default"
TOKEN = "test-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
TS = 1_700_000_000_000 + 13 * 3_600_000  # a fixed afternoon, epoch ms: the hour feature holds
N_BUCKETS = 10_000

ARMS = ("drl_student", "drl_teacher", "wide_deep_weighted", "mmrf_watchtime")
WEIGHTS = {
    "drl_student": 0.4,
    "drl_teacher": 0.25,
    "wide_deep_weighted": 0.2,
    "mmrf_watchtime": 0.15,
}


def write_experiment(
    path: Path,
    *,
    seed: str = "svc-test",
    weights: dict[str, float] = WEIGHTS,
    exploration: dict[str, tuple[float, int]] | None = None,
) -> Experiment:
    """Write an experiment JSON file (arms in ``weights`` order) and return it parsed."""
    exploration = exploration or {}
    raw = {
        "seed": seed,
        "arms": [
            {
                "name": name,
                "weight": w,
                "exploration_rate": exploration.get(name, (0.0, 1))[0],
                "exploration_top_k": exploration.get(name, (0.0, 1))[1],
            }
            for name, w in weights.items()
        ],
    }
    path.write_text(json.dumps(raw))
    return experiment_from_dict(raw)


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    """Settings of a test app: the default bundle, logs under ``tmp``, seeded exploration, an
    admin token, Redis timeouts generous enough for a loaded CI machine."""
    kw: dict[str, Any] = {
        "bundle_dir": DEFAULT_BUNDLE,
        "log_dir": tmp / "logs",
        "explore_seed": 1234,
        "admin_token": SecretStr(TOKEN),
        "redis_connect_timeout_ms": 1000.0,
        "redis_read_timeout_ms": 1000.0,
    }
    kw.update(overrides)
    return Settings(**kw)


def assert_refused(r, field: str, value: Any = None, status: int | None = None) -> dict:
    """``r`` is a 4xx whose error JSON names ``field`` (``field`` or an ``errors[].field``)
    and, when given, ``value`` (in that error's value or message); returns the JSON."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    if "errors" in body:
        hits = [e for e in body["errors"] if e["field"] == field]
        assert hits, f"no error names field {field!r}: {body}"
        texts = [f"{e['value']!r} {e['value']} {e['message']}" for e in hits]
    else:
        assert body.get("field") == field, body
        texts = [body["error"]]
    if value is not None:
        assert any(str(value) in t for t in texts), f"no error names value {value!r}: {body}"
    return body
