"""The MMRF report (training/mmrf/report/): pure pieces by hand, claims' directions on hand-made
numbers, the offline scorer against MMRF's own evaluation, and the plan end to end on a tiny
budget through the command's folder rules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from training.harness.claims import NOT_REPRODUCED, NOT_RUN, REPRODUCED, SanityError
from training.mmrf.report import run_mmrf_report
from training.mmrf.report.claims import (
    claims,
    kl_gap,
    sanity_checks,
    seed_interval,
    strongest_baseline,
)
from training.mmrf.report.measures import bucket_means
from training.mmrf.report.plan import BASELINE_ROWS, TABLE1_ROWS, report_preset
from training.mmrf.report.runs import choose_lambda
from training.sim.config import ConfigError

# ---- pure pieces, by hand ----


def test_seed_interval_is_a_t_interval_and_shows_no_spread_for_one_seed():
    s = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * sd 1 / sqrt(3)
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
    assert (s["low"], s["high"]) == pytest.approx((2.0 - half, 2.0 + half))
    one = seed_interval([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["std"]) and math.isnan(one["low"])
    assert seed_interval([None, 0.5])["mean"] == 0.5  # an undefined seed is left out
    auc = seed_interval([0.9, 1.0, 0.99], 0.0, 1.0)  # an AUC's interval stays inside [0, 1]
    assert auc["high"] == 1.0 and auc["low"] < auc["mean"] < 1.0
    assert seed_interval([0.0, 0.1, 0.0], 0.0)["low"] == 0.0  # a count's never below 0


def test_bucket_means_by_exposure_count():
    b = bucket_means(np.array([1.0, 2, 3, 4, 5]), np.array([0, 1, 4, 5, 100]), (1, 5, 20))
    assert [x["label"] for x in b] == ["0", "1-4", "5-19", "20+"]
    assert [x["n"] for x in b] == [1, 2, 1, 1]
    assert [x["mean"] for x in b] == [1.0, 2.5, 4.0, 5.0]
    empty = bucket_means(np.array([1.0]), np.array([3]), (1, 2))
    assert empty[0]["n"] == 0 and math.isnan(empty[0]["mean"])


def test_kl_gap_is_rarest_minus_most_exposed_non_empty_bucket_per_seed():
    buckets = [
        {"n": [0, 5], "per_seed": [float("nan"), 0.9]},
        {"n": [3, 5], "per_seed": [0.5, 0.4]},
        {"n": [4, 0], "per_seed": [0.2, float("nan")]},
    ]
    assert kl_gap(buckets) == pytest.approx([0.5 - 0.2, 0.9 - 0.4])
    assert kl_gap([{"n": [1], "per_seed": [0.3]}]) == []  # one bucket: no gap


def test_lambda_is_chosen_by_valid_correlation_and_ties_go_to_the_smaller():
    run = lambda c: {"eval": {"main_corr_watch_time": c}}  # noqa: E731
    assert choose_lambda({0.0: run(0.1), 1.0: run(0.3)}) == 1.0
    assert choose_lambda({0.0: run(0.2), 1.0: run(0.2)}) == 0.0
    assert choose_lambda({0.0: run(float("nan")), 1.0: run(-0.5)}) == 1.0
    with pytest.raises(ValueError):
        choose_lambda({})


# ---- claims: directions on hand-made numbers ----


def _point(per_seed):
    return seed_interval(per_seed)


def _agg(mmrf_gauc, base_gauc, mmrf_ncis, base_ncis, online, kl=(0.3, 0.1)):
    """A minimal aggregate: MMRF and every baseline on watch time, MMRF's online rows."""
    t1 = {}
    for r in TABLE1_ROWS:
        g, n = (mmrf_gauc, mmrf_ncis) if r == "MMRF" else (base_gauc, base_ncis)
        t1[r] = {"watch_time": {"gauc": _point(g), "ncis": _point(n)}}
    t1["TSCAC"]["watch_time"]["gauc"] = _point([x - 0.01 for x in base_gauc])  # not the best
    rel = {"mean": online[0], "low": online[1], "high": online[2]}
    t2 = {"mmrf": {m: {"vs_ltr": rel, "vs_logging": rel} for m in ("watch_time", "follow")}}
    same = {"mean": 0.0, "low": -1.0, "high": 1.0} if online[0] >= 0 else dict(zip(
        ("mean", "low", "high"), online, strict=True))  # fmt: skip
    t2["mmrf_bundle"] = {"watch_time": {"vs_mmrf": same}}
    buckets = [{"n": [10, 10], "per_seed": [kl[0]] * 2}, {"n": [10, 10], "per_seed": [kl[1]] * 2}]
    return {"table1": t1, "table2": t2,
            "feedback": {"kl_by_exposure": {"non_impressed": buckets}}}  # fmt: skip


