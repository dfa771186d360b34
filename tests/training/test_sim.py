"""Tests for the world simulator (training.sim): config, world, online env, logging policy,
feedback calibration, each mechanism's effect with its negative control, determinism, CLI.

Most tests use the ``tiny`` preset (optionally with more users for statistical power); the
calibration test uses the ``default`` preset for one or two days of a subset of users.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from contract.features import DURATION_EDGES_S, bucketise, prefix_counts
from training import cli
from training.data.pipeline import Dataset
from training.sim.config import (
    ConfigError,
    Mechanisms,
    WorldConfig,
    long_term_off,
    parse_overrides,
    preset,
)
from training.sim.env import Env, Observation, UserState
from training.sim.generate import generate_dataset
from training.sim.logging_policy import LoggingPolicy, sample_slate
from training.sim.world import World, build_world


def tiny(**overrides: object) -> WorldConfig:
    """The tiny preset with ``key=value`` overrides (``mechanisms__X`` for mechanisms.X)."""
    return preset("tiny").with_overrides({k.replace("__", "."): v for k, v in overrides.items()})


@pytest.fixture(scope="module")
def tiny_world() -> World:
    return build_world(preset("tiny"))


def all_candidates(obs: Observation) -> np.ndarray:
    b, c = obs.candidates.shape
    return np.broadcast_to(np.arange(c), (b, c))


# ------------------------------------------------------------------------------------------
# Policies written for the tests
# ------------------------------------------------------------------------------------------


class RandomOrder:
    """Ranks by a random permutation of the candidates."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def rank(self, obs: Observation, k: int) -> np.ndarray:
        return np.argsort(self.rng.random(obs.candidates.shape), axis=1)[:, :k]


def first_occurrence(keys: np.ndarray) -> np.ndarray:
    """``(B, C)`` mask: True where ``keys[b, j]`` does not occur in ``keys[b, :j]``."""
    order = np.argsort(keys, axis=1, kind="stable")
    s = np.take_along_axis(keys, order, axis=1)
    first = np.ones(s.shape, dtype=bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    out = np.empty_like(first)
    np.put_along_axis(out, order, first, axis=1)
    return out


class DistinctShuffle:
    """A random set of candidates with distinct tags and authors, shown in random order.

    No list repeats a tag or an author (so within-list fatigue never applies) and every slot
    gets an exchangeable item, so any difference of CTR between slots is position bias.
    ``ok`` marks the rows where K distinct items existed.
    """

    def __init__(self, world: World, seed: int = 0):
        self.world = world
        self.rng = np.random.default_rng(seed)
        self.ok = np.zeros(0, dtype=bool)

    def rank(self, obs: Observation, k: int) -> np.ndarray:
        b, c = obs.candidates.shape
        perm = np.argsort(self.rng.random((b, c)), axis=1)
        items = np.take_along_axis(obs.candidates, perm, axis=1)
        distinct = first_occurrence(self.world.item_tag[items]) & first_occurrence(
            self.world.item_author[items]
        )
        self.ok = distinct.sum(axis=1) >= k
        chosen = np.take_along_axis(perm, np.argsort(~distinct, axis=1, kind="stable")[:, :k], 1)
        shuffle = np.argsort(self.rng.random((b, k)), axis=1)
        return np.take_along_axis(chosen, shuffle, axis=1)


class BySatisfaction:
    """Shows the K candidates of highest (or lowest) expected satisfaction."""

    def __init__(self, env: Env, best: bool):
        self.env, self.best = env, best

    def rank(self, obs: Observation, k: int) -> np.ndarray:
        sat = self.env.expected(all_candidates(obs), 0)["satisfaction"]
        return np.argsort(-sat if self.best else sat, axis=1)[:, :k]


def run_day(env: Env, policy, day: int, users: np.ndarray | None = None):
    """Drive one day; yields (obs, slate, feedback) per step."""
    k = env.world.cfg.list_size
    obs = env.begin_day(day, users=users)
    while obs is not None:
        slate = policy.rank(obs, k)
        fb = env.step(slate)
        yield obs, slate, fb
        obs = env.observe()


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------


def test_overrides_coerce_command_line_strings() -> None:
    cfg = tiny(n_days="3", click_intercept="1.25", mechanisms__drift="off", kuairand="yes")
    assert cfg.n_days == 3 and isinstance(cfg.n_days, int)
    assert cfg.click_intercept == 1.25
    assert cfg.mechanisms.drift is False and cfg.mechanisms.fatigue_cross is True
    assert cfg.kuairand is True


def test_config_dict_round_trip() -> None:
    cfg = tiny(seed=5, mechanisms__clickbait=False)
    back = WorldConfig.from_dict(cfg.to_dict())
    assert back == cfg
    assert '"clickbait": false' in cfg.to_json()


def test_n_candidates_below_list_size_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"n_candidates=5: must be >= list_size"):
        tiny(n_candidates=5)


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        ({"n_users": -1}, ["n_users", "-1"]),
        ({"n_users": "abc"}, ["n_users", "'abc'"]),
        ({"click_intercept": "high"}, ["click_intercept", "'high'"]),
        ({"list_size": 40}, ["list_size", "40"]),
        ({"n_candidates": 601}, ["n_candidates", "601", "n_items"]),
        ({"logging_epsilon": 1.5}, ["logging_epsilon", "1.5"]),
        ({"fatigue_cross_decay": 1.0}, ["fatigue_cross_decay", "1.0"]),
        ({"n_users": True}, ["n_users", "True"]),
        ({"kuairand": 3}, ["kuairand", "3"]),
        ({"mechanisms.drift": "maybe"}, ["mechanisms.drift", "'maybe'"]),
        ({"mechanisms.teleport": "true"}, ["teleport"]),
        ({"frobnicate": 1}, ["frobnicate"]),
        ({"mechanisms": "x"}, ["mechanisms"]),
    ],
)
def test_invalid_values_name_key_and_value(overrides: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        preset("tiny").with_overrides(overrides)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_float_for_an_int_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="n_users"):
        preset("tiny").with_overrides({"n_users": 2.5})


