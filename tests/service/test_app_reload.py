"""Admin reload through HTTP: a bundle swapped in while rank requests run loses none of them;
a tampered bundle is refused (409 naming the file) and the serving one keeps serving."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from tests.service.app_support import ARMS, AUTH, DEFAULT_BUNDLE, TS, assert_refused, make_settings


def copy_bundle(dest: Path, version: str | None = None) -> Path:
    """A copy of the default bundle; ``version`` renames it (manifest.json is not hashed), so a
    response tells which of the two served it."""
    shutil.copytree(DEFAULT_BUNDLE, dest)
    if version is not None:
        manifest = json.loads((dest / "manifest.json").read_text())
        manifest["bundle_version"] = version
        (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dest


@pytest.mark.asyncio
async def test_reload_under_concurrent_requests_loses_none(tmp_path: Path) -> None:
    new_dir = copy_bundle(tmp_path / "bundle-new", version="default-reloaded")
    bad_dir = copy_bundle(tmp_path / "bundle-tampered")
    weights = bad_dir / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))

    app = create_app(make_settings(tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            old = (await client.get("/v1/models")).json()
            cands = app.state.services.serving.bundle.tables.item_ids[::50][:80].tolist()

            async def rank(user: int, session: int | None = None) -> dict:
                body = {"user_id": user, "candidates": cands, "k": 10,
                        "context": {"timestamp_ms": TS}}  # fmt: skip
                if session is not None:
                    body["session_id"] = session
                r = await client.post("/v1/rank", json=body)
                assert r.status_code == 200, r.text
                return r.json()

            session = (await rank(5))["session_id"]
            reload = asyncio.create_task(client.post(
                "/admin/reload", json={"bundle_dir": str(new_dir)}, headers=AUTH))  # fmt: skip
            during: list[dict] = []
            while not reload.done():  # waves of 8 concurrent requests while the reload runs
                during += await asyncio.gather(*(rank(u) for u in range(100, 108)))
            after = await asyncio.gather(*(rank(u) for u in range(200, 216)))
            done = await reload
            assert done.status_code == 200, done.text
            one_worker = {"expected": 1, "applied": 1, "refused": {}}
            assert done.json() == {"status": "reloaded", "from": old["bundle_version"],
                                   "bundle_version": "default-reloaded", "generation": 0,
                                   "workers": one_worker}  # fmt: skip
            assert len(during) >= 8
            assert {r["bundle_version"] for r in during} <= {old["bundle_version"],
                                                             "default-reloaded"}  # fmt: skip
            assert {r["bundle_version"] for r in after} == {"default-reloaded"}
            models = (await client.get("/v1/models")).json()
            assert models["bundle_dir"] == str(new_dir)
            assert models["bundle_version"] == "default-reloaded"
            # The dashboards' model-version-per-arm series follow the swap.
            info = [ln for ln in (await client.get("/metrics")).text.splitlines()
                    if ln.startswith("ranker_model_info{")]  # fmt: skip
            now = {ln for ln in info if 'bundle_version="default-reloaded"' in ln}
            assert len(now) == len(ARMS) and all(ln.endswith(" 1.0") for ln in now)
            before = [ln for ln in info if f'bundle_version="{old["bundle_version"]}"' in ln]
            assert len(before) == len(ARMS) and all(ln.endswith(" 0.0") for ln in before)
            # Same state schema: the session's cached state survives the swap.
            assert models["state_schema_version"] == old["state_schema_version"]
            assert (await rank(5, session))["state"] == "warm"

            # A tampered bundle is refused, naming the file; the current one keeps serving.
            r = await client.post("/admin/reload", json={"bundle_dir": str(bad_dir)},
                                  headers=AUTH)  # fmt: skip
            body = assert_refused(r, "bundle_dir", str(weights), 409)
            assert "sha256" in body["error"] and "default-reloaded" in body["error"]
            still = await asyncio.gather(*(rank(u) for u in range(300, 308)))
            assert {r["bundle_version"] for r in still} == {"default-reloaded"}
            models = (await client.get("/v1/models")).json()
            assert (models["bundle_dir"], models["bundle_version"]) == (
                str(new_dir), "default-reloaded")  # fmt: skip
            assert (await client.get("/readyz")).status_code == 200
