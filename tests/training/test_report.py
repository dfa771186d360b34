"""Tests for the baselines report: the tiny pipeline end to end, resuming, NCIS of the logging
policy on its own logs, the MMRF weights, slate probabilities and the shortlist policy."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from contract.features import DEFAULT_SPEC
from training.baselines.pointwise import seeded_build_model
from training.cli import main
from training.data.features import SideTables, build_requests
from training.data.pipeline import Dataset
from training.eval.baselines_run import (
    ALL_MODELS,
    EvalConfig,
    check_run_dir,
    eval_preset,
    world_config,
)
from training.eval.policies import PointwisePolicy, slate_log_prob_pointwise
from training.eval.report import run_report
from training.eval.samples import bc_rows, logged_slates, mmrf_weights
from training.eval.slates import (
    ShortlistPolicy,
    logged_slot_scores,
    ncis_estimate,
    slate_log_prob_from_scores,
)
from training.sim.config import ConfigError
from training.sim.env import Env
from training.sim.world import build_world

MODELS = "fm,deepfm,deepfm_weighted,bc"
BUDGET = {
    "models": MODELS,
    "max_epochs": "1",
    "online_users": "40",
    "ncis_requests": "150",
    "n_boot": "30",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    paths = {"out": root / "out", "runs": root / "runs", "data": root / "data"}
    t0 = time.perf_counter()
    report = run_report(
        "tiny",
        [0],
        paths["out"],
        runs_dir=paths["runs"],
        data_root=paths["data"],
        budget_overrides=BUDGET,
        log=None,
    )
    paths["first_seconds"] = time.perf_counter() - t0
    paths["report"] = report
    return paths


def _summary(paths) -> dict:
    return json.loads((paths["runs"] / "seed0" / "seed_summary.json").read_text())


# ---- end to end ----


def test_files_and_tables(tiny_run):
    out = tiny_run["out"]
    assert tiny_run["report"] == out / "report.md"
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "summary.json", "online_acn.png", "offline_auc.png"} <= names
    assert {"online_relative.png", "ncis_vs_online.png"} <= names
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "Code version: `" in md and "seeds 0" in md
    assert "| model | AUC | RelaImpr | GAUC |" in md
    assert "± 0.0000" not in md and "± n/a" not in md  # one seed: no spread shown
    assert md.index("## Summary of findings") < md.index("## Sanity checks")
    for m in MODELS.split(","):
        assert f"\n| {m} | " in md
    assert "| arm | ACN (clicks/user) |" in md
    for arm in ("random", "logging", "oracle", "oracle_lt", "fm@T", "deepfm@T"):
        assert f"\n| {arm} | " in md
    assert "## Sanity checks" in md and "## Timing" in md
    # every check row carries a verdict
    checks = md.split("## Sanity checks")[1].split("Verdicts:")[0]
    rows = [r for r in checks.splitlines() if r.startswith("| ") and "verdict" not in r]
    assert len(rows) == 5
    assert all(("**PASS**" in r) != ("**FAIL**" in r) for r in rows)
    # only small files in the report folder
    assert all(p.stat().st_size < 2_000_000 for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0]
    assert summary["offline"]["fm"]["relaimpr"][0] == pytest.approx(0.0)
    assert set(summary["arms"]) >= {"random", "logging", "oracle", "fm", "bc"}


def test_results_carry_config_seed_and_code_version(tiny_run):
    s = _summary(tiny_run)
    assert s["seed"] == 0 and s["world"]["seed"] == 0
    assert s["config"]["models"] == MODELS.split(",")
    assert s["code_version"]
    info = json.loads((tiny_run["runs"] / "seed0" / "models" / "fm.json").read_text())
    assert info["seed"] == 0 and info["code_version"] and info["config"]["world_preset"] == "tiny"
    assert 0.5 < info["offline"]["auc"] <= 1.0


def test_resume_skips_finished_models(tiny_run):
    run = tiny_run["runs"] / "seed0"
    stamps = {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.suffix in (".pt", ".json")}
    assert not _summary(tiny_run)["resumed_models"]
    t0 = time.perf_counter()
    argv = ["report", "--preset", "tiny", "--seeds", "0", "--out", str(tiny_run["out"]),
            "--runs", str(tiny_run["runs"]), "--datasets", str(tiny_run["data"]),
            "--resume", "--no-progress"]  # fmt: skip
    for k, v in BUDGET.items():
        argv += ["--budget", f"{k}={v}"]
    assert main(argv) == 0
    second = time.perf_counter() - t0
    s = _summary(tiny_run)
    assert s["resumed_models"] == MODELS.split(",")
    for name in ("fm.pt", "bc.pt", "online.json", "ncis.json", "ncis_temperature.json"):
        assert stamps[name] == next(run.rglob(name)).stat().st_mtime_ns, name
    assert second < 0.5 * tiny_run["first_seconds"]


def test_run_dir_of_another_config_is_refused(tiny_run):
    cfg = eval_preset("tiny").with_overrides({**BUDGET, "lr": "0.01"})
    with pytest.raises(ConfigError, match="another configuration"):
        check_run_dir(tiny_run["runs"] / "seed0", cfg, world_config(cfg, 0))


# ---- NCIS ----


def test_ncis_of_logging_on_its_own_logs_is_the_mean_logged_reward(tiny_run):
    ds = Dataset.open(next(tiny_run["data"].iterdir()))
    logs = logged_slates(ds, "test")
    lp = logs["log_prob"]
    est = ncis_estimate(lp - lp, logs["reward"], logs["user"], 0.0, 20, np.random.default_rng(0))
    assert est["value"] == logs["reward"].sum() / logs["reward"].size
    assert est["ess"] == pytest.approx(logs["reward"].size)
    assert est["clipped_fraction"] == 0.0
    saved = _summary(tiny_run)["ncis"]["policies"]["logging"]["ncis"]
    assert saved["value"] == est["value"] == saved["mean_logged_reward"]
    # the per-request rewards are the logged clicks of whole slates
    table = ds.read("test", columns=["position", "click"])
    shown = table.column("position").to_numpy() >= 0
    clicks = table.column("click").to_numpy(zero_copy_only=False)[shown].sum()
    assert logs["reward"].sum() == clicks


def test_ncis_estimate_caps_in_log_space():
    lr = np.array([0.0, np.log(4.0), -1000.0, 800.0])
    r = np.array([1.0, 2.0, 3.0, 4.0])
    est = ncis_estimate(lr, r, np.arange(4), np.log(2.0), 10, np.random.default_rng(0))
    w = np.array([1.0, 2.0, 0.0, 2.0])  # min(2, ratio); exp(-1000) underflows to 0
    assert est["value"] == pytest.approx(np.dot(w, r) / w.sum())
    assert est["clipped_fraction"] == 0.5


# ---- labels and rows ----


def test_mmrf_weights_by_hand():
    fb = {
        "like": np.array([0, 1, 0, 0, 1]),
        "follow": np.array([0, 0, 1, 0, 0]),
        "comment": np.array([0, 0, 1, 0, 0]),
        "long_view": np.array([0, 0, 1, 0, 1]),
        "hate": np.array([0, 0, 0, 1, 1]),
        "watch_time": np.array([0.0, 30.0, 120.0, 3.0, 60.0]),
    }
    want = [
        1.0,  # nothing
        1.0 + 1.0 + 0.5 * 0.5,  # like, half a minute
        1.0 + 2.0 + 1.5 + 0.5 + 0.5 * 1.0,  # follow, comment, long view, watch capped at 1
        1.0 - 0.5 + 0.5 * 0.05,  # hate, 3 s
        1.0 + 1.0 + 0.5 - 0.5 + 0.5,  # like, long view, hate, a minute
    ]
    np.testing.assert_allclose(mmrf_weights(fb), want)
    with pytest.raises(ValueError, match="lacks"):
        mmrf_weights({"like": np.zeros(2)})


@pytest.fixture(scope="module")
def tiny_req(tiny_run):
    ds = Dataset.open(next(tiny_run["data"].iterdir()))
    side = SideTables.from_tables(ds.users(), ds.items())
    table = ds.read("test")
    sid = table.column("session_id").to_numpy()
    keep = np.isin(sid, np.unique(sid)[:12])
    import pyarrow as pa

    return build_requests(table.filter(pa.array(keep)), side), side, ds


def test_bc_rows(tiny_req):
    req, _, _ = tiny_req
    x, y, w = bc_rows(req, 3, np.random.default_rng(0))
    g = req.n_impressions
    n_neg = 3 * int(((req.n_cand > req.n_shown) & (req.n_shown > 0)).sum())
    assert x.shape == (g + n_neg, 22) and y.shape == w.shape == (g + n_neg,)
    np.testing.assert_array_equal(x[:g], req.imp_ids)
    assert y[:g].all() and not y[g:].any()
    np.testing.assert_allclose(w[g:], np.repeat((req.n_cand - req.n_shown) / 3, 3))
    DEFAULT_SPEC.check_ids(x)


def test_slate_log_prob_from_scores_matches_policies(tiny_req):
    req, side, _ = tiny_req
    model = seeded_build_model("fm", DEFAULT_SPEC.sizes(), seed=0, embed_dim=4)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    pol = PointwisePolicy(model, side, temperature=1.0)
    scores = logged_slot_scores(pol, req, batch=7)
    for temp in (0.5, 2.0):
        want = slate_log_prob_pointwise(pol, req, temp)
        np.testing.assert_allclose(slate_log_prob_from_scores(scores, req, temp), want, atol=1e-6)


def test_shortlist_policy(tiny_req):
    _, side, ds = tiny_req
    world = build_world(world_config(eval_preset("tiny"), 0))
    model = seeded_build_model("deepfm", DEFAULT_SPEC.sizes(), seed=1, embed_dim=4)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    env = Env(world)
    obs = env.begin_day(3)
    k = world.cfg.list_size
    full = PointwisePolicy(model, side).rank(obs, k)
    np.testing.assert_array_equal(ShortlistPolicy(model, side, 0).rank(obs, k), full)
    short = ShortlistPolicy(model, side, 15).rank(obs, k)
    assert short.shape == full.shape
    assert all(len(set(row)) == k for row in short)
    np.testing.assert_array_equal(short[:, 0], full[:, 0])  # slot 0's argmax is shortlisted
    with pytest.raises(ValueError, match="shorter"):
        ShortlistPolicy(model, side, 5).rank(obs, k)


# ---- config ----


def test_eval_config_overrides():
    cfg = eval_preset("default").with_overrides(
        {"models": "fm,bc", "ncis_models": "fm", "lr": "0.01"}
    )
    assert cfg.models == ("fm", "bc") and cfg.lr == 0.01
    assert set(ALL_MODELS) >= set(EvalConfig().models)
    with pytest.raises(ConfigError, match="unknown key"):
        cfg.with_overrides({"nope": "1"})
    with pytest.raises(ConfigError, match="fm"):
        cfg.with_overrides({"models": "deepfm", "ncis_models": "deepfm"})
    with pytest.raises(ConfigError, match="unknown"):
        cfg.with_overrides({"models": "fm,xgboost"})
    with pytest.raises(ConfigError, match="preset"):
        eval_preset("huge")


@pytest.mark.parametrize(
    "key,value",
    [("train_impressions", "-1"), ("batch_size", "0"), ("cap_min_ess_share", "0"),
     ("cap_min_ess_share", "1.5"), ("temperatures", "0.5,-1"), ("lr", "0"), ("n_boot", "0")],
)  # fmt: skip
def test_eval_config_refuses_out_of_range_values(key, value):
    with pytest.raises(ConfigError, match=f"eval config {key}="):
        eval_preset("tiny").with_overrides({key: value})


def test_sanity_checks_fail_the_command_unless_expected():
    from training.eval.baselines_claims import sanity_checks
    from training.harness.claims import failed_checks

    order = {"oracle_arm": "oracle_lt", "metric": "clicks_per_user", "best_baseline": "fm"}
    agg = {
        "ordering": {"acn": {**order, "pass": False}, "cpr": {**order, "pass": True}},
        "ncis": {"logging": {"agrees": True, "bias": {"mean": 0.001}},
                 "fm@T": {"agrees": False, "bias": {"mean": 0.5}}},
    }  # fmt: skip
    checks = sanity_checks(agg)
    assert [c["id"] for c in checks] == ["ordering:acn", "ordering:cpr", "ncis:logging",
                                         "ncis:fm@T"]  # fmt: skip
    failed = failed_checks(checks, EvalConfig().expected_findings)
    assert [c["id"] for c in failed] == ["ordering:acn"]  # the NCIS bias is an expected finding


def test_a_failed_check_in_the_summary_says_what_was_expected_and_what_was_measured():
    """The summary printed a failed NCIS check as "NCIS(fm@T) equals the online value within
    its interval (bias 0.7359)": the statement of the check read as its result."""
    from training.eval.baselines_claims import findings, sanity_checks

    agg = {
        "ordering": {},
        "ncis": {"fm@T": {"agrees": False, "bias": {"mean": 0.7359, "low": 0.5426,
                                                    "high": 0.9293}}},
        "offline": {"fm": {"auc": (0.71, 0.001)}},
        "online": {},
        "arms": [],
    }  # fmt: skip
    lines = findings(agg, sanity_checks(agg), EvalConfig())
    line = next(x for x in lines if "ncis:fm@T" in x)
    assert "fails (declared an expected finding): it expects NCIS(fm@T) equals" in line
    assert "measured bias 0.7359 [0.5426, 0.9293]" in line