def test_from_dict_rejects_unknown_keys_and_non_bool_mechanisms() -> None:
    d = preset("tiny").to_dict()
    with pytest.raises(ConfigError, match="unknown keys.*'zzz'"):
        WorldConfig.from_dict({**d, "zzz": 1})
    with pytest.raises(ConfigError, match="mechanisms.drift='no'"):
        WorldConfig.from_dict({**d, "mechanisms": {"drift": "no"}})
    with pytest.raises(ConfigError, match="unknown keys"):
        WorldConfig.from_dict({**d, "mechanisms": {"warp": True}})


def test_preset_and_parse_overrides_errors() -> None:
    with pytest.raises(ConfigError, match="'huge'"):
        preset("huge")
    with pytest.raises(ConfigError, match="'n_users'"):
        parse_overrides(["n_users"])
    assert parse_overrides([" n_users = 5 ", "a=b=c"]) == {"n_users": "5", "a": "b=c"}


def test_long_term_off_switches_exactly_the_long_term_mechanisms() -> None:
    off = long_term_off(preset("tiny")).mechanisms
    assert off == Mechanisms(drift=False, fatigue_cross=False, leave_hazard=False)


# ------------------------------------------------------------------------------------------
# The world
# ------------------------------------------------------------------------------------------


def test_world_build_is_deterministic_in_the_seed(tiny_world: World) -> None:
    again = build_world(preset("tiny"))
    other = build_world(tiny(seed=1))
    for name in ("user_id", "user_z", "item_id", "item_vec", "item_quality", "item_clickbait"):
        np.testing.assert_array_equal(getattr(tiny_world, name), getattr(again, name))
    assert not np.array_equal(tiny_world.user_z, other.user_z)