def _status(rows):
    return {c["id"]: c["status"] for c in rows}


def test_claims_reproduce_when_mmrf_is_ahead_and_not_when_the_numbers_are_inverted():
    good = _status(claims(_agg([0.70, 0.71], [0.66, 0.67], [11.5, 11.6], [10.0, 10.0],
                               (0.6, 0.1, 1.2))))  # fmt: skip
    assert set(good.values()) == {REPRODUCED}
    assert len(good) == 7
    bad = _status(claims(_agg([0.66, 0.67], [0.70, 0.71], [10.0, 10.0], [11.5, 11.6],
                              (-0.6, -1.2, -0.1), kl=(0.1, 0.3))))  # fmt: skip
    assert set(bad.values()) == {NOT_REPRODUCED}


def test_a_claim_needs_every_seed_and_an_interval_clear_of_zero():
    mixed = _status(claims(_agg([0.70, 0.60], [0.66, 0.66], [11.0, 9.0], [10.0, 10.0],
                                (0.5, -0.2, 1.2))))  # fmt: skip
    assert mixed["wt_gauc"] == NOT_REPRODUCED  # the mean is ahead, one seed is not
    assert mixed["wt_ncis"] == NOT_REPRODUCED
    assert mixed["online_watch_time"] == NOT_REPRODUCED  # the interval straddles 0


def test_claims_not_run_where_there_is_no_number():
    agg = _agg([0.7], [0.6], [11.0], [10.0], (float("nan"),) * 3)
    agg["table2"] = {}
    st = _status(claims(agg))
    assert st["online_watch_time"] == st["online_follow"] == NOT_RUN
    assert st["ours_watch_time_vs_logging"] == st["bundle_parity"] == NOT_RUN
    agg["table1"]["MMRF"]["watch_time"]["gauc"] = _point([None])
    assert _status(claims(agg))["wt_gauc"] == NOT_RUN


def test_the_strongest_baseline_is_a_baseline_with_the_highest_mean():
    agg = _agg([0.99], [0.6], [1.0], [1.0], (0, 0, 0))
    agg["table1"]["MASSA"]["watch_time"]["gauc"] = _point([0.65])
    assert strongest_baseline(agg["table1"], "watch_time", "gauc") == "MASSA"
    assert "MMRF" not in BASELINE_ROWS


def test_sanity_checks_from_numbers():
    def fb(m_auc, truth_auc):
        g = {"auc": {"click": (0.6, math.nan)}, "truth_auc": {"click": (truth_auc, math.nan)}}
        g["auc"]["click"] = (m_auc, math.nan)
        return {"feedback": {"impressions_auc": {"click": (m_auc, math.nan)},
                             "probe": {"non_impressed": g}}}  # fmt: skip

    ok = {c["id"]: c["ok"] for c in sanity_checks(fb(0.6, 0.7))}
    assert ok == {"feedback_auc": True, "truth_ceiling": True}
    bad = {c["id"]: c["ok"] for c in sanity_checks(fb(0.45, 0.4))}
    assert bad == {"feedback_auc": False, "truth_ceiling": False}
    assert {c["ok"] for c in sanity_checks(fb(math.nan, math.nan))} == {None}


# ---- config ----


def test_bad_budget_values_are_config_errors():
    cfg = report_preset("tiny")
    for bad in ({"rl_instances": "-1"}, {"lambdas": "-0.5"}, {"n_boot": "0"},
                {"exposure_edges": "5,1"}, {"nope": "1"}):  # fmt: skip
        with pytest.raises(ConfigError):
            cfg.with_overrides(bad)
    with pytest.raises(ConfigError):
        report_preset("huge")


# ---- the offline scorer reads the state MMRF's own evaluation reads ----


@pytest.mark.usefixtures("one_thread")
def test_actor_scores_at_the_logged_slot_equal_the_served_score_of_that_impression(tiny_data):
    from training.mmrf.report.measures import ActorScores
    from training.mmrf.rewards import RewardScale
    from training.mmrf.train import MMRFConfig, impression_outputs, make_trainer

    ds, side, req = tiny_data
    tr = make_trainer(MMRFConfig(seed=3), side, RewardScale(30.0, 0.99, 10.0, 5.0, 100))
    served = impression_outputs(tr, req)["served"]
    sc = ActorScores(tr.net, tr.cfg.memory)
    r = np.flatnonzero(req.n_shown >= 3)[:20]
    for t in (0, 2):
        s = sc.logged_scores(req, r, np.full(r.size, t))
        g = req.imp_start[r] + t
        assert s.shape == (r.size, req.cand_item.shape[1])
        np.testing.assert_allclose(s[:, t], served[g], rtol=1e-5, atol=1e-6)


# ---- the plan end to end, on a tiny budget ----

