"""The serving path needs no torch, no training code and no pandas: in a fresh interpreter where
importing any of them fails, the app builds on the default bundle and ranks, and `ranker
serve` parses its flags and checks its bundle."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.service.app_support import DEFAULT_BUNDLE, ROOT

BLOCKED = ("torch", "training", "pandas")

SCRIPT = r"""
import contextlib, importlib.abc, io, json, sys, warnings

BLOCKED = set(json.loads(sys.argv[1]))
attempts = []

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"{name} is blocked on the serving path", name=name)
        return None

sys.meta_path.insert(0, Block())

from service.app import create_app
from service.settings import Settings
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

bundle_dir, log_dir = sys.argv[2], sys.argv[3]
app = create_app(Settings(bundle_dir=bundle_dir, log_dir=log_dir, explore_seed=0))
with TestClient(app) as client:
    ids = app.state.services.serving.bundle.tables.item_ids[:50].tolist()
    r = client.post("/v1/rank", json={"user_id": 1, "candidates": ids, "k": 5})
    rank = {"status": r.status_code, "items": len(r.json().get("items", []))}

import ranker_cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        ranker_cli.main(["serve", "--help"])
        help_exit = None
    except SystemExit as e:
        help_exit = e.code
err = io.StringIO()
with contextlib.redirect_stderr(err):
    no_bundle = ranker_cli.main(["serve", "--bundle", log_dir])

print(json.dumps({
    "rank": rank, "help_exit": help_exit, "help": out.getvalue(),
    "no_bundle": no_bundle, "no_bundle_err": err.getvalue(), "attempts": attempts,
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
}))
"""


def test_app_and_serve_cli_run_with_torch_training_and_pandas_blocked(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(BLOCKED), str(DEFAULT_BUNDLE), str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rank"] == {"status": 200, "items": 5}
    assert out["loaded"] == []
    # Nothing on the serving path even tried torch or training (a library probing pandas as
    # an optional extra would be fine, and is listed here if one does).
    assert not [m for m in out["attempts"] if m.split(".")[0] in ("torch", "training")], out
    assert out["help_exit"] == 0 and "--bundle" in out["help"] and "--redis-url" in out["help"]
    assert out["no_bundle"] == 2 and "not a bundle folder" in out["no_bundle_err"]


TRAINING_WITHOUT_EXTRA = r"""
import contextlib, importlib.abc, io, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "tqdm", "matplotlib", "pandas"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
import ranker_cli
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = ranker_cli.main(["simulate", "--preset", "tiny", "--out", sys.argv[1]])
print(json.dumps({"code": code, "err": err.getvalue()}))
"""


def test_a_training_command_without_the_train_extra_says_which_extra(tmp_path) -> None:
    """An install of the serve extra alone: `ranker simulate` names the train extra and
    exits 2 instead of a traceback from deep inside training."""
    proc = subprocess.run(
        [sys.executable, "-c", TRAINING_WITHOUT_EXTRA, str(tmp_path / "world")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["code"] == 2 and "needs the train extra" in out["err"], out
    assert not (tmp_path / "world").exists()
