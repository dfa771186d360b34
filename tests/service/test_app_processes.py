"""Two `ranker serve` processes sharing one Redis serve a session alternately with exactly the
lists one process serves: the session state lives in Redis, not in a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import redis

from contract.schema import LOG_SCHEMA
from runtime.lists import SessionState
from service.bucketing import Experiment
from service.exposure import read_shards
from service.state_store import state_key
from tests.service.app_support import DEFAULT_BUNDLE, ROOT, TS, write_experiment
from tests.service.conftest import SHARED_REDIS_URL, free_port


class Server:
    """One `ranker serve` process on a free port, its output in a file."""

    def __init__(self, name: str, env: dict[str, str], tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"{name}.log"
        self.log_dir = Path(env["RANKER_LOG_DIR"])
        script = Path(sys.executable).with_name("ranker")
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "ranker_cli"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*cmd, "serve", "--port", str(self.port), "--bundle", str(DEFAULT_BUNDLE)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.log.name} exited {self.proc.returncode}:\n{self.tail()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def assert_clean_exit(self) -> None:
        # uvicorn re-raises the SIGTERM it handled once shut down: -15 is a clean exit too.
        assert self.proc.returncode in (0, -signal.SIGTERM), self.tail()
        assert "Application shutdown complete." in self.tail(), self.tail()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def two_servers(tmp_path: Path, unique_prefix: str) -> Iterator[tuple[Server, Server, Experiment]]:
    exp_file = tmp_path / "experiment.json"
    exp = write_experiment(exp_file)  # every arm without exploration: lists are deterministic
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RANKER_") and k != "PROMETHEUS_MULTIPROC_DIR"}  # fmt: skip
    env.update({"RANKER_REDIS_URL": SHARED_REDIS_URL, "RANKER_STATE_KEY_PREFIX": unique_prefix,
                "RANKER_EXPERIMENT_FILE": str(exp_file), "RANKER_LOG_DIR": str(tmp_path / "logs"),
                "RANKER_REDIS_READ_TIMEOUT_MS": "1000", "RANKER_REDIS_CONNECT_TIMEOUT_MS": "1000",
                "RANKER_REDIS_BREAKER_MS": "0"})  # fmt: skip
    servers = (Server("a", env, tmp_path), Server("b", env, tmp_path))
    try:
        deadline = time.monotonic() + 60
        for s in servers:
            while not s.ready():
                assert time.monotonic() < deadline, f"{s.log.name} not ready:\n{s.tail()}"
                time.sleep(0.05)  # polling a subprocess for readiness, deadline above
        yield (*servers, exp)
    finally:
        for s in servers:
            s.stop()
    for s in servers:
        s.assert_clean_exit()


@pytest.mark.slow
def test_two_processes_serve_a_session_alternately_like_one(
    two_servers: tuple[Server, Server, Experiment], shared_redis: redis.Redis, unique_prefix: str
) -> None:
    a, b, exp = two_servers
    ids = pq.read_table(DEFAULT_BUNDLE / "items.parquet", columns=["item_id"])["item_id"]
    cands = ids.to_numpy()[::90][:80].tolist()
    user = next(u for u in range(10_000) if exp.assign(u).arm == "drl_student")  # stateful

    def run(session: int, servers: list[Server]) -> list[dict]:
        out = []
        for i, s in enumerate(servers):
            body = {"user_id": user, "session_id": session, "candidates": cands, "k": 8,
                    "context": {"timestamp_ms": TS + i * 30_000}}  # fmt: skip
            r = httpx.post(f"{s.url}/v1/rank", json=body, timeout=10.0)
            assert r.status_code == 200, r.text
            out.append(r.json())
        return out

    alternating = run(1_000_001, [a, b, a, b])
    single = run(1_000_002, [a, a, a, a])
    assert [r["state"] for r in alternating] == ["cold", "warm", "warm", "warm"]
    assert [r["state"] for r in single] == ["cold", "warm", "warm", "warm"]
    assert {r["arm"] for r in alternating + single} == {"drl_student"}
    lists = [[i["item_id"] for i in r["items"]] for r in alternating]
    assert lists == [[i["item_id"] for i in r["items"]] for r in single]
    for x, y in zip(alternating, single, strict=True):
        assert [i["score"] for i in x["items"]] == pytest.approx([i["score"] for i in y["items"]],
                                                                 rel=1e-6)  # fmt: skip
    assert len({tuple(x) for x in lists}) > 1, "the session state never changed the list"

    # Both sessions' states are in the shared Redis, four requests deep.
    arm, models = alternating[0]["arm"], httpx.get(f"{a.url}/v1/models").json()
    for session in (1_000_001, 1_000_002):
        key = unique_prefix + state_key(models["state_schema_version"], arm, session)
        state = SessionState.from_bytes(shared_redis.get(key))
        assert (state.request_index, state.depth) == (4, 32)

    # A clean shutdown writes every exposure: 8 requests of 80 candidates, from both processes.
    for s in (a, b):
        s.stop()
        s.assert_clean_exit()
    shards = sorted((a.log_dir / "exposures").glob("part-*.parquet"))
    assert {int(p.name.split("-")[2]) for p in shards} == {a.proc.pid, b.proc.pid}
    log = read_shards(a.log_dir / "exposures", LOG_SCHEMA)
    assert log.num_rows == 8 * len(cands)
    served = {r["request_id"] for r in alternating + single}
    assert set(log.column("request_id").to_pylist()) == served


@pytest.mark.slow
def test_a_reload_reaches_every_worker_of_ranker_serve(tmp_path: Path) -> None:
    """`ranker serve --workers 2`: the reload's answer counts both workers, and fresh
    connections (spread over the workers by the kernel) all get the new bundle."""
    from tests.service.test_app_reload import copy_bundle

    new_dir = copy_bundle(tmp_path / "bundle-new", version="default-reloaded")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RANKER_") and k != "PROMETHEUS_MULTIPROC_DIR"}  # fmt: skip
    env.update({"RANKER_WORKERS": "2", "RANKER_ADMIN_TOKEN": "t0ken",
                "RANKER_LOG_DIR": str(tmp_path / "logs")})  # fmt: skip
    server = Server("workers", env, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not server.ready():
            assert time.monotonic() < deadline, f"not ready:\n{server.tail()}"
            time.sleep(0.05)  # polling a subprocess for readiness, deadline above
        r = httpx.post(f"{server.url}/admin/reload", json={"bundle_dir": str(new_dir)},
                       headers={"authorization": "Bearer t0ken"}, timeout=60.0)  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["workers"] == {"expected": 2, "applied": 2, "refused": {}}, r.text
        seen = set()
        for _ in range(30):
            with httpx.Client(timeout=10.0) as fresh:  # a new connection each time
                m = fresh.get(f"{server.url}/v1/models").json()
            seen.add((m["bundle_version"], m["generation"]))
        assert seen == {("default-reloaded", 1)}
    finally:
        server.stop()
    server.assert_clean_exit()
