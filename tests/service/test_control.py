"""Admin changes reach every worker through the control folder (service.control).

Two apps sharing a control folder stand for two uvicorn workers (each app its own serving
pair, as each worker process has); the process-level check with `ranker serve --workers 2`
is in test_app_processes.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.control import ControlFolder, ControlRecord
from tests.service.app_support import AUTH, make_settings
from tests.service.test_app_reload import copy_bundle

# --- the folder ------------------------------------------------------------------------------


def test_publish_numbers_generations_and_read_returns_the_last(tmp_path: Path) -> None:
    folder = ControlFolder(tmp_path / "control")
    assert folder.read() is None and not folder.changed()
    with folder.locked():
        first = folder.publish("/b/one", "v1", None)
    with folder.locked():
        second = folder.publish("/b/two", "v2", {"seed": "s", "arms": []})
    assert (first.generation, second.generation) == (1, 2)
    assert folder.read() == second
    assert folder.changed() and not folder.changed()  # one stat: changed once, then not


def test_acks_count_live_workers_of_the_generation_only(tmp_path: Path) -> None:
    a, b = ControlFolder(tmp_path), ControlFolder(tmp_path)
    a.acknowledge(3, "v3", None)
    b.acknowledge(3, "v2", "BundleError: tampered")
    refused = "BundleError: tampered"
    assert {(x.worker, x.error) for x in a.acks(3)} == {(a.worker, None), (b.worker, refused)}
    assert a.acks(2) == []
    # A worker process that died: its acknowledgement is not counted, and its file goes.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / "acks" / f"{dead.stdout.strip()}-deadbeef.json"
    stale.write_text(json.dumps({"generation": 3, "bundle_version": "v3", "error": None}))
    assert len(a.acks(3)) == 2 and not stale.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"generation": 1, "bundle_dir": "x", "bundle_version": "v"}', "missing key 'experiment'"),
        ('{"generation": 0, "bundle_dir": "x", "bundle_version": "v", "experiment": null}',
         "generation 0"),
        ('{"generation": true, "bundle_dir": "x", "bundle_version": "v", "experiment": null}',
         "generation True"),
        ('{"generation": 1, "bundle_dir": "x", "bundle_version": "v", "experiment": []}',
         "experiment must be"),
    ],
)  # fmt: skip
def test_a_malformed_record_is_refused_with_its_key(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ControlRecord.from_json(text, "control.json")


# --- two apps on one folder ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_admin_change_on_one_worker_is_served_by_every_worker(tmp_path: Path) -> None:
    new_dir = copy_bundle(tmp_path / "bundle-new", version="default-reloaded")
    bad_dir = copy_bundle(tmp_path / "bundle-tampered", version="default-tampered")
    weights = bad_dir / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    settings = make_settings(tmp_path, control_dir=tmp_path / "control", workers=2,
                             control_poll_s=0.02, control_timeout_s=20.0)  # fmt: skip

    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(2):
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            clients.append(await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://test")))  # fmt: skip
        a, b = clients

        # A reload answered by worker a: its answer waits until b serves the bundle too.
        r = await a.post("/admin/reload", json={"bundle_dir": str(new_dir)}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "reloaded" and r.json()["generation"] == 1
        assert r.json()["workers"] == {"expected": 2, "applied": 2, "refused": {}}
        published = ControlFolder(tmp_path / "control").read()
        assert published is not None and published.bundle_dir == str(new_dir.resolve())
        for c in clients:
            m = (await c.get("/v1/models")).json()
            assert (m["bundle_version"], m["generation"]) == ("default-reloaded", 1)

        # An experiment change answered by b reaches a; the bundle is not loaded again.
        bundle_a = a._transport.app.state.services.serving.bundle  # type: ignore[attr-defined]
        exp = {"seed": "broadcast", "arms": [{"name": "drl_teacher", "weight": 1.0}]}
        r = await b.post("/admin/experiment", json=exp, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["workers"]["applied"] == 2 and r.json()["generation"] == 2
        for c in clients:
            m = (await c.get("/v1/models")).json()
            assert m["experiment_seed"] == "broadcast" and m["generation"] == 2
            assert [arm["name"] for arm in m["arms"]] == ["drl_teacher"]
        assert a._transport.app.state.services.serving.bundle is bundle_a  # type: ignore[attr-defined]

        # A bad bundle is refused by the worker that answers: nothing is published.
        r = await b.post("/admin/reload", json={"bundle_dir": str(bad_dir)}, headers=AUTH)
        assert r.status_code == 409, r.text
        assert "weights.bin" in r.json()["error"]
        assert ControlFolder(tmp_path / "control").read().generation == 2  # type: ignore[union-attr]

        # A worker started now (uvicorn restarting a crashed one) serves the published pair.
        late = create_app(settings)
        await stack.enter_async_context(late.router.lifespan_context(late))
        svc = late.state.services
        assert (svc.serving.bundle.version, svc.serving.experiment.seed, svc.generation) == (
            "default-reloaded", "broadcast", 2)  # fmt: skip


@pytest.mark.asyncio
async def test_a_worker_that_cannot_load_the_published_bundle_says_so(tmp_path: Path) -> None:
    """A record whose folder holds another version than published (the bundle was replaced in
    place after the publish): the worker keeps serving, and its acknowledgement says why."""
    settings = make_settings(tmp_path, control_dir=tmp_path / "control", workers=1,
                             control_poll_s=0.02)  # fmt: skip
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        svc = app.state.services
        serving = svc.serving
        folder = ControlFolder(tmp_path / "control")
        with folder.locked():
            record = folder.publish(str(serving.bundle.path), "some-other-version", None)
        from service.app import _apply_record

        async with svc.reload_lock:
            await _apply_record(svc, record)
        assert svc.serving is serving and svc.generation == 1
        (ack,) = folder.acks(1)
        assert ack.worker == svc.control.worker
        assert "published some-other-version" in (ack.error or "")
