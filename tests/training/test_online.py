"""Tests for training.eval.online: reference policies, common random numbers across arms, the
ordering oracle > logging > random, summaries with paired intervals, saving, several seeds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from contract.features import candidate_prefix_counts
from training.eval.online import (
    METRICS,
    SESSION_FIELDS,
    OnlineResult,
    OraclePolicy,
    RandomPolicy,
    SeedsResult,
    format_summary,
    run_online,
    run_online_seeds,
)
from training.harness.stats import nonneg_mean_ci
from training.sim.config import preset
from training.sim.env import Env
from training.sim.logging_policy import LoggingPolicy
from training.sim.world import build_world

DAYS = range(2)
#: A myopic oracle that also values satisfaction (the long-term side of an item).
LONG_TERM = {"click": 1.0, "satisfaction": 0.1}


@pytest.fixture(scope="module")
def cfg():
    return preset("tiny")


@pytest.fixture(scope="module")
def world(cfg):
    return build_world(cfg)


@pytest.fixture(scope="module")
def result(world):
    arms = {
        "random": RandomPolicy(0),
        "logging": LoggingPolicy(world),
        "oracle": OraclePolicy(),
        "oracle_lt": OraclePolicy(reward=LONG_TERM),
    }
    return run_online(world, arms, days=DAYS, progress=False)


def _row(rows, arm, metric):
    (r,) = [r for r in rows if r["arm"] == arm and r["metric"] == metric]
    return r


def _clicks_per_request(res: OnlineResult, arm: str) -> float:
    s = res.per_session(arm)
    return float(s["click"].sum() / s["requests"].sum())


def _same(a, b) -> bool:
    """Equality that treats NaN as equal to NaN (summaries hold NaN where undefined)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _strip_timing(d: dict) -> dict:
    d = dict(d)
    d["meta"] = {k: v for k, v in d["meta"].items() if k != "seconds"}
    return d


# ---- policies ----


def test_random_policy_distinct_in_range_and_crn_stable(world):
    env = Env(world)
    obs = env.begin_day(0)
    k, c = world.cfg.list_size, obs.candidates.shape[1]
    slate = RandomPolicy(3).rank(obs, k)
    assert slate.shape == (obs.batch_size, k)
    assert slate.min() >= 0 and slate.max() < c
    srt = np.sort(slate, axis=1)
    assert not (srt[:, 1:] == srt[:, :-1]).any()
    # Counter-based: no state, the same request gets the same slate; another seed differs.
    np.testing.assert_array_equal(RandomPolicy(3).rank(obs, k), slate)
    np.testing.assert_array_equal(RandomPolicy(3).rank(obs, k), RandomPolicy(3).rank(obs, k))
    assert not np.array_equal(RandomPolicy(4).rank(obs, k), slate)
    # Roughly uniform: every candidate index gets picked across the batch.
    assert np.unique(slate).size > 0.9 * c
    with pytest.raises(ValueError, match="k="):
        RandomPolicy(0).rank(obs, c + 1)


def test_oracle_slates_valid_and_greedy(world):
    env = Env(world)
    obs = env.begin_day(0)
    k = world.cfg.list_size
    slate = OraclePolicy(env).rank(obs, k)
    assert slate.shape == (obs.batch_size, k)
    srt = np.sort(slate, axis=1)
    assert not (srt[:, 1:] == srt[:, :-1]).any()
    # Slot 0 has no fatigue from the list: it is the candidate of highest expected click.
    c = obs.candidates.shape[1]
    rows = np.arange(obs.batch_size)[:, None]
    e0 = env.expected(np.broadcast_to(np.arange(c), (obs.batch_size, c)), 0)["click"]
    np.testing.assert_array_equal(slate[:, 0], np.argmax(e0, axis=1))
    # Every slot is the greedy argmax given the full prefix (reference computation).
    tags, authors = world.item_tag[obs.candidates], world.item_author[obs.candidates]
    placed_t, placed_a = tags[rows, slate], authors[rows, slate]
    cand = np.broadcast_to(np.arange(c), (obs.batch_size, c))
    for p in range(k):
        st = candidate_prefix_counts(tags, placed_t, p)
        sa = candidate_prefix_counts(authors, placed_a, p)
        e = env.expected(cand, p, st, sa)["click"]
        e[rows, slate[:, :p]] = -np.inf
        np.testing.assert_array_equal(slate[:, p], np.argmax(e, axis=1))
    # A getter works like the env itself.
    np.testing.assert_array_equal(OraclePolicy(lambda: env).rank(obs, k), slate)


