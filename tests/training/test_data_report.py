"""Reports on a logged dataset (`--data`): propensity semantics, item-position NCIS, and the
whole documented chain on the committed bandit-log fixture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from training.cli import main
from training.eval.propensities import (
    check_propensity,
    dataset_propensity,
    ess,
    item_position_ncis,
    softmax,
)
from training.sim.config import ConfigError

FIXTURE = Path(__file__).resolve().parents[2] / "examples" / "bandit_log"


# --------------------------------------------------------------------------------------------
# pure functions


def test_each_propensity_meaning_allows_only_its_estimator():
    check_propensity("conditional", "slate")
    check_propensity("marginal", "position")
    with pytest.raises(ValueError, match="product of marginal propensities is not a list's"):
        check_propensity("marginal", "slate")
    with pytest.raises(ValueError, match="position estimator needs marginal"):
        check_propensity("conditional", "position")
    for est in ("slate", "position"):
        with pytest.raises(ValueError, match="unknown: no propensity-weighted"):
            check_propensity("unknown", est)
    with pytest.raises(ValueError, match="expected one of"):
        check_propensity("joint", "slate")


def test_dataset_propensity_reads_the_declared_meaning():
    assert dataset_propensity({}) == "conditional"  # a simulated dataset written before the key
    assert dataset_propensity({"propensity": "marginal"}) == "marginal"
    assert dataset_propensity({"propensity": "none: KuaiRand logs carry none"}) == "unknown"
    with pytest.raises(ConfigError, match="'joint'"):
        dataset_propensity({"propensity": "joint"})


def test_softmax_and_ess_by_hand():
    np.testing.assert_allclose(softmax(np.array([0.0, math.log(3)]), 1.0), [0.25, 0.75])
    np.testing.assert_allclose(softmax(np.array([0.0, math.log(9)]), 2.0), [0.25, 0.75])
    assert ess(np.array([1.0, 1.0, 1.0])) == 3.0
    assert ess(np.array([2.0, 0.0])) == 1.0


def test_item_position_ncis_by_hand():
    pi = np.array([[0.5, 0.2], [0.1, 0.4], [0.3, 0.0]])
    mu = np.array([[0.25, 0.4], [0.2, 0.2], [0.5, 1.0]])
    r = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    live = np.array([[True, True], [True, True], [True, False]])  # request 3 logged slot 1 only
    out = item_position_ncis(pi, mu, r, live, cap=np.inf)
    # slot 0: w = 2, 0.5, 0.6 -> (2 + 0.6) / 3.1; slot 1: w = 0.5, 2 -> 2 / 2.5
    np.testing.assert_allclose(out["per_slot"], [2.6 / 3.1, 0.8])
    assert out["value"] == pytest.approx(2.6 / 3.1 + 0.8)
    assert out["logged"] == pytest.approx(2 / 3 + 1 / 2)
    np.testing.assert_allclose(out["ess"], [3.1**2 / 4.61, 2.5**2 / 4.25])
    capped = item_position_ncis(pi, mu, r, live, cap=1.5)  # slot 0: 1.5, 0.5, 0.6; slot 1: 0.5, 1.5
    np.testing.assert_allclose(capped["per_slot"], [2.1 / 2.6, 1.5 / 2.0])
    with pytest.raises(ValueError, match="cap must be > 0"):
        item_position_ncis(pi, mu, r, live, cap=0.0)
    with pytest.raises(ValueError, match=r"in \(0, 1\] on logged slots"):
        item_position_ncis(pi, mu * 0, r, live, cap=1.0)


# --------------------------------------------------------------------------------------------
# the documented chain on the fixture


def test_fixture_chain_import_validate_train_and_report_by_the_commands(tmp_path, capsys):
    data = tmp_path / "bandit"
    ok = main(["import", "--mapping", str(FIXTURE / "mapping.toml"), "--out", str(data),
               "--no-progress"])  # fmt: skip
    assert ok == 0
    assert main(["validate", str(data)]) == 0
    assert main(["drl-train", "--data", str(data), "--out", str(tmp_path / "drl"), "--set",
                 "n_explore=20", "--set", "max_instances=600", "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    budget = ["--budget", "models=fm", "--budget", "epochs=1", "--budget", "temperatures=1.0"]
    assert main(["report", "--data", str(data), "--seeds", "0", "--out", str(tmp_path / "rep"),
                 *budget, "--no-progress"]) == 0  # fmt: skip
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Absent (skipped in every metric): like, follow, comment, hate, long_view" in md
    assert "Online parts skipped" in md and "item-position NCIS" in md
    assert "| fm |" in md and "AUC click" in md and "AUC like" not in md
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    fm = summary["per_seed"][0]["models"]["fm"]
    assert 0.6 < fm["offline"]["click"]["auc"] < 1.0  # the fixture's clicks are learnable
    assert set(fm["ncis"]["aspects"]) == {"click"}
    assert main(["drl-report", "--data", str(data), "--seeds", "0", "--out",
                 str(tmp_path / "drep"), *budget, "--budget", "drl_instances=300",
                 "--budget", "n_explore=10", "--no-progress"]) == 0  # fmt: skip
    md = (tmp_path / "drep" / "report.md").read_text()
    assert "| teacher |" in md and "| student |" in md and "Online parts skipped" in md


def test_data_report_refuses_world_options_and_a_bad_dataset(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", "--data", str(tmp_path), "--set", "n_users=5", "--out", str(out)]) == 2
    assert "--set apply to simulated worlds only" in capsys.readouterr().err
    assert main(["drl-report", "--data", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert not out.exists()


def test_absent_aspects_and_marginal_propensities_are_refused_where_they_would_be_misread(
    tmp_path, capsys
):
    from training.data.pipeline import Dataset, DatasetError
    from training.eval.samples import logged_slates

    data = tmp_path / "bandit"
    assert main(["import", "--mapping", str(FIXTURE / "mapping.toml"), "--out", str(data),
                 "--no-progress"]) == 0  # fmt: skip
    ds = Dataset.open(data)
    assert ds.aspects == ("click",)
    ds.require_aspects(["click"], "a click model")
    with pytest.raises(DatasetError, match=r"MMRF needs the feedback aspects \['like', 'watch"):
        ds.require_aspects(["watch_time", "like", "click"], "MMRF")
    # a slate estimate from a sum of log marginals is refused
    with pytest.raises(ValueError, match="slate estimator needs conditional"):
        logged_slates(ds, "test")
    # DRL-Rec with a reward the log does not have: exit 2 before any folder
    out = tmp_path / "drl"
    assert main(["drl-train", "--data", str(data), "--out", str(out), "--set", "reward=like",
                 "--no-progress"]) == 2  # fmt: skip
    assert "needs the feedback aspects ['like']" in capsys.readouterr().err
    assert not out.exists()


def test_simulated_dataset_gets_slate_ncis_for_every_aspect(tiny_data, tmp_path):
    ds = tiny_data[0]
    from training.eval.data_report import run_data_report

    path = run_data_report(
        "baselines", ds.root, [0], tmp_path / "rep", log=None,
        budget_overrides={"models": "fm", "epochs": "1", "train_impressions": "3000",
                          "temperatures": "1.0"},
    )  # fmt: skip
    summary = json.loads((path.parent / "summary.json").read_text())
    ncis = summary["per_seed"][0]["models"]["fm"]["ncis"]
    assert ncis["estimator"] == "slate"  # no propensity key: simulated, conditional
    assert list(ncis["aspects"]) == ["click", "like", "follow", "comment", "hate", "long_view",
                                     "watch_time"]  # fmt: skip
    click = ncis["aspects"]["click"]
    assert 0 < click["value"] < 10 and click["logged"] > 0
    assert "Absent" not in path.read_text()


def test_behaviour_slate_log_prob_refuses_marginal_and_unknown_propensities(tiny_data):
    from training.eval.slates import behaviour_log_prob

    req = tiny_data[2]
    np.testing.assert_allclose(behaviour_log_prob(req), np.log(req.propensity).sum(axis=1))
    with pytest.raises(ValueError, match="slate estimator needs conditional"):
        behaviour_log_prob(req, "marginal")
    with pytest.raises(ValueError, match="unknown: no propensity-weighted estimate"):
        behaviour_log_prob(req, "unknown")


def test_unknown_propensities_skip_ncis_with_a_line(tmp_path):
    import pandas as pd

    from tests.training.test_import import _write_small
    from training.eval.data_report import run_data_report

    path = _write_small(tmp_path)
    m = json.loads(path.read_text())
    m["log"]["propensity_kind"] = "unknown"
    del m["log"]["propensity"]
    path.write_text(json.dumps(m))
    from training.data.importer import import_log

    import_log(path, tmp_path / "ds", progress=False)
    shard = pd.read_parquet(next((tmp_path / "ds" / "log").glob("*.parquet")))
    assert (shard["propensity"] == 1.0).all()  # the placeholder, never used as a probability
    report = run_data_report("baselines", tmp_path / "ds", [0], tmp_path / "rep", log=None,
                             budget_overrides={"models": "fm", "epochs": "1"})  # fmt: skip
    md = report.read_text()
    assert "NCIS skipped: the dataset's propensities are unknown." in md
    assert "## NCIS" not in md and "Absent (skipped in every metric): like" in md
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert "ncis" not in summary["per_seed"][0]["models"]["fm"]
