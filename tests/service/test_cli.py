"""`ranker join-logs`: the service's own logs become one impression log the validator accepts."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from contract.schema import validate_log_file
from service.app import create_app
from service.cli import main
from service.settings import Settings

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"


def test_join_logs_writes_a_valid_impression_log_with_the_feedback_joined(tmp_path, capsys):
    logs = tmp_path / "logs"
    app = create_app(Settings(bundle_dir=BUNDLE, log_dir=logs, explore_seed=0))
    with TestClient(app) as client:  # leaving the block closes the sinks: everything flushed
        items = app.state.services.serving.bundle.tables.item_ids[:20].tolist()
        r = client.post("/v1/rank", json={"user_id": 1, "candidates": items, "k": 4}).json()
        shown = [i["item_id"] for i in r["items"]]
        fb = {
            "request_id": r["request_id"],
            "session_id": r["session_id"],
            "user_id": 1,
            "arm": r["arm"],
            "events": [{"item_id": shown[1], "position": 1, "click": 1}],
        }
        assert client.post("/v1/feedback", json=fb).status_code == 200
    out = tmp_path / "joined.parquet"
    assert main(["join-logs", "--log-dir", str(logs), "--out", str(out)]) == 0
    assert "20 rows (4 impressions), valid" in capsys.readouterr().out
    assert validate_log_file(out) == 20
    t = pq.read_table(out).to_pylist()
    clicked = [row["item_id"] for row in t if row["click"] == 1]
    assert clicked == [shown[1]]
    assert [row["position"] for row in t if row["position"] >= 0] == [0, 1, 2, 3]


def test_join_logs_on_a_folder_without_logs_is_a_one_line_error(tmp_path, capsys):
    assert main(["join-logs", "--log-dir", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("ranker join-logs: error:")


@pytest.mark.parametrize("protocol", ["NoDelayH11Protocol", "NoDelayHttpToolsProtocol"])
def test_served_connections_have_nagle_off_whatever_the_worker_count(protocol: str):
    """uvicorn's multi-worker listener leaves TCP_NODELAY off (each keep-alive request then
    waits ~40 ms for a delayed ACK); the protocol `ranker serve` uses turns it on."""
    import asyncio
    import socket

    from uvicorn.config import Config
    from uvicorn.server import ServerState

    import service.cli

    if protocol == "NoDelayHttpToolsProtocol":
        pytest.importorskip("httptools", reason="httptools is not installed (serve extra)")
    cls = getattr(service.cli, protocol)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)  # proto 0, as uvicorn's
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0

    class Transport:
        def get_extra_info(self, name, default=None):
            return {"socket": conn, "peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(
                name, default
            )

        def is_closing(self):
            return False

    async def run():
        cfg = Config(app=lambda *a: None)
        cfg.load()
        proto = cls(config=cfg, server_state=ServerState(), app_state={})
        proto.connection_made(Transport())

    asyncio.run(run())
    assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    for s in (client, conn, listener):
        s.close()


def test_http_auto_picks_httptools_when_installed_and_refuses_a_missing_one(monkeypatch):
    import importlib.util

    from service.cli import http_implementation

    real = importlib.util.find_spec

    def without_httptools(name, *a):
        return None if name == "httptools" else real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", without_httptools)
    assert http_implementation("auto") == "h11"
    with pytest.raises(ValueError, match="httptools is not installed"):
        http_implementation("httptools")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    want = "httptools" if real("httptools") is not None else "h11"
    assert http_implementation("auto") == want and http_implementation("h11") == "h11"