def test_oracle_needs_an_env_and_a_known_reward(world):
    env = Env(world)
    obs = env.begin_day(0)
    with pytest.raises(RuntimeError, match="not bound"):
        OraclePolicy().rank(obs, 3)
    other = Env(world)
    other.begin_day(1)
    with pytest.raises(RuntimeError, match="not the current observation"):
        OraclePolicy(other).rank(obs, 3)
    with pytest.raises(ValueError, match="reward aspect"):
        OraclePolicy(reward="dwell")
    with pytest.raises(ValueError, match="finite"):
        OraclePolicy(reward={"click": math.nan})


# ---- common random numbers ----


def test_same_policy_in_two_arms_gives_identical_numbers(world):
    res = run_online(
        world,
        {
            "log_a": LoggingPolicy(world),
            "log_b": LoggingPolicy(world),
            "rand_a": RandomPolicy(7),
            "rand_b": RandomPolicy(7),
            "oracle_a": OraclePolicy(),
            "oracle_b": OraclePolicy(),
        },
        days=DAYS,
        progress=False,
    )
    for a, b in (("log_a", "log_b"), ("rand_a", "rand_b"), ("oracle_a", "oracle_b")):
        for name in SESSION_FIELDS:
            np.testing.assert_array_equal(res.per_session(a)[name], res.per_session(b)[name])
    # The arms differ from one another (the test above is not vacuous).
    assert not np.array_equal(res.per_session("log_a")["click"], res.per_session("rand_a")["click"])


def test_run_online_twice_is_identical(world, result):
    again = run_online(
        world,
        {
            "random": RandomPolicy(0),
            "logging": LoggingPolicy(world),
            "oracle": OraclePolicy(),
            "oracle_lt": OraclePolicy(reward=LONG_TERM),
        },
        days=DAYS,
        progress=False,
    )
    assert _strip_timing(again.to_dict()) == _strip_timing(result.to_dict())
    assert _same(again.summary("logging"), result.summary("logging"))


def test_sessions_are_the_active_users_of_each_day(world, result):
    env = Env(world)
    expected_users = np.concatenate([env.active_users(d) for d in DAYS])
    np.testing.assert_array_equal(result.session_user, expected_users)
    assert result.n_sessions == expected_users.size
    for arm in result.arms:
        s = result.per_session(arm)
        assert (s["requests"] >= 1).all()
        np.testing.assert_array_equal(s["impressions"], s["requests"] * world.cfg.list_size)
        assert (s["click"] <= s["impressions"]).all()
        assert (s["long_view"] <= s["click"]).all()


def test_seed_offset_changes_draws_and_keeps_crn(world):
    arms = {"a": RandomPolicy(1), "b": RandomPolicy(1)}
    base = run_online(world, arms, days=[0], progress=False)
    shifted = run_online(world, arms, days=[0], seed_offset=1, progress=False)
    assert shifted.meta["seed_offset"] == 1
    assert not np.array_equal(base.session_user, shifted.session_user)
    for name in SESSION_FIELDS:
        np.testing.assert_array_equal(
            shifted.per_session("a")[name], shifted.per_session("b")[name]
        )


# ---- oracle > logging > random ----


def test_ordering_on_clicks(result):
    rows = result.summary("logging")
    acn = {a: _row(rows, a, "clicks_per_user") for a in result.arms}
    # Random is clearly below logging on ACN (paired interval excludes 0).
    assert acn["random"]["mean"] < acn["logging"]["mean"]
    assert acn["random"]["rel_high"] < 0
    # The oracle valuing satisfaction beats logging on ACN by far.
    assert acn["oracle_lt"]["rel_low"] > 10.0
    # Per request, the click oracle gets the most clicks: it maximises exactly that.
    cpr = {a: _clicks_per_request(result, a) for a in result.arms}
    assert cpr["oracle"] > cpr["logging"] > cpr["random"]
    assert cpr["oracle"] > 1.03 * cpr["logging"]


