"""The default experiment follows a reload; a bug is a counted 500, never a hang."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from service.app import create_app
from tests.service.app_support import (
    AUTH,
    DEFAULT_BUNDLE,
    TestClient,
    make_settings,
    write_experiment,
)


def _bundle_without_wide_deep(tmp: Path) -> Path:
    out = tmp / "no-wd"
    shutil.copytree(DEFAULT_BUNDLE, out)
    m = json.loads((out / "manifest.json").read_text())
    for g in m["models"].pop("wide_deep_weighted")["graphs"].values():
        (out / g["file"]).unlink()
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def test_a_reload_re_derives_the_default_split_for_the_new_bundle(tmp_path):
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        before = {a["name"] for a in client.get("/v1/models").json()["arms"]}
        assert "wide_deep_weighted" in before
        new = str(_bundle_without_wide_deep(tmp_path))
        r = client.post("/admin/reload", json={"bundle_dir": new}, headers=AUTH)
        assert r.status_code == 200, r.text
        arms = {a["name"]: a["weight"] for a in client.get("/v1/models").json()["arms"]}
        assert set(arms) == {"drl_student", "drl_teacher", "mmrf_watchtime"}
        assert abs(arms["drl_student"] - 0.8 / 1.0) < 1e-12


def test_a_reload_keeps_an_explicit_experiment_and_refuses_a_bundle_without_its_arms(tmp_path):
    write_experiment(tmp_path / "exp.json")
    app = create_app(make_settings(tmp_path, experiment_file=tmp_path / "exp.json"))
    with TestClient(app) as client:
        new = str(_bundle_without_wide_deep(tmp_path))
        r = client.post("/admin/reload", json={"bundle_dir": new}, headers=AUTH)
        assert r.status_code == 409
        assert "wide_deep_weighted" in r.json()["error"]


def test_an_unexpected_failure_is_a_counted_500_with_the_error_body(tmp_path):
    app = create_app(make_settings(tmp_path))
    with TestClient(app, raise_server_exceptions=False) as client:
        svc = app.state.services

        async def broken(key):
            raise RuntimeError("store bug")

        svc.store.lookup = broken
        items = svc.serving.bundle.tables.item_ids[:10].tolist()
        r = client.post("/v1/rank", json={"user_id": 1, "candidates": items})
        assert r.status_code == 500
        assert r.json() == {"error": "internal error", "field": "server"}
        metrics = client.get("/metrics").text
        assert 'ranker_errors_total{reason="internal"} 1.0' in metrics
