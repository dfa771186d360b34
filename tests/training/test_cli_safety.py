"""The CLI never destroys work: committed results, existing run folders, bad values (issue 13)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN = ["--no-progress", "--threads", "1", "--set", "n_explore=20", "--set", "batch_size=32",
              "--set", "max_instances=64", "--set", "d_r=8", "--set", "gru_hidden=16",
              "--set", "mlp=16,8,8", "--set", "sessions_per_chunk=32"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


# ---- committed results are written only when asked by name ----


def test_drl_report_without_out_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the old default (results/drl-tiny) was relative to the cwd
    with pytest.raises(SystemExit) as e:
        main(["drl-report", "--preset", "tiny", "--seeds", "0", "--only", "cost"])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_drl_cost_benchmark_writes_only_when_asked(tmp_path):
    committed = ROOT / "results" / "drl_cost.json"
    before = committed.read_bytes()
    cmd = [sys.executable, "benchmarks/drl_cost.py", "--requests", "2", "--candidates", "20"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert committed.read_bytes() == before
    out = tmp_path / "cost.json"
    out.write_text("{}")
    res = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 2 and "--overwrite" in res.stderr and out.read_text() == "{}"


def test_an_existing_report_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("committed")
    for cmd in ("drl-report", "report"):
        assert main([cmd, "--preset", "tiny", "--seeds", "0", "--out", str(out)]) == 2
        assert "--resume" in capsys.readouterr().err
    assert _digest(out) == {"report.md": hashlib.sha256(b"committed").hexdigest()}


@pytest.mark.parametrize("only", ["cost", "online"])  # the groups that only read runs
def test_a_report_stage_whose_runs_are_missing_fails_and_leaves_nothing(tmp_path, capsys, only):
    # --only asks for a stage that reads runs that do not exist: exit 2, no (partial) folder
    out = tmp_path / "report"
    args = ["drl-report", "--preset", "tiny", "--seeds", "0", "--only", only, "--out", str(out)]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not finished" in err and only in err
    assert not out.exists()


@pytest.mark.parametrize("cmd", ["report", "drl-report"])
def test_a_report_that_fails_before_any_work_leaves_no_folder(tmp_path, capsys, cmd):
    # the failure comes after the run folders' bookkeeping is written (a dataset folder of
    # another world under --datasets): that alone is not work to resume, so nothing is left
    bad = tmp_path / "datasets" / "sim-tiny-s0"
    bad.mkdir(parents=True)
    (bad / "dataset.json").write_text("{}")
    out = tmp_path / "report"
    args = [cmd, "--preset", "tiny", "--seeds", "0", "--out", str(out), "--datasets",
            str(tmp_path / "datasets"), "--no-progress"]  # fmt: skip
    assert main(args + (["--only", "drl"] if cmd == "drl-report" else [])) == 2
    assert "another world" in capsys.readouterr().err and not out.exists()


# ---- default-bundle writes under --out and the folders it is given ----


def test_default_bundle_writes_nothing_outside_its_out(tmp_path, monkeypatch):
    from training.bundles import DefaultBundleConfig
    from training.cli import default_bundle

    monkeypatch.chdir(tmp_path)  # the old defaults data/default, runs/default-bundle: cwd-relative
    tiny = DefaultBundleConfig(
        world_preset="tiny", wd_train_impressions=2000, wd_valid_impressions=500,
        drl_overrides=(("n_explore", 20), ("max_instances", 64), ("batch_size", 32), ("d_r", 8),
                       ("gru_hidden", 16), ("mlp", (16, 8, 8)), ("sessions_per_chunk", 32)),
        mmrf_overrides=(("max_instances", 64), ("batch_size", 32), ("d_r", 4), ("gru_hidden", 8),
                        ("agent_dim", 8), ("heads", 2), ("action_dim", 4), ("actor_hidden", (8,)),
                        ("critic_mlp", (8,)), ("model_hidden", (8,)), ("sessions_per_chunk", 32)),
    )  # fmt: skip
    m = default_bundle("bundle", cfg=tiny, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    assert set(m["models"]) == {"drl_student", "drl_teacher", "wide_deep_weighted",
                                "mmrf_watchtime"}  # fmt: skip


def test_default_bundle_refuses_an_existing_out_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert main(["default-bundle", "--out", "models"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["models"]
    assert not any((tmp_path / "models").iterdir())


# ---- drl-train run folders ----


def test_drl_train_refuses_an_existing_run_and_resume_keeps_a_finished_one(tiny_data, tmp_path,
                                                                           capsys):  # fmt: skip
    ds, _, _ = tiny_data
    out = tmp_path / "run"
    args = ["drl-train", "--data", str(ds.root), "--out", str(out), *TINY_TRAIN]
    assert main(args) == 0
    first = _digest(out)
    assert json.loads((out / "train.json").read_text())["instances"] >= 64
    assert main(args) == 2  # run twice into the same --out: refused, not overwritten
    assert "--resume" in capsys.readouterr().err
    assert _digest(out) == first
    assert main([*args, "--resume"]) == 0  # finished: reported, nothing rewritten
    assert "finished run" in capsys.readouterr().out
    assert _digest(out) == first
    other = [*args[:-2], "--set", "max_instances=96", "--resume"]
    assert main(other) == 2
    err = capsys.readouterr().err  # names what differs (the trial had to guess)
    assert "another config (max_instances: 64 -> 96, sessions_per_chunk: 32 -> " in err


@pytest.mark.parametrize(
    "value", ["n_explore=-1", "discount=week", "compression=0", "batch_size=0", "gamma=2",
              "use_kl=perhaps", "reward=clicks"],
)  # fmt: skip
def test_bad_drl_values_are_one_line_errors_before_any_work(tiny_data, tmp_path, capsys, value):
    ds, _, _ = tiny_data
    out = tmp_path / "run"
    assert main(["drl-train", "--data", str(ds.root), "--out", str(out), "--set", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and value.split("=")[0] in err and "Traceback" not in err
    assert not out.exists()


def test_device_without_cuda_is_refused_before_any_work(tiny_data, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    ds, _, _ = tiny_data
    out = tmp_path / "run"
    assert main(["drl-train", "--data", str(ds.root), "--out", str(out), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and not out.exists()


def test_a_failed_command_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["drl-train", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert not out.exists()


# ---- world overrides: the same --set on every command that builds a world ----


def test_drl_report_takes_world_overrides(capsys, tmp_path):
    from training.drl.report.plan import report_preset, world_config

    cfg = report_preset("tiny").with_world({"n_users": "200"})
    assert world_config(cfg, 0, "base").n_users == 200
    assert world_config(cfg, 0, "long_term_off").n_users == 200
    out = tmp_path / "o"
    assert main(["drl-report", "--preset", "tiny", "--out", str(out), "--set", "n_users=-5"]) == 2
    assert "n_users" in capsys.readouterr().err and not out.exists()


def test_a_failed_sanity_check_exits_non_zero(monkeypatch, tmp_path, capsys):
    import training.drl.report as rep
    from training.harness.claims import SanityError, check

    def fake(*a, **k):
        raise SanityError([check("control", "negative control", False, "+3%")], "out/report.md")

    monkeypatch.setattr(rep, "run_drl_report", fake)
    assert main(["drl-report", "--out", str(tmp_path / "o")]) == 1
    assert "control" in capsys.readouterr().err


def test_a_torchrun_peer_rank_refuses_an_existing_run_too(tiny_data, tmp_path, monkeypatch):
    ds, _, _ = tiny_data
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.json").write_text("{}")
    monkeypatch.setenv("RANK", "1")
    assert main(["drl-train", "--data", str(ds.root), "--out", str(out), *TINY_TRAIN]) == 2
    assert (out / "train.json").read_text() == "{}"


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_an_interrupted_run_says_so_in_one_line_and_leaves_no_empty_folder(
    tiny_data, tmp_path, capsys, monkeypatch, how
):
    """A fresh-clone trial: SIGTERM before the first checkpoint left an empty run folder, and
    Ctrl-C printed a KeyboardInterrupt traceback."""
    import signal

    import training.drl.train as drl_train

    ds, _, _ = tiny_data
    out = tmp_path / "run"

    def interrupted_run(data, folder, cfg, **kw):
        assert folder.is_dir()  # the command made the folder; nothing finished in it yet
        if how == "sigterm":
            signal.raise_signal(signal.SIGTERM)
            raise AssertionError("SIGTERM did not interrupt the command")
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(drl_train, "run", interrupted_run)
    assert main(["drl-train", "--data", str(ds.root), "--out", str(out), *TINY_TRAIN]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "ranker drl-train: interrupted (finished checkpoints are kept: --resume continues a run)"
    ]
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the command's only
