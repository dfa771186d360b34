"""The click-AUC ceiling: replaying the logging policy reproduces the logged sessions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from training.eval.ceiling import click_ceiling
from training.harness.data import split_days
from training.sim.config import preset


def test_replay_reproduces_the_logged_clicks_of_the_users(tiny_data):
    ds, _, _ = tiny_data
    cfg = preset("tiny")
    days = split_days(ds, "test")
    log = ds.read("test")
    log = log.filter(pc.greater_equal(log["position"], 0))
    users = np.unique(log["user_id"].to_numpy())[::3]
    mine = log.filter(pc.is_in(log["user_id"], value_set=pa.array(users)))
    c = click_ceiling(cfg, users, days)
    assert c.n_impressions == mine.num_rows > 100
    logged = mine["click"].to_numpy()
    # Per user: the same number of impressions and of clicks as the log.
    for u in users[:20]:
        sel = mine["user_id"].to_numpy() == u
        assert (c.user_id == u).sum() == sel.sum()
        assert c.click[c.user_id == u].sum() == logged[sel].sum()
    assert 0.0 <= c.p_click.min() and c.p_click.max() <= 1.0
    # Calibrated: the mean probability is the click rate within sampling noise.
    se = np.sqrt(c.p_click.mean() * (1 - c.p_click.mean()) / c.n_impressions)
    assert abs(c.p_click.mean() - c.click.mean()) < 4 * se
    assert 0.5 < c.auc < 1.0


def test_bad_users_and_days_are_refused():
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="outside"):
        click_ceiling(cfg, np.array([0]), [cfg.n_days])
    with pytest.raises(ValueError, match="not in the world"):
        click_ceiling(cfg, np.array([-12345]), [0])


def test_first_slates_score_what_each_policy_places():
    from training.eval.ceiling import first_slates
    from training.eval.online import OraclePolicy, RandomPolicy
    from training.sim.logging_policy import LoggingPolicy
    from training.sim.world import build_world

    world = build_world(preset("tiny"))
    pols = {"random": RandomPolicy(0), "logging": LoggingPolicy(world),
            "oracle": OraclePolicy(reward="click")}  # fmt: skip
    t = first_slates(world, pols, np.arange(world.n_users), day=1, k=10)
    assert len({r["requests"] for r in t.values()}) == 1 and t["random"]["requests"] > 50
    # The click oracle places the likeliest clicks; the logging policy beats random.
    assert t["oracle"]["p_click"] > t["logging"]["p_click"] > t["random"]["p_click"]
    for r in t.values():
        assert 0.0 < r["p_click"] < 1.0 and 0.0 <= r["clickbait"] <= 1.0
    with pytest.raises(ValueError, match="no policies"):
        first_slates(world, {}, np.arange(3), day=1, k=10)
