"""The service serving MMRF's WatchTime actor (bundle model kind ``actor``) as the
``mmrf_watchtime`` arm of its default experiment, and the default split's weights."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np

from runtime.lists import Exploration, SessionState, build_lists
from service.app import DEFAULT_SPLIT, create_app, default_experiment
from tests.service.app_support import ROOT, TS, TestClient, make_settings
from tests.service.test_serving_without_torch import BLOCKED, SCRIPT


def _split(models: list[str]) -> dict[str, tuple[float, float, int]]:
    exp = default_experiment(SimpleNamespace(models=dict.fromkeys(models)))  # type: ignore[arg-type]
    return {a.name: (round(a.weight, 6), a.exploration_rate, a.exploration_top_k)
            for a in exp.arms}  # fmt: skip


def test_default_split_adds_mmrf_watchtime_without_changing_bundles_that_lack_it():
    assert ("mmrf_watchtime", 0.1, 0.0, 1) in DEFAULT_SPLIT
    old = ["drl_student", "drl_teacher", "wide_deep_weighted"]
    assert _split(old) == {"drl_student": (0.8, 0.05, 3), "drl_teacher": (0.1, 0.0, 1),
                           "wide_deep_weighted": (0.1, 0.0, 1)}  # fmt: skip
    both = _split([*old, "mmrf_watchtime"])
    assert both["mmrf_watchtime"] == (round(0.1 / 1.1, 6), 0.0, 1)
    assert both["drl_student"] == (round(0.8 / 1.1, 6), 0.05, 3)
    assert _split(["mmrf_watchtime", "q"]) == {"mmrf_watchtime": (1.0, 0.0, 1)}


def test_the_actor_arm_serves_lists_equal_to_the_builder_across_a_session(mmrf_bundle, tmp_path):
    """Two requests of one session through HTTP: the arm is ``mmrf_watchtime`` (the only
    arm of the default split this bundle has), the second request is warm, and both lists,
    their scores and the stored state equal the list builder run directly on the actor."""
    path = mmrf_bundle[0]
    app = create_app(make_settings(tmp_path, bundle_dir=path))
    with TestClient(app) as client:
        models = client.get("/v1/models").json()
        assert [(a["name"], a["weight"]) for a in models["arms"]] == [("mmrf_watchtime", 1.0)]
        bundle = app.state.services.serving.bundle
        model = bundle.model("mmrf_watchtime")
        assert models["models"]["mmrf_watchtime"]["kind"] == "actor"
        cands = bundle.tables.item_ids[::7][:30].tolist()
        uid, sid = int(bundle.tables.user_ids[3]), 4242
        direct = SessionState.new(model, bundle.spec.recent_window)
        for i, ts in enumerate((TS, TS + 60_000)):
            r = client.post("/v1/rank", json={
                "user_id": uid, "session_id": sid, "candidates": cands, "k": 6,
                "context": {"timestamp_ms": ts},
            })  # fmt: skip
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["arm"] == "mmrf_watchtime"
            assert body["model_version"] == model.spec.model_version
            assert body["state"] == ("cold", "warm")[i]
            want = build_lists(bundle, model, [direct], np.array([uid]), np.array([ts]),
                               np.array(cands)[None], 6, Exploration(0.0, 1))  # fmt: skip
            assert [x["item_id"] for x in body["items"]] == want.item_ids[0].tolist()
            np.testing.assert_allclose([x["score"] for x in body["items"]], want.scores[0],
                                       rtol=1e-6)  # fmt: skip
            assert all(x["propensity"] == 1.0 and not x["explored"] for x in body["items"])
            direct = want.states[0]
        assert direct.mask.all()  # 12 placed items fill the actor's window of 3


def test_the_actor_bundle_serves_with_torch_and_training_blocked(mmrf_bundle, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(BLOCKED), str(mmrf_bundle[0]), str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rank"] == {"status": 200, "items": 5}
    assert out["loaded"] == []
    assert not [m for m in out["attempts"] if m.split(".")[0] in ("torch", "training")], out