def test_world_sizes_and_side_tables(tiny_world: World) -> None:
    cfg = preset("tiny")
    assert tiny_world.n_users == cfg.n_users and tiny_world.n_items == cfg.n_items
    assert len(np.unique(tiny_world.user_id)) == cfg.n_users
    assert len(np.unique(tiny_world.item_id)) == cfg.n_items
    np.testing.assert_allclose(np.linalg.norm(tiny_world.user_z, axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(tiny_world.item_vec, axis=1), 1.0)
    assert tiny_world.users_table().num_rows == cfg.n_users
    assert tiny_world.items_table().num_rows == cfg.n_items
    assert tiny_world.topic_size.sum() == cfg.n_items


def test_synthetic_world_without_kuairand() -> None:
    w = build_world(tiny(kuairand=False, n_topics=12))
    assert w.n_topics == 12
    assert set(np.unique(w.item_topic)) <= set(range(12))
    np.testing.assert_array_equal(w.item_tag, w.item_topic + 1)


def test_missing_kuairand_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kuairand_dir"):
        build_world(tiny(kuairand_dir=str(tmp_path / "nowhere")))


def test_homogeneous_users_when_heterogeneity_is_off() -> None:
    w = build_world(tiny(mechanisms__heterogeneous=False))
    for name in ("user_click_bias", "user_patience", "user_like_bias", "user_hate_bias"):
        assert not getattr(w, name).any(), name


def test_switching_clickbait_off_keeps_the_population() -> None:
    on = build_world(preset("tiny"))
    off = build_world(tiny(mechanisms__clickbait=False))
    np.testing.assert_array_equal(on.item_vec, off.item_vec)
    np.testing.assert_array_equal(on.user_id, off.user_id)
    np.testing.assert_array_equal(on.user_z, off.user_z)


# ------------------------------------------------------------------------------------------
# The online interface
# ------------------------------------------------------------------------------------------


def test_step_before_begin_day_is_an_error(tiny_world: World) -> None:
    with pytest.raises(RuntimeError):
        Env(tiny_world).step(np.zeros((1, 10), dtype=np.int64))


def test_step_rejects_malformed_slates_without_advancing(tiny_world: World) -> None:
    env = Env(tiny_world)
    obs = env.begin_day(0, users=np.arange(6))
    b, c = obs.candidates.shape
    good = np.tile(np.arange(10), (b, 1))
    repeated = good.copy()
    repeated[2, 5] = repeated[2, 1]
    bad = [
        ("repeats a candidate", repeated),
        ("slate shape", good[0]),  # 1-D
        ("slate shape", good[:-1]),  # a row short
        ("slate shape", np.tile(np.arange(c + 1) % c, (b, 1))),  # more slots than candidates
        ("outside the candidate set", np.where(good == 9, c, good)),
        ("outside the candidate set", np.where(good == 9, -1, good)),
    ]
    for match, slate in bad:
        with pytest.raises(ValueError, match=match):
            env.step(slate)
    # Nothing moved: the same requests are still waiting, and a good slate is accepted.
    assert env.observe() is obs
    assert (env.observe().request_index == 0).all()
    fb = env.step(good)
    assert fb.click.shape == (b, 10)


def test_same_policy_in_two_envs_gives_identical_feedback(tiny_world: World) -> None:
    """Common random numbers: all randomness is keyed, none is carried in generator state."""
    runs = []
    for _ in range(2):
        env, pol = Env(tiny_world), LoggingPolicy(tiny_world)
        runs.append(list(run_day(env, pol, day=1)))
    assert len(runs[0]) == len(runs[1]) > 1
    for (o1, s1, f1), (o2, s2, f2) in zip(*runs, strict=True):
        np.testing.assert_array_equal(o1.request_id, o2.request_id)
        np.testing.assert_array_equal(o1.candidates, o2.candidates)
        np.testing.assert_array_equal(s1, s2)
        for name, v in f1.aspects().items():
            np.testing.assert_array_equal(v, f2.aspects()[name], err_msg=name)
        np.testing.assert_array_equal(f1.left, f2.left)


def test_different_policies_meet_the_same_users_and_first_requests(tiny_world: World) -> None:
    e1, e2 = Env(tiny_world), Env(tiny_world)
    o1, o2 = e1.begin_day(2), e2.begin_day(2)
    for name in ("users", "session_id", "request_id", "timestamp", "candidates"):
        np.testing.assert_array_equal(getattr(o1, name), getattr(o2, name), err_msg=name)
    f1 = e1.step(LoggingPolicy(tiny_world).rank(o1, 10))
    f2 = e2.step(RandomOrder().rank(o2, 10))
    assert not np.array_equal(f1.click, f2.click)


def test_expected_gives_probabilities_for_every_candidate(tiny_world: World) -> None:
    env = Env(tiny_world)
    obs = env.begin_day(0)
    env.step(LoggingPolicy(tiny_world).rank(obs, 10))
    obs = env.observe()
    cand = all_candidates(obs)
    for pos in (0, 9, np.arange(obs.candidates.shape[1]) % 10):
        e = env.expected(cand, pos)
        assert e["click"].shape == obs.candidates.shape
        for name in ("click", "like", "comment", "follow", "hate"):
            assert np.isfinite(e[name]).all() and (e[name] >= 0).all() and (e[name] <= 1).all()
        assert (e["watch_time"] >= 0).all()
        assert (e["like"] <= e["click"]).all() and (e["follow"] <= e["click"]).all()


def test_expected_click_matches_the_click_rate_of_step(tiny_world: World) -> None:
    """Env.expected is the exact click probability given the list composition."""
    w = tiny_world
    env, pol = Env(w), LoggingPolicy(w)
    k = w.cfg.list_size
    p_sum = var = clicks = 0.0
    for day in range(2):
        obs = env.begin_day(day)
        while obs is not None:
            slate = pol.rank(obs, k)
            items = np.take_along_axis(obs.candidates, slate, axis=1)
            p = env.expected(
                slate,
                np.arange(k),
                prefix_counts(w.item_tag[items]),
                prefix_counts(w.item_author[items]),
            )["click"]
            fb = env.step(slate)
            p_sum += p.sum()
            var += (p * (1 - p)).sum()
            clicks += fb.click.sum()
            obs = env.observe()
    z = (clicks - p_sum) / np.sqrt(var)
    assert abs(z) < 4, (clicks, p_sum, z)


def test_user_state_is_copied_not_shared(tiny_world: World) -> None:
    state = UserState.initial(tiny_world)
    assert state.x is not tiny_world.user_z
    c = state.copy()
    c.x[0] = 0
    assert state.x[0].any()


# ------------------------------------------------------------------------------------------
# The logging policy and its propensities
# ------------------------------------------------------------------------------------------


def reference_propensities(logits: np.ndarray, eps: float, slate: np.ndarray) -> np.ndarray:
    """Per-slot probabilities of the chosen items, computed directly from the definition."""
    b, c = logits.shape
    out = np.empty(slate.shape)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    for i in range(b):
        remaining = np.ones(c, dtype=bool)
        for s, j in enumerate(slate[i]):
            out[i, s] = (1 - eps) * w[i, j] / w[i, remaining].sum() + eps / remaining.sum()
            remaining[j] = False
    return out


def draws(rng: np.random.Generator, n: int, c: int, k: int, r: int = 24):
    return rng.gumbel(size=(n, c)), rng.random((n, k)), rng.random((n, k, r))


def test_slot_zero_frequencies_match_the_logged_propensities() -> None:
    logits = np.array([2.0, 1.0, 0.0, -0.5, 1.5])
    c, k, eps, n = logits.size, 3, 0.2, 60_000
    rng = np.random.default_rng(123)
    chosen, prop = sample_slate(np.tile(logits, (n, 1)), k, eps, *draws(rng, n, c, k))
    softmax = np.exp(logits) / np.exp(logits).sum()
    p0 = (1 - eps) * softmax + eps / c
    freq = np.bincount(chosen[:, 0], minlength=c) / n
    for j in range(c):
        logged = prop[chosen[:, 0] == j, 0]
        np.testing.assert_allclose(logged, p0[j], rtol=1e-12)
    sd = np.sqrt(p0 * (1 - p0) / n)
    assert (np.abs(freq - p0) < 4.5 * sd).all(), (freq, p0)


def test_ordered_slate_frequencies_match_the_product_of_propensities() -> None:
    logits = np.array([1.2, 0.0, -0.7, 0.6])
    c, k, eps, n = logits.size, 2, 0.3, 80_000
    rng = np.random.default_rng(7)
    chosen, prop = sample_slate(np.tile(logits, (n, 1)), k, eps, *draws(rng, n, c, k))
    assert (chosen[:, 0] != chosen[:, 1]).all()
    code = chosen[:, 0] * c + chosen[:, 1]
    slate_prob = prop.prod(axis=1)
    expected = np.zeros(c * c)
    for s in np.unique(code):
        p = slate_prob[code == s]
        np.testing.assert_allclose(p, p[0], rtol=1e-12)  # one probability per ordered slate
        expected[s] = p[0]
    assert len(np.unique(code)) == c * (c - 1)  # every ordered pair occurs
    assert expected.sum() == pytest.approx(1.0, abs=1e-12)  # a proper distribution
    np.testing.assert_allclose(
        expected[code[:1]], reference_propensities(logits[None], eps, chosen[:1]).prod()
    )
    observed = np.bincount(code, minlength=c * c)
    m = expected > 0
    chi2 = (((observed[m] - n * expected[m]) ** 2) / (n * expected[m])).sum()
    assert chi2 < 31.3, chi2  # 99.9% quantile of chi-square with 11 degrees of freedom


def test_propensity_does_not_depend_on_the_component_that_picked() -> None:
    logits = np.array([0.5, -1.0, 2.0, 0.0])
    c, k, eps, n = logits.size, 2, 0.5, 20_000
    rng = np.random.default_rng(3)
    gum, coins, picks = draws(rng, n, c, k)
    chosen, prop = sample_slate(np.tile(logits, (n, 1)), k, eps, gum, coins, picks)
    uniform_first = coins[:, 0] < eps
    code = chosen[:, 0] * c + chosen[:, 1]
    compared = 0
    for s in np.unique(code):
        a = prop[(code == s) & uniform_first]
        b = prop[(code == s) & ~uniform_first]
        if len(a) and len(b):
            np.testing.assert_array_equal(a, np.broadcast_to(b[0], a.shape))
            compared += 1
    assert compared >= 8


def test_without_exploration_the_slate_is_the_gumbel_top_k() -> None:
    rng = np.random.default_rng(11)
    b, c, k = 64, 50, 10
    logits = rng.normal(size=(b, c)) * 2
    gum, coins, picks = draws(rng, b, c, k)
    chosen, prop = sample_slate(logits, k, 0.0, gum, coins, picks)
    np.testing.assert_array_equal(chosen, np.argsort(-(logits + gum), axis=1)[:, :k])
    np.testing.assert_allclose(prop, reference_propensities(logits, 0.0, chosen), rtol=1e-10)


def test_pure_exploration_has_uniform_propensities() -> None:
    rng = np.random.default_rng(5)
    b, c, k = 32, 20, 5
    chosen, prop = sample_slate(rng.normal(size=(b, c)), k, 1.0, *draws(rng, b, c, k))
    np.testing.assert_allclose(prop, np.broadcast_to(1.0 / (c - np.arange(k)), (b, k)))
    assert all(len(set(row)) == k for row in chosen)


def test_sample_slate_rejects_more_slots_than_candidates() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="cannot fill 5 slots from 4"):
        sample_slate(np.zeros((1, 4)), 5, 0.1, *draws(rng, 1, 4, 5))