def test_click_oracle_wins_acn_without_clickbait(cfg):
    # The myopic click oracle's ACN gain needs sessions not to be cut short by clickbait;
    # without clickbait it is the strongest arm on clicks per user too.
    w = build_world(cfg.with_overrides({"mechanisms.clickbait": False}))
    res = run_online(
        w,
        {"random": RandomPolicy(0), "logging": LoggingPolicy(w), "oracle": OraclePolicy()},
        days=DAYS,
        progress=False,
    )
    rows = res.summary("logging")
    assert _row(rows, "oracle", "clicks_per_user")["rel_low"] > 5.0
    assert _row(rows, "random", "clicks_per_user")["rel_high"] < -5.0


# ---- summary ----


def test_summary_self_comparison_and_intervals(result):
    rows = result.summary("logging")
    assert len(rows) == len(result.arms) * len(METRICS)
    for r in rows:
        assert r["baseline"] == "logging"
        if r["arm"] == "logging":
            assert r["rel_pct"] == 0.0 and r["rel_low"] == 0.0 and r["rel_high"] == 0.0
        assert r["low"] <= r["mean"] <= r["high"]
        if not math.isnan(r["rel_low"]):  # NaN: an arm with a zero mean has no log ratio
            assert -100.0 < r["rel_low"] <= r["rel_pct"] <= r["rel_high"]
        assert r["low"] >= 0.0
    # Units: users with at least one session, or sessions.
    n_active = result.active_users().size
    assert _row(rows, "oracle", "clicks_per_user")["n"] == n_active
    assert _row(rows, "oracle", "depth_per_session")["n"] == result.n_sessions
    # ACN = total clicks / users with a session, its interval the log-scale one over users.
    acn = _row(rows, "random", "clicks_per_user")
    clicks = result.per_session("random")["click"]
    assert acn["mean"] == pytest.approx(clicks.sum() / n_active)
    m, lo, hi = nonneg_mean_ci(result.per_user("random")["click"].astype(float))
    assert (acn["mean"], acn["low"], acn["high"]) == pytest.approx((m, lo, hi))
    # Each arm against itself as the baseline.
    for r in result.summary("oracle"):
        if r["arm"] == "oracle":
            assert r["rel_low"] == r["rel_pct"] == r["rel_high"] == 0.0
    assert "| oracle | clicks_per_user |" in format_summary(rows)
    with pytest.raises(KeyError, match="unknown arm"):
        result.summary("nope")


def test_relative_change_is_paired_delta_method():
    # Hand-made sessions: arm b = 1.1 * arm a plus noise, paired per session.
    rng = np.random.default_rng(0)
    n = 400
    a = rng.poisson(20, size=n)
    b = np.rint(1.1 * a + rng.normal(0, 1, size=n)).astype(np.int64)

    def fields(click):
        return {
            name: (click.astype(float) if name == "watch_time" else click.copy())
            for name in SESSION_FIELDS
        }

    res = OnlineResult(
        users=np.arange(n),
        session_user=np.arange(n),
        session_day=np.zeros(n, dtype=np.int64),
        sessions={"a": fields(a), "b": fields(b)},
    )
    r = _row(res.summary("a", ["clicks_per_session"]), "b", "clicks_per_session")
    ratio = b.mean() / a.mean() - 1
    assert r["rel_pct"] == pytest.approx(100 * ratio)
    # log-ratio delta method: u = b / mean(b) - a / mean(a), se = sd(u) / sqrt(n)
    u = b / b.mean() - a / a.mean()
    se = u.std(ddof=1) / np.sqrt(n)
    assert (r["rel_low"], r["rel_high"]) == pytest.approx(
        (100 * ((1 + ratio) * np.exp(-1.959964 * se) - 1),
         100 * ((1 + ratio) * np.exp(1.959964 * se) - 1)), rel=1e-5
    )
    # Pairing makes it much tighter than the unpaired spread of the ratio would be.
    assert r["rel_high"] - r["rel_low"] < 2.0
    # A zero baseline gives NaN, not an error.
    zero = OnlineResult(
        users=np.arange(n),
        session_user=np.arange(n),
        session_day=np.zeros(n, dtype=np.int64),
        sessions={"a": fields(np.zeros(n, dtype=np.int64)), "b": fields(b)},
    )
    assert math.isnan(_row(zero.summary("a"), "b", "hate_per_session")["rel_pct"])


