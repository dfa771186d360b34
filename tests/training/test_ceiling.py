"""The click-AUC ceiling: replaying the logging policy reproduces the logged sessions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from training.eval.baselines_run import split_days
from training.eval.ceiling import click_ceiling
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