BUDGET = {
    "rl_instances": "256", "tscac_stage1_steps": "1", "model_warmup": "0", "drl_instances": "256",
    "ltr_rounds": "5", "eval_requests": "60", "online_users": "12", "probe_users": "6",
    "probe_candidates": "3000", "n_boot": "20",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmrf-report")
    paths = {"out": root / "out", "runs": root / "runs", "data": root / "data"}
    log: list[str] = []
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths["report"] = run_mmrf_report("tiny", [0], paths["out"], runs_dir=paths["runs"],
                                          data_root=paths["data"], budget_overrides=BUDGET,
                                          log=log.append)  # fmt: skip
    except SanityError:  # one step of training: M may rank clicks below chance; still written
        paths["report"] = paths["out"] / "report.md"
    finally:
        torch.set_num_threads(n)
    paths["log"] = log
    return paths


def test_report_has_both_tables_the_feedback_model_and_plots(tiny_report):
    out = tiny_report["out"]
    text = tiny_report["report"].read_text()
    for h in ("## Summary of findings", "## Claims", "## Sanity checks", "## Choices",
              "## Table 1 analogue", "## Table 2 analogue", "## The feedback model M"):  # fmt: skip
        assert h in text, h
    assert text.index("## Summary of findings") < text.index("## Claims")
    for row in TABLE1_ROWS:
        assert text.count(f"| {row} | ") == 2, row  # the GAUC and the NCIS table
    for arm in ("ltr", "mmrf", "logging", "drl_student", "wide_deep_weighted", "mmrf_bundle"):
        assert f"| {arm} | " in text
    for png in ("online_vs_ltr.png", "feedback_auc.png", "kl_by_exposure.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "± 0.0000" not in text and "± n/a" not in text  # one seed: no spread shown
    s = json.loads((out / "summary.json").read_text())
    assert {c["status"] for c in s["claims"]} <= {REPRODUCED, NOT_REPRODUCED, NOT_RUN}
    assert [c["id"] for c in s["claims"]] == ["wt_gauc", "wt_ncis", "online_watch_time",
                                              "online_follow", "ours_watch_time_vs_logging",
                                              "bundle_parity", "kl_exposure"]  # fmt: skip
    assert s["aggregate"]["lambda"][0] in (0.0, 1.0)
    runs = tiny_report["runs"] / "seed0"
    for d in ("rl/mmrf-lambda0", "rl/mmrf-lambda1", "rl/mmrf-co", "rl/massa", "drl"):
        assert (runs / d / "train.json").exists(), d
    assert (runs / "ltr" / "model.txt").exists()


def test_the_online_control_against_itself_is_zero_and_changes_stay_above_minus_100(tiny_report):
    s = json.loads((tiny_report["out"] / "summary.json").read_text())
    t2 = s["aggregate"]["table2"]
    assert t2["ltr"]["watch_time"]["vs_ltr"]["mean"] == pytest.approx(0.0, abs=1e-9)
    for arm in t2.values():
        for m in arm.values():
            for k in ("vs_ltr", "vs_logging"):
                low = m[k]["low"]
                assert low is None or math.isnan(low) or low > -100.0


def test_resume_reuses_every_run_and_an_existing_out_is_refused(tiny_report):
    p = tiny_report
    with pytest.raises(FileExistsError):
        run_mmrf_report("tiny", [0], p["out"], runs_dir=p["runs"], data_root=p["data"],
                        budget_overrides=BUDGET, log=None)  # fmt: skip
    log: list[str] = []
    try:
        run_mmrf_report("tiny", [0], p["out"], runs_dir=p["runs"], data_root=p["data"],
                        budget_overrides=BUDGET, resume=True, log=log.append)  # fmt: skip
    except SanityError:
        pass
    text = "\n".join(log)
    assert not [x for x in log if ": train" in x]  # nothing trained again
    assert "mmrf-lambda0: finished, reused" in text and "ltr: finished, reused" in text


def test_cli_bad_budget_exits_2_before_any_work(tmp_path, capsys):
    from training.cli import main

    out = tmp_path / "r"
    assert main(["mmrf-report", "--out", str(out), "--budget", "rl_instances=-1"]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "rl_instances" in err and len(err.strip().splitlines()) == 1


def test_an_undefined_relative_change_says_in_how_many_seeds_the_control_had_none():
    """The tiny report said "no follow in the ltr arm" while LTR had follows in 2 of 3 seeds
    (the pooled mean was a geometric one then, zeroed by the seed without)."""
    from training.mmrf.report.claims import _measured

    r = {"mean": math.nan, "low": math.nan, "high": math.nan, "per_seed": [20.0, math.nan, -5.0]}
    assert _measured(r, "ltr", "follow") == "undefined: no follow in the ltr arm in 1 of 3 seeds"
    r["per_seed"] = [math.nan, math.nan]
    assert _measured(r, "ltr", "follow") == "undefined: no follow in the ltr arm"