def test_to_dict_from_dict_round_trip(result):
    text = json.dumps(result.to_dict())
    back = OnlineResult.from_dict(json.loads(text))
    assert back.arms == result.arms
    np.testing.assert_array_equal(back.users, result.users)
    np.testing.assert_array_equal(back.session_user, result.session_user)
    np.testing.assert_array_equal(back.session_day, result.session_day)
    for arm in result.arms:
        for name in SESSION_FIELDS:
            x, y = back.per_session(arm)[name], result.per_session(arm)[name]
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
    assert _same(back.summary("logging"), result.summary("logging"))
    assert back.meta == result.meta
    bad = json.loads(text)
    bad["version"] = 2
    with pytest.raises(ValueError, match="version"):
        OnlineResult.from_dict(bad)


# ---- population, hooks ----


def test_population_subset_and_per_user(world):
    users = np.arange(0, world.n_users, 3)
    res = run_online(world, {"r": RandomPolicy(0)}, users=users, days=DAYS, progress=False)
    np.testing.assert_array_equal(res.users, users)
    assert np.isin(res.session_user, users).all()
    pu_all = res.per_user("r", active_only=False)
    pu = res.per_user("r")
    assert pu_all["sessions"].shape == users.shape
    assert (pu["sessions"] >= 1).all() and pu["sessions"].sum() == res.n_sessions
    assert pu_all["click"].sum() == pu["click"].sum() == res.per_session("r")["click"].sum()
    with pytest.raises(ValueError, match="out of range"):
        run_online(world, {"r": RandomPolicy(0)}, users=np.array([world.n_users]), progress=False)
    with pytest.raises(ValueError, match="strictly increasing"):
        run_online(world, {"r": RandomPolicy(0)}, days=[1, 1], progress=False)


class _Recorder:
    """Random ranking that records the hooks run_online calls."""

    def __init__(self):
        self.inner = RandomPolicy(0)
        self.bound: list[Env] = []
        self.steps = 0
        self.impressions = 0

    def bind(self, env):
        self.bound.append(env)

    def rank(self, obs, k):
        return self.inner.rank(obs, k)

    def observe_feedback(self, obs, slate, feedback):
        assert feedback.click.shape == slate.shape == (obs.batch_size, slate.shape[1])
        self.steps += 1
        self.impressions += slate.size


def test_hooks_bind_and_observe_feedback(world):
    rec = _Recorder()
    res = run_online(world, {"rec": rec, "rand": RandomPolicy(0)}, days=DAYS, progress=False)
    assert len(rec.bound) == 1 and isinstance(rec.bound[0], Env)
    assert rec.impressions == res.per_session("rec")["impressions"].sum()
    assert rec.steps > 0
    for name in SESSION_FIELDS:
        np.testing.assert_array_equal(res.per_session("rec")[name], res.per_session("rand")[name])


# ---- several seeds ----


def test_run_online_seeds(cfg):
    factories = {"logging": LoggingPolicy, "random": lambda w: RandomPolicy(w.cfg.seed)}
    out = run_online_seeds(cfg, factories, seeds=[0, 1], days=[0], progress=False)
    assert out.seeds == [0, 1] and out.arms == ["logging", "random"]
    assert out.results[0].meta["world_seed"] == 0 and out.results[1].meta["world_seed"] == 1
    rows = out.summary(baseline="logging")
    r = _row(rows, "random", "clicks_per_user")
    per_seed = [
        _row(out.results[s].summary("logging"), "random", "clicks_per_user") for s in (0, 1)
    ]
    means = [p["mean"] for p in per_seed]
    assert r["per_seed"] == pytest.approx(means)
    assert r["mean"] == pytest.approx(np.mean(means))
    assert r["std"] == pytest.approx(np.std(means, ddof=1))
    assert r["rel_pct_mean"] == pytest.approx(np.mean([p["rel_pct"] for p in per_seed]))
    assert _row(rows, "logging", "clicks_per_user")["rel_pct_std"] == 0.0
    back = SeedsResult.from_dict(json.loads(json.dumps(out.to_dict())))
    assert _same(back.summary("logging"), rows)
    with pytest.raises(ValueError, match="distinct"):
        run_online_seeds(cfg, factories, seeds=[1, 1], days=[0], progress=False)