def test_logging_policy_propensities_match_the_definition(tiny_world: World) -> None:
    env, pol = Env(tiny_world), LoggingPolicy(tiny_world)
    obs = env.begin_day(0)
    logits = pol.scores(obs).astype(np.float64) / pol.temperature
    slate, prop = pol.sample(obs, 10)
    # Scores are float32, so the running normaliser carries float32 rounding (~1e-5).
    ref = reference_propensities(logits, pol.epsilon, slate)
    np.testing.assert_allclose(prop, ref, rtol=1e-4)
    # The slot-0 distribution over all candidates is proper and the logged value is its entry.
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    c = logits.shape[1]
    p0 = (1 - pol.epsilon) * w / w.sum(axis=1, keepdims=True) + pol.epsilon / c
    np.testing.assert_allclose(p0.sum(axis=1), 1.0)
    np.testing.assert_allclose(prop[:, 0], np.take_along_axis(p0, slate[:, :1], 1)[:, 0], rtol=1e-4)


# ------------------------------------------------------------------------------------------
# Calibration on the default preset
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_feedback_rates_and_watch_time_on_the_default_preset() -> None:
    w = build_world(preset("default"))
    env, pol = Env(w), LoggingPolicy(w)
    totals: dict[str, float] = {}
    n = 0
    watch, duration = [], []
    for day in range(2):
        for obs, slate, fb in run_day(env, pol, day, users=np.arange(5000)):
            for name, v in fb.aspects().items():
                totals[name] = totals.get(name, 0.0) + float(v.sum())
            n += slate.size
            watch.append(fb.watch_time.ravel())
            duration.append(w.item_duration[np.take_along_axis(obs.candidates, slate, 1)].ravel())
    rate = {name: v / n for name, v in totals.items()}
    assert n > 300_000
    assert 0.40 <= rate["click"] <= 0.60, rate
    assert 0.005 <= rate["like"] <= 0.02, rate
    assert 0.0015 <= rate["comment"] <= 0.006, rate
    assert 0.0002 <= rate["follow"] <= 0.001, rate
    assert 0.0001 <= rate["hate"] <= 0.0005, rate
    # Watch time grows with the item's duration.
    wt, bucket = np.concatenate(watch), bucketise(np.concatenate(duration), DURATION_EDGES_S)
    ids = np.unique(bucket)
    mean_wt = np.array([wt[bucket == i].mean() for i in ids])
    assert len(ids) >= 5
    assert np.corrcoef(ids, mean_wt)[0, 1] > 0.5, mean_wt
    assert mean_wt[-1] > 3 * mean_wt[0], mean_wt


