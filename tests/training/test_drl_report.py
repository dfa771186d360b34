"""The DRL-Rec report: the tiny plan end to end (tables, plots, resume), and the pure table and
claim logic against numbers worked by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from training.cli import main
from training.data.features import SideTables
from training.data.pipeline import Dataset
from training.drl.report import (
    ABLATIONS,
    build_plan,
    compression_shape,
    direction_status,
    pooled,
    ratio_status,
    relaimpr_columns,
    report_preset,
    run_drl_report,
    same_config,
    sweep_run_name,
    train_prefix,
)
from training.drl.report import best_at as best_at_
from training.drl.report.claims import paper_claims
from training.drl.report.plan import RATIO_TOLERANCE
from training.eval.metrics import rela_impr
from training.harness.claims import SanityError
from training.sim.config import ConfigError

# One training step per run (4096 * 1/16 = 256 = one batch), small samples everywhere.
SCALE = 1 / 16
ONLY = [
    "main",
    "no_hint",
    "compression0.25",
    "hrl",
    "fm",
    "afn",
    "control",
    "online",
    "cost",
    "tau",
    "horizon",
]
BUDGET = {
    "test_impressions": "1500",
    "online_users": "30",
    "cost_requests": "5",
    "cost_rounds": "1",
    "n_boot": "20",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(paths, log, resume=False):
    return run_drl_report(
        "tiny",
        [0],
        paths["out"],
        resume=resume,
        runs_dir=paths["runs"],
        data_root=paths["data"],
        scale=SCALE,
        only=ONLY,
        overrides=BUDGET,
        log=log,
    )


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("drl-report")
    paths = {"out": root / "out", "runs": root / "runs", "data": root / "data"}
    first: list[str] = []
    try:
        paths["report"] = _run(paths, first.append)
    except SanityError as e:  # one training step: a control may go either way; report written
        paths["report"], paths["sanity"] = paths["out"] / "report.md", e
    paths["first_log"] = first
    return paths


# ---- end to end ----


def test_report_has_every_table_and_plot(tiny_report):
    out = tiny_report["out"]
    assert tiny_report["report"] == out / "report.md"
    text = (out / "report.md").read_text()
    for heading in ("## Claims of the paper", "## Table 2 analogue", "## Table 4 analogue",
                    "## Fig. 4 analogues", "## Table 3 analogue", "## Negative control",
                    "## Timing", "## Configuration", "## Variants beyond the paper",
                    "### The list-wise KL at tau = 1", "### Discounting per request"):  # fmt: skip
        assert heading in text, heading
    for png in ("ablations.png", "fig4a_compression.png", "fig4b_filtered.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    assert "| DRL-Rec (student) | 0." in text and "| FM | 0." in text
    assert "| *Ceiling: the world's own click probability* | 0." in text
    assert "| Wide&Deep | n/a |" in text  # not run: shown as missing, not invented
    assert "± 0.0000" not in text and "± n/a" not in text  # one seed: no spread shown
    assert text.index("## Summary of findings") < text.index("## Claims of the paper")


def test_summary_numbers_are_consistent(tiny_report):
    s = json.loads((tiny_report["out"] / "summary.json").read_text())
    t2 = s["table2"]
    for key in ("fm", "afn", "teacher", "student", "hrl"):
        assert 0.0 < t2[key]["auc"][0] < 1.0, key
    assert t2["fm"]["relaimpr"][0] == 0.0
    # RelaImpr is against FM on the same seed, not against the model itself
    fm0, afn0 = t2["fm"]["auc_per_seed"]["0"], t2["afn"]["auc_per_seed"]["0"]
    assert t2["afn"]["relaimpr_per_seed"]["0"] == pytest.approx(rela_impr(afn0, fm0))
    assert t2["afn"]["relaimpr_per_seed"]["0"] != 0.0
    # The paired AUC difference of "student > teacher" is AUC(student) - AUC(teacher)
    st, te = t2["student"]["auc_per_seed"]["0"], t2["teacher"]["auc_per_seed"]["0"]
    d = next(c for c in s["claims"] if c["id"] == "student>teacher")["diff"]
    assert d["per_seed"][0] == pytest.approx(st - te)
    # The same full run fills Table 2's student and Table 4's first row.
    assert s["table4"]["drl"]["auc"][0] == t2["student"]["auc"][0]
    statuses = {c["id"]: c["status"] for c in s["claims"]}
    assert statuses["ablation:no_confidence"] == "not run"
    assert statuses["student>teacher"] in ("reproduced", "not reproduced")
    assert statuses["cost:bytes_in_memory"] == "reproduced"  # 50% widths: ~47% of the bytes
    assert statuses["cost:macs_per_request"] == "not reproduced"  # ~25%: width squared
    assert s["control"]["student"]["per_seed"] and s["online"]["arms"]["student"]["acn"]["mean"] > 0
    assert s["cost"]["student_over_teacher"]["parameters"] == pytest.approx(0.468, abs=0.01)
    # The variants: tau = 1 against no KL (not run here: no interval), the per-request discount
    # online on both worlds, its control a claim row.
    assert 0.0 < s["tau"]["student"][0] < 1.0 and s["tau"]["vs_no_kl"] is None
    hz = s["horizon"]
    assert set(hz["base"]["acn"]) == {"logging", "student_slot", "student_request0.4",
                                      "student_request0", "teacher_request0.4",
                                      "teacher_request0"}  # fmt: skip
    assert "request_vs_slot" in hz["base"] and "holds" in hz["control"]["student"]
    assert statuses["control:request"] in ("holds", "violated")
    # The click-AUC ceiling: the replay reproduces the test sample, no model beats it here.
    ce = s["ceiling"]
    assert ce["replay_matches_log"] and 0.5 < ce["auc"][0] < 1.0
    # What the policies place, by the truth: every policy scored on the same requests.
    st = s["slate_truth"]["rows"]
    want = {"logging", "random", "click_oracle", "long_term_oracle", "teacher", "student"}
    assert want <= set(st)
    assert st["click_oracle"]["p_click"][0] > st["random"]["p_click"][0]
    assert "### What the policies place" in (tiny_report["out"] / "report.md").read_text()
    assert {"fm", "student"} <= set(ce["captured"])  # (AUC - 0.5) / (ceiling - 0.5) per model
    assert all(math.isfinite(v[0]) and v[0] < 1.0 for v in ce["captured"].values())


def test_run_folders_hold_train_json_and_scores(tiny_report):
    seed = tiny_report["runs"] / "tiny" / "seed0"
    for name in ("drl", "no_hint", "compression0.25", "hrl", "fm", "afn", "control_gamma0"):
        info = json.loads((seed / name / "train.json").read_text())
        assert "eval" in info and info["eval"]["impressions"] > 0, name
        assert (seed / name / "scores.npz").exists(), name
    drl = json.loads((seed / "drl" / "train.json").read_text())
    assert drl["instances"] == 256 and drl["config"]["n_explore"] == 100
    assert not (seed / "no_kl").exists()  # --only left it out


def test_rerun_skips_finished_runs(tiny_report):
    seed = tiny_report["runs"] / "tiny" / "seed0"
    before = {p: p.stat().st_mtime_ns for p in seed.glob("*/train.json")}
    log: list[str] = []
    _run(tiny_report, log.append, resume=True)
    skipped = [line for line in log if "finished earlier, skipped" in line]
    assert len(skipped) == len(before) == 13
    assert not any(": train (" in line for line in log)
    assert {p: p.stat().st_mtime_ns for p in seed.glob("*/train.json")} == before


def test_a_changed_budget_is_refused_not_mixed(tiny_report):
    with pytest.raises(ConfigError, match="another config"):
        run_drl_report("tiny", [0], tiny_report["out"], runs_dir=tiny_report["runs"],
                       data_root=tiny_report["data"], scale=SCALE * 2, only=["drl"],
                       overrides=BUDGET, resume=True, log=None)  # fmt: skip


def test_cli_rejects_unknown_preset_and_names(tmp_path, capsys):
    assert main(["drl-report", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "huge" in capsys.readouterr().err
    args = ["drl-report", "--preset", "tiny", "--only", "nonsense", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "nonsense" in capsys.readouterr().err


# ---- the plan ----


def test_plan_runs_sweeps_on_the_first_seeds_and_reuses_the_base_point():
    cfg = report_preset("tiny")
    plan = build_plan(cfg, [0, 1])
    names0 = [r.name for r in plan[0]]
    names1 = [r.name for r in plan[1]]
    assert len(names0) == len(set(names0))
    assert set(ABLATIONS) <= set(names1) and {"drl", "hrl", "fm", "afn"} <= set(names1)
    assert {"control_gamma0.4", "control_gamma0"} <= set(names1)
    sweeps0 = {r.name for r in plan[0] if r.group == "sweeps"}
    assert len(sweeps0) == 5 + 3 + 2 and not any(r.group == "sweeps" for r in plan[1])
    # The base config's own value of each sweep is the full run, not a duplicate.
    assert sweep_run_name(cfg, "compression", 0.5) == "drl"
    assert sweep_run_name(cfg, "n_filtered", 3) == "drl"
    assert sweep_run_name(cfg, "n_explore", 100) == "drl"
    assert sweep_run_name(cfg, "n_explore", 1000) == "n_explore1000" in sweeps0
    assert all(r.world == "long_term_off" for r in plan[1] if r.group == "control")
    # The variants on every seed: tau = 1, and the per-request discount on both worlds.
    horizon = {r.name: (r.world, dict(r.drl)) for r in plan[1] if r.group == "horizon"}
    assert horizon == {
        "request_gamma0.4": ("base", {"discount": "request", "gamma": 0.4}),
        "request_gamma0": ("base", {"discount": "request", "gamma": 0.0}),
        "control_request_gamma0.4": ("long_term_off", {"discount": "request", "gamma": 0.4}),
        "control_request_gamma0": ("long_term_off", {"discount": "request", "gamma": 0.0}),
    }
    assert [dict(r.drl) for r in plan[1] if r.group == "tau"] == [{"temperature": 1.0}]


def test_train_prefix_takes_the_budget_from_the_start_of_the_stream(tmp_path):
    from training.sim.config import preset
    from training.sim.generate import generate_dataset

    generate_dataset(preset("tiny"), tmp_path / "d", progress=False)
    ds = Dataset.open(tmp_path / "d")
    side = SideTables.from_tables(ds.users(), ds.items())
    x, y = train_prefix(ds, side, 700, sessions_per_chunk=16, seed=0)
    assert x.shape == (700, 22) and y.shape == (700,) and set(np.unique(y)) <= {0.0, 1.0}
    x_all, _ = train_prefix(ds, side, 0, sessions_per_chunk=16, seed=0)
    # the first chunks are taken whole: their rows are the first rows of the whole split
    assert np.array_equal(x[:100], x_all[:100])
    assert x_all.shape[0] == sum(s["impressions"] for s in ds.meta["shards"]
                                 if s["file"] in ds.meta["split"]["train"])  # fmt: skip


# ---- tables and claims against hand numbers ----


def test_relaimpr_columns_per_seed_then_mean():
    aucs = {"fm": {0: 0.7321, 1: 0.70}, "student": {0: 0.7653, 1: 0.72}}
    t = relaimpr_columns(aucs)
    # seed 0: (0.2653 / 0.2321 - 1) * 100 = 14.3042 (the paper's 14.30%); seed 1: 10.0
    assert t["student"]["relaimpr_per_seed"][0] == pytest.approx(14.30418, abs=1e-4)
    assert t["student"]["relaimpr_per_seed"][1] == pytest.approx(10.0)
    m, sd = t["student"]["relaimpr"]
    assert m == pytest.approx(12.15209, abs=1e-4)
    assert sd == pytest.approx(4.30418 / math.sqrt(2), abs=1e-4)
    assert t["fm"]["relaimpr"] == (0.0, 0.0)
    assert t["student"]["auc"][0] == pytest.approx(0.74265)


def test_relaimpr_skips_seeds_without_the_base():
    t = relaimpr_columns({"fm": {0: 0.6}, "x": {0: 0.65, 1: 0.9}})
    assert list(t["x"]["relaimpr_per_seed"]) == [0]
    assert t["x"]["relaimpr"][0] == pytest.approx(50.0)


def test_direction_status_needs_the_mean_and_every_seed():
    assert direction_status([0.002, 0.001])["status"] == "reproduced"
    mixed = direction_status([0.002, 0.001, -0.0005])
    assert mixed["status"] == "not reproduced" and mixed["agree"] == 2
    assert direction_status([-0.001, -0.003], direction=-1)["status"] == "reproduced"
    assert direction_status([0.0])["status"] == "not reproduced"  # a tie is not a win
    assert direction_status([])["status"] == "not run"


def test_ratio_status_relative_tolerance():
    tol = RATIO_TOLERANCE
    assert ratio_status(0.4683, 0.497, tol) == "reproduced"  # 0.942: within 15%
    assert ratio_status(0.8469, 0.767, tol) == "reproduced"  # 1.104
    assert ratio_status(0.2507, 0.767, tol) == "not reproduced"
    assert ratio_status(0.90, 0.767, tol) == "not reproduced"  # 1.173
    assert ratio_status(math.nan, 0.767, tol) == "not run"


def test_compression_shape_stable_then_sharp_drop():
    flat = {0.875: 0.760, 0.75: 0.761, 0.625: 0.7605, 0.5: 0.7610, 0.375: 0.758, 0.25: 0.750}
    r = compression_shape(flat)
    assert r["status"] == "reproduced"
    assert r["drop_50_to_25"] == pytest.approx(0.011) and r["max_step_87_to_50"] == pytest.approx(
        0.001
    )
    shallow = {**flat, 0.25: 0.7605}  # drops 0.0005 < the 0.001 wiggle above 50%
    assert compression_shape(shallow)["status"] == "not reproduced"
    rising = {**flat, 0.25: 0.77}
    assert compression_shape(rising)["status"] == "not reproduced"
    assert compression_shape({0.5: 0.7})["status"] == "not run"


def test_best_at():
    assert best_at_({1: 0.75, 3: 0.76, 5: 0.755, 10: 0.74}, 3)["status"] == "reproduced"
    r = best_at_({1: 0.75, 3: 0.74, 5: 0.755, 10: 0.74}, 3)
    assert r == {"status": "not reproduced", "best": 5}
    assert best_at_({3: 0.7}, 3)["status"] == "not run"


def test_pooled_interval_of_the_mean():
    p = pooled([1.0, 3.0], [0.0, 2.0], [2.0, 4.0])
    # half-widths 1 and 1 -> sqrt(2) / 2; one seed has no spread (not a "± 0")
    assert math.isnan(pooled([1.0], [0.0], [2.0])["std"])
    assert p["mean"] == 2.0 and p["std"] == pytest.approx(math.sqrt(2))
    assert p["low"] == pytest.approx(2.0 - math.sqrt(2) / 2)
    assert p["high"] == pytest.approx(2.0 + math.sqrt(2) / 2)


def _claim_statuses(diffs, online=None):
    def diff(a, b):
        v = diffs.get((a, b))
        return None if v is None else {"per_seed": v, "mean": float(np.mean(v)),
                                       "low": min(v), "high": max(v)}  # fmt: skip

    table2 = {"fm": {"auc": (0.70, math.nan), "seeds": [0]},
              "afn": {"auc": (0.72, math.nan), "seeds": [0]}}  # fmt: skip
    return {c["id"]: c["status"] for c in paper_claims(diff, table2, {}, online, None)}


def test_paper_claims_follow_the_direction_of_the_numbers():
    st_te, ab = (("drl", "student"), ("drl", "teacher")), (("no_kl", "student"), ("drl", "student"))
    pw = (("drl", "student"), ("afn", "score"))
    up = _claim_statuses({st_te: [0.01, 0.02], ab: [-0.01, -0.02], pw: [0.03, 0.01]})
    assert up["student>teacher"] == up["ablation:no_kl"] == up["student>pointwise"] == "reproduced"
    down = _claim_statuses({st_te: [-0.01, -0.02], ab: [0.01, 0.02], pw: [-0.03, -0.01]})
    assert down["student>teacher"] == down["ablation:no_kl"] == "not reproduced"
    assert down["student>pointwise"] == "not reproduced" and down["ablation:no_gru"] == "not run"
    better = {"student_vs_teacher": {"mean": 2.0, "low": 0.5, "high": 3.5}}
    worse = {"student_vs_teacher": {"mean": -2.0, "low": -3.5, "high": -0.5}}
    assert _claim_statuses({}, better)["online_acn"] == "reproduced"
    assert _claim_statuses({}, worse)["online_acn"] == "not reproduced"


def test_same_config_accepts_a_field_added_later_at_its_default():
    defaults = {"a": 1, "b": 2, "new": 0.5}
    assert same_config({"a": 1, "b": 2}, {"a": 1, "b": 2, "new": 0.5}, defaults)
    assert not same_config({"a": 1, "b": 2}, {"a": 1, "b": 2, "new": 0.7}, defaults)
    assert not same_config({"a": 1, "b": 3}, {"a": 1, "b": 2}, defaults)
    assert same_config({"m": [1, 2]}, {"m": (1, 2)}, {})  # JSON turns tuples into lists
    assert not same_config(None, {"a": 1}, defaults)


@pytest.mark.parametrize(
    "key,value",
    [("max_instances", "-1"), ("online_users", "-5"), ("n_explore", "0"), ("threads", "0"),
     ("scale", "0"), ("scale", "-0.5")],
)  # fmt: skip
def test_report_config_refuses_out_of_range_values(key, value):
    with pytest.raises(ConfigError, match=f"drl report {key}="):
        report_preset("tiny").with_overrides({key: value})