# ------------------------------------------------------------------------------------------
# Mechanisms: each visible when on, gone when off
# ------------------------------------------------------------------------------------------


def slot_ctr(cfg: WorldConfig, days: int = 2) -> np.ndarray:
    w = build_world(cfg)
    env, pol = Env(w), DistinctShuffle(w, seed=0)
    clicks, n = np.zeros(cfg.list_size), 0
    for day in range(days):
        for _, _, fb in run_day(env, pol, day, users=np.arange(cfg.n_users)):
            clicks += fb.click[pol.ok].sum(axis=0)
            n += int(pol.ok.sum())
    assert n > 10_000
    return clicks / n


def test_position_bias_lowers_ctr_with_position() -> None:
    ctr = slot_ctr(tiny(n_users=3000))
    assert ctr[0] > ctr[-1] + 0.2, ctr
    assert (np.diff(ctr) < 0.01).all(), ctr  # (nearly) monotone
    # Slots see exchangeable items, so the CTR ratio is the examination ratio (K) ** -power.
    assert ctr[-1] / ctr[0] == pytest.approx(10 ** -preset("tiny").position_bias_power, abs=0.04)


def test_without_position_bias_ctr_is_flat_over_slots() -> None:
    ctr = slot_ctr(tiny(n_users=3000, mechanisms__position_bias=False))
    assert abs(ctr[0] - ctr[-1]) < 0.02, ctr
    assert np.abs(ctr - ctr.mean()).max() < 0.02, ctr


def test_expected_click_falls_with_same_tag_and_author_before() -> None:
    for on in (True, False):
        w = build_world(tiny(mechanisms__fatigue_list=on))
        env = Env(w)
        obs = env.begin_day(0)
        cand = all_candidates(obs)
        base = env.expected(cand, 3)["click"]
        tag3 = env.expected(cand, 3, same_tag_before=3)["click"]
        auth1 = env.expected(cand, 3, same_author_before=1)["click"]
        if on:
            assert (tag3 < base).all() and (auth1 < base).all()
            assert tag3.mean() < 0.7 * base.mean()
        else:
            np.testing.assert_array_equal(tag3, base)
            np.testing.assert_array_equal(auth1, base)


def repeat_vs_varied_slates(w: World, obs: Observation, k: int):
    """Two slates per request showing the same items, with the same target item at slot 4.

    ``rep``: four items of the request's most frequent tag, then a fifth one (the target).
    ``var``: four items of other tags (and other authors than the target), then the target.
    """
    b = obs.batch_size
    rep = np.tile(np.arange(k), (b, 1))
    var = rep.copy()
    ok = np.zeros(b, dtype=bool)
    for i in range(b):
        tags, auth = w.item_tag[obs.candidates[i]], w.item_author[obs.candidates[i]]
        values, counts = np.unique(tags, return_counts=True)
        same = np.flatnonzero(tags == values[np.argmax(counts)])
        if len(same) < 5:
            continue
        target = same[4]
        other = np.flatnonzero((tags != tags[target]) & (auth != auth[target]))[: k - 5]
        if len(other) < k - 5:
            continue
        ok[i] = True
        rep[i] = np.r_[same[:4], target, other]
        var[i] = np.r_[other[:4], target, same[:4], other[4:]]
    return rep, var, ok


def target_clicks(cfg: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """Clicks on the target at slot 4 in first requests, after repeats vs after variety."""
    w = build_world(cfg)
    rep_clicks, var_clicks = [], []
    for day in range(2):
        e_rep, e_var = Env(w), Env(w)
        users = np.arange(cfg.n_users)
        o_rep, o_var = e_rep.begin_day(day, users), e_var.begin_day(day, users)
        np.testing.assert_array_equal(o_rep.candidates, o_var.candidates)
        rep, var, ok = repeat_vs_varied_slates(w, o_rep, cfg.list_size)
        rep_clicks.append(e_rep.step(rep).click[ok, 4])
        var_clicks.append(e_var.step(var).click[ok, 4])
    rep_c, var_c = np.concatenate(rep_clicks), np.concatenate(var_clicks)
    assert rep_c.size > 4000
    return rep_c, var_c


def test_fatigue_within_list_lowers_ctr_of_repeats() -> None:
    rep, var = target_clicks(tiny(n_users=3000))
    assert rep.mean() < var.mean() - 0.1, (rep.mean(), var.mean())


def test_without_list_fatigue_repeats_click_like_the_rest() -> None:
    rep, var = target_clicks(tiny(n_users=3000, mechanisms__fatigue_list=False))
    # Same item, same slot, same state, same uniforms: identical unless fatigue acts.
    assert abs(rep.mean() - var.mean()) < 0.01
    np.testing.assert_array_equal(rep, var)


def top_topic_slate(w: World, obs: Observation, k: int, avoid: bool):
    """As many items of the request's most frequent topic as possible (or as few)."""
    topics = w.item_topic[obs.candidates]
    top = np.array([np.bincount(r, minlength=w.n_topics).argmax() for r in topics])
    is_top = topics == top[:, None]
    slate = np.argsort(is_top if avoid else ~is_top, axis=1, kind="stable")[:, :k]
    return slate, top


def next_request_expectations(cfg: WorldConfig, avoid: bool):
    """Show (or avoid) the top topic in request 0; expected clicks of request 1."""
    w = build_world(cfg)
    env = Env(w)
    obs = env.begin_day(0, users=np.arange(cfg.n_users))
    slate, top = top_topic_slate(w, obs, cfg.list_size, avoid)
    shown_topics = w.item_topic[np.take_along_axis(obs.candidates, slate, 1)]
    env.step(slate)
    nxt = env.observe()
    rows = np.searchsorted(obs.users, nxt.users)
    e = env.expected(all_candidates(nxt), 0)
    return w, nxt, e, top[rows], shown_topics[rows]


def test_cross_request_fatigue_lowers_the_shown_topic_next_request() -> None:
    """Same trajectory in two worlds that differ only in the switch (the rest all on)."""
    w, o_on, e_on, top, shown = next_request_expectations(preset("tiny"), avoid=False)
    _, o_off, e_off, _, _ = next_request_expectations(
        tiny(mechanisms__fatigue_cross=False), avoid=False
    )
    # Request 0 cannot differ (no load yet): same survivors, same next candidates.
    np.testing.assert_array_equal(o_on.users, o_off.users)
    np.testing.assert_array_equal(o_on.candidates, o_off.candidates)
    topics = w.item_topic[o_on.candidates]
    is_top = topics == top[:, None]
    never_shown = ~(topics[:, :, None] == shown[:, None, :]).any(axis=2)
    assert is_top.sum() > 200 and never_shown.sum() > 200
    assert (e_on["click"][is_top] < e_off["click"][is_top]).all()
    assert e_on["click"][is_top].mean() < 0.8 * e_off["click"][is_top].mean()
    np.testing.assert_allclose(e_on["click"][never_shown], e_off["click"][never_shown])


@pytest.mark.parametrize("on", [True, False])
def test_cross_request_fatigue_depends_on_what_was_shown(on: bool) -> None:
    """Showing a topic vs avoiding it (drift off, so both arms keep the same interests)."""
    cfg = tiny(mechanisms__drift=False, mechanisms__fatigue_cross=on)
    w, o_a, e_a, top, _ = next_request_expectations(cfg, avoid=False)
    _, o_b, e_b, _, _ = next_request_expectations(cfg, avoid=True)
    both = np.intersect1d(o_a.users, o_b.users)
    ia, ib = np.searchsorted(o_a.users, both), np.searchsorted(o_b.users, both)
    np.testing.assert_array_equal(o_a.candidates[ia], o_b.candidates[ib])
    is_top = w.item_topic[o_a.candidates[ia]] == top[ia][:, None]
    assert is_top.sum() > 200
    shown, avoided = e_a["click"][ia][is_top], e_b["click"][ib][is_top]
    if on:
        assert shown.mean() < 0.8 * avoided.mean(), (shown.mean(), avoided.mean())
    else:
        np.testing.assert_allclose(shown, avoided)


def requests_per_session(cfg: WorldConfig, best: bool) -> float:
    w = build_world(cfg)
    env = Env(w)
    pol = BySatisfaction(env, best)
    sessions = requests = max_index = 0
    for obs, _, _ in run_day(env, pol, 0):
        sessions = sessions or obs.batch_size  # every session is in the first step
        requests += obs.batch_size
        max_index = max(max_index, int(obs.request_index.max()))
    assert max_index < cfg.max_requests
    assert sessions > 500
    return requests / sessions


def test_leave_hazard_keeps_satisfied_users_longer() -> None:
    cfg = tiny(n_users=2000)
    good, bad = requests_per_session(cfg, True), requests_per_session(cfg, False)
    assert good > bad + 2.0, (good, bad)


def test_without_leave_hazard_session_length_ignores_satisfaction() -> None:
    cfg = tiny(n_users=2000, mechanisms__leave_hazard=False)
    good, bad = requests_per_session(cfg, True), requests_per_session(cfg, False)
    assert good == pytest.approx(bad, rel=0.03), (good, bad)


def test_drift_moves_interest_away_from_the_base_and_back_between_days() -> None:
    w = build_world(preset("tiny"))
    env = Env(w)
    active = env.active_users(0)
    for _ in run_day(env, LoggingPolicy(w), 0):
        pass
    cos = (env.state.x * w.user_z).sum(axis=1)
    assert cos[active].mean() < 0.995, cos[active].mean()
    assert (cos[active] < 1 - 1e-9).mean() > 0.5
    idle = np.setdiff1d(np.arange(w.n_users), active)
    np.testing.assert_array_equal(env.state.x[idle], w.user_z[idle])
    np.testing.assert_allclose(np.linalg.norm(env.state.x, axis=1), 1.0)
    # Between sessions interest partly reverts toward the base.
    env.begin_day(1, users=active)
    cos_next = (env.state.x[active] * w.user_z[active]).sum(axis=1)
    assert (cos_next >= cos[active] - 1e-12).all()
    assert cos_next.mean() > cos[active].mean()


def test_without_drift_interest_stays_at_the_base() -> None:
    w = build_world(tiny(mechanisms__drift=False))
    env = Env(w)
    for day in range(2):
        for _ in run_day(env, LoggingPolicy(w), day):
            pass
    np.testing.assert_array_equal(env.state.x, w.user_z)


def clickbait_contrast(cfg: WorldConfig, flags: np.ndarray) -> dict[str, float]:
    """Mean expected click/satisfaction/hate of flagged candidates minus the others."""
    w = build_world(cfg)
    env = Env(w)
    obs = env.begin_day(0, users=np.arange(cfg.n_users))
    e = env.expected(all_candidates(obs), 0)
    cb = flags[obs.candidates] > 0
    assert cb.sum() > 1000 and (~cb).sum() > 1000
    return {k: float(e[k][cb].mean() - e[k][~cb].mean()) for k in ("click", "satisfaction", "hate")}


def test_clickbait_items_attract_clicks_but_disappoint() -> None:
    cfg = tiny(n_users=1000)
    flags = build_world(cfg).item_clickbait
    assert 0.08 < flags.mean() < 0.25
    d = clickbait_contrast(cfg, flags)
    assert d["click"] > 0.04, d  # appeal +0.6 on the logit: about +0.07 in click probability
    assert d["satisfaction"] < -1.5, d  # clickbait_satisfaction 1.8
    assert d["hate"] > 0, d


def test_without_clickbait_there_are_no_clickbait_items() -> None:
    cfg = tiny(n_users=1000)
    off = cfg.with_overrides({"mechanisms.clickbait": False})
    assert not build_world(off).item_clickbait.any()
    # The items that were clickbait in the on-world are ordinary in the off-world.
    d = clickbait_contrast(off, build_world(cfg).item_clickbait)
    assert abs(d["click"]) < 0.04, d
    assert abs(d["satisfaction"]) < 0.5, d


# ------------------------------------------------------------------------------------------
# Generated logs: determinism and logged propensities
# ------------------------------------------------------------------------------------------

SMALL = {"n_users": 100, "n_days": 3}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "small"
    generate_dataset(tiny(**SMALL), out, progress=False)
    return out


def test_same_config_gives_identical_datasets(small_dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_dataset(tiny(**SMALL), again, progress=False)
    a, b = Dataset.open(small_dataset), Dataset.open(again)
    assert a.read().num_rows > 10_000
    assert a.read().equals(b.read())
    assert a.users().equals(b.users()) and a.items().equals(b.items())
    strip = {"seconds", "code_version"}
    assert {k: v for k, v in a.meta.items() if k not in strip} == {
        k: v for k, v in b.meta.items() if k not in strip
    }


def test_another_seed_gives_another_dataset(small_dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_dataset(tiny(seed=1, **SMALL), other, progress=False)
    a, b = Dataset.open(small_dataset).read(), Dataset.open(other).read()
    assert not a.equals(b)
    assert not np.array_equal(
        a.column("click").to_numpy(zero_copy_only=False)[:1000],
        b.column("click").to_numpy(zero_copy_only=False)[:1000],
    )


def test_logged_propensities_are_valid_per_request(small_dataset: Path) -> None:
    ds = Dataset.open(small_dataset)
    t = ds.read()
    shown = t.filter(pc.greater_equal(t.column("position"), 0))
    rid = shown.column("request_id").to_numpy()
    pos = shown.column("position").to_numpy().astype(np.int64)
    prop = shown.column("propensity").to_numpy()
    eps, c = ds.meta["logging_policy"]["epsilon"], ds.meta["n_candidates"]
    assert (prop >= eps / (c - pos) * (1 - 1e-9)).all()  # the uniform share is a floor
    assert (prop <= (1 - eps) + eps / (c - pos) + 1e-12).all()
    _, inverse = np.unique(rid, return_inverse=True)
    log_slate = np.bincount(inverse, weights=np.log(prop))
    assert ((log_slate < 0) & np.isfinite(log_slate)).all()  # product in (0, 1]
    assert (np.bincount(inverse) == ds.meta["list_size"]).all()


def test_logged_rows_replay_the_simulation(small_dataset: Path) -> None:
    """The rows of day 0 hold, at (request, position), the item, propensity and click that a
    fresh replay of the logging policy in the same world produces."""
    ds = Dataset.open(small_dataset)
    w = build_world(tiny(**SMALL))
    env, pol = Env(w), LoggingPolicy(w)
    keys, items, props, clicks = [], [], [], []
    obs = env.begin_day(0)
    while obs is not None:
        slate, prop = pol.sample(obs, w.cfg.list_size)
        fb = env.step(slate)
        k = slate.shape[1]
        keys.append((obs.request_id[:, None] * 100 + np.arange(k)).ravel())
        items.append(np.take_along_axis(obs.candidate_ids, slate, 1).ravel())
        props.append(prop.ravel())
        clicks.append(fb.click.ravel())
        obs = env.observe()
    order = np.argsort(np.concatenate(keys))
    day0 = pc.field("session_id") < w.n_users  # session_id = day * n_users + user index
    t = ds.read().filter(day0 & (pc.field("position") >= 0))
    logged_keys = t.column("request_id").to_numpy() * 100 + t.column("position").to_numpy()
    lo = np.argsort(logged_keys)
    np.testing.assert_array_equal(logged_keys[lo], np.concatenate(keys)[order])
    np.testing.assert_array_equal(t.column("item_id").to_numpy()[lo], np.concatenate(items)[order])
    np.testing.assert_array_equal(
        t.column("propensity").to_numpy()[lo], np.concatenate(props)[order]
    )
    np.testing.assert_array_equal(
        t.column("click").to_numpy()[lo], np.concatenate(clicks)[order].astype(np.int8)
    )


# ------------------------------------------------------------------------------------------
# CLI: bad configuration ends with status 2 and writes nothing
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "n_users=-1"], "n_users=-1"),
        (["--set", "n_users=many"], "n_users='many'"),
        (["--set", "frobnicate=1"], "frobnicate"),
        (["--set", "mechanisms.drift=perhaps"], "mechanisms.drift"),
        (["--set", "n_candidates=3"], "n_candidates=3"),
        (["--set", "n_users"], "n_users"),
        (["--preset", "enormous"], "enormous"),
    ],
)
def test_cli_simulate_bad_config_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    out = tmp_path / "ds"
    status = cli.main(["simulate", *args, "--out", str(out), "--no-progress"])
    assert status == 2
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    assert "error" in err and needle in err
    assert "Traceback" not in err


def test_cli_simulate_refuses_an_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["simulate", "--out", str(out), "--no-progress"]) == 2
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_synthetic_world_with_empty_topics_generates_without_numeric_warnings(
    tmp_path: Path,
) -> None:
    """The tiny world without the KuaiRand tables has topics with no items: candidate
    retrieval took a modulo by their size 0 (a warning, and an index past the item table if
    the empty topic was the last one). Their slots are drawn uniformly; nothing divides by 0."""
    cfg = tiny(kuairand=False)
    world = build_world(cfg)
    assert (world.topic_size == 0).any(), "the case this test is about no longer arises"
    generate_dataset(cfg, tmp_path / "w", progress=False, preset_name="tiny")
    assert (tmp_path / "w" / "dataset.json").is_file()
