"""Tests for training.eval.metrics: AUC, RelaImpr, GAUC, NCIS, bootstrap and mean intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.eval.metrics import (
    NCISResult,
    auc,
    bootstrap_ci,
    gauc,
    mean_ci,
    ncis,
    ncis_per_aspect,
    rela_impr,
    slate_log_prob,
)

# ------------------------------------------------------------------------------------------
# AUC
# ------------------------------------------------------------------------------------------


def test_auc_hand_example() -> None:
    # positives: 0.9, 0.4, 0.8   negatives: 0.6, 0.1   -> 3 * 2 = 6 pairs
    # 0.9 beats 0.6 and 0.1 (2); 0.4 beats 0.1 only (1); 0.8 beats 0.6 and 0.1 (2) -> 5 / 6
    y = np.array([1, 1, 0, 1, 0])
    s = np.array([0.9, 0.4, 0.6, 0.8, 0.1])
    assert auc(y, s) == pytest.approx(5 / 6, abs=1e-12)
    # order-only: a monotone transform leaves it unchanged; reversing the scores gives 1 - AUC
    assert auc(y, np.log(s)) == pytest.approx(5 / 6, abs=1e-12)
    assert auc(y, -s) == pytest.approx(1 / 6, abs=1e-12)


def test_auc_ties_count_half() -> None:
    # positives: 0.5, 0.7   negatives: 0.5, 0.2   -> 4 pairs
    # 0.5 vs 0.5 tie (0.5), 0.5 vs 0.2 win (1), 0.7 beats both (2) -> 3.5 / 4
    y = np.array([1, 0, 1, 0])
    s = np.array([0.5, 0.5, 0.7, 0.2])
    assert auc(y, s) == pytest.approx(0.875, abs=1e-12)
    # all scores tied: every pair is half -> 0.5
    assert auc(np.array([1, 0, 0, 1, 0]), np.zeros(5)) == pytest.approx(0.5, abs=1e-12)


def test_auc_weighted_hand_example() -> None:
    # positive (s=0.9, w=2) beats negative 0.1 (w=1), loses to negative 0.95 (w=3)
    # weighted pairs: 2*1 won, 2*3 lost -> 2 / (2 * 4) = 0.25
    y = np.array([1, 0, 0])
    s = np.array([0.9, 0.1, 0.95])
    w = np.array([2.0, 1.0, 3.0])
    assert auc(y, s, sample_weight=w) == pytest.approx(0.25, abs=1e-12)
    # integer weights == repeating rows
    rep = np.repeat(np.arange(3), [2, 1, 3])
    assert auc(y[rep], s[rep]) == pytest.approx(0.25, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    y = rng.integers(0, 2, size=n)
    # continuous scores, and coarse scores with many ties
    s_cont = rng.normal(size=n) + 0.7 * y
    s_ties = np.round(s_cont, 1)
    w = rng.uniform(0.0, 3.0, size=n)
    for s in (s_cont, s_ties):
        assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-10)
        assert auc(y, s, sample_weight=w) == pytest.approx(
            roc_auc_score(y, s, sample_weight=w), abs=1e-10
        )
    # bool labels are accepted
    assert auc(y.astype(bool), s_ties) == pytest.approx(roc_auc_score(y, s_ties), abs=1e-10)


def test_auc_errors() -> None:
    s = np.array([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one class"):
        auc(np.array([1, 1, 1]), s)
    with pytest.raises(ValueError, match="one class"):
        auc(np.array([0, 0, 0]), s)
    with pytest.raises(ValueError, match="one class"):  # negatives carry zero weight
        auc(np.array([1, 0, 1]), s, sample_weight=np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="same length"):
        auc(np.array([1, 0]), s)
    with pytest.raises(ValueError, match="NaN"):
        auc(np.array([1, 0, 1]), np.array([0.1, np.nan, 0.3]))
    with pytest.raises(ValueError, match="0 and 1"):
        auc(np.array([1, 2, 0]), s)
    with pytest.raises(ValueError, match="non-negative"):
        auc(np.array([1, 0, 1]), s, sample_weight=np.array([1.0, -1.0, 1.0]))


# ------------------------------------------------------------------------------------------
# RelaImpr
# ------------------------------------------------------------------------------------------


def test_rela_impr_hand_example() -> None:
    # (0.26 / 0.25 - 1) * 100 = 4.0
    assert rela_impr(0.76, 0.75) == pytest.approx(4.0, abs=1e-9)
    # (0.2 / 0.25 - 1) * 100 = -20.0
    assert rela_impr(0.70, 0.75) == pytest.approx(-20.0, abs=1e-9)
    assert rela_impr(0.75, 0.75) == pytest.approx(0.0, abs=1e-12)


def test_rela_impr_random_base_raises() -> None:
    with pytest.raises(ValueError, match="0.5"):
        rela_impr(0.7, 0.5)


# ------------------------------------------------------------------------------------------
# GAUC
# ------------------------------------------------------------------------------------------


def test_gauc_hand_example() -> None:
    # user 7 (3 rows): pos 0.9 vs negs 0.5 (win), 0.95 (loss) -> AUC 1/2
    # user 8 (2 rows): only positives -> skipped
    # user 9 (5 rows): pos 0.3 vs negs 0.3 (tie 0.5), 0.1 (1), 0.9 (0)  -> 1.5
    #                  pos 0.8 vs negs 0.3 (1), 0.1 (1), 0.9 (0)         -> 2
    #                  -> 3.5 / 6 = 7/12
    # GAUC = (3 * 1/2 + 5 * 7/12) / (3 + 5) = 53/96
    rows = [
        (9, 1, 0.3),
        (7, 1, 0.9),
        (8, 1, 0.2),
        (9, 0, 0.3),
        (7, 0, 0.5),
        (9, 1, 0.8),
        (8, 1, 0.6),
        (9, 0, 0.1),
        (7, 0, 0.95),
        (9, 0, 0.9),
    ]
    u = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    s = np.array([r[2] for r in rows])
    value, n_users = gauc(u, y, s)
    assert n_users == 2
    assert value == pytest.approx(53 / 96, abs=1e-12)
    # string user ids give the same answer
    value_str, n_str = gauc(np.array([f"user{x}" for x in u]), y, s)
    assert (value_str, n_str) == (pytest.approx(53 / 96, abs=1e-12), 2)


def _gauc_naive(u: np.ndarray, y: np.ndarray, s: np.ndarray) -> tuple[float, int]:
    num = den = 0.0
    used = 0
    for user in np.unique(u):
        m = u == user
        if y[m].min() == y[m].max():
            continue
        num += m.sum() * roc_auc_score(y[m], s[m])
        den += m.sum()
        used += 1
    return num / den, used


@pytest.mark.parametrize("seed", [0, 1])
def test_gauc_matches_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5000
    u = rng.integers(0, 300, size=n)  # includes users with one row / one class
    y = (rng.random(n) < 0.3).astype(int)
    s = np.round(rng.normal(size=n) + 0.5 * y, 1)  # many ties within users
    value, used = gauc(u, y, s)
    ref_value, ref_used = _gauc_naive(u, y, s)
    assert used == ref_used
    assert value == pytest.approx(ref_value, abs=1e-10)


def test_gauc_single_user_equals_auc() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=500)
    s = np.round(rng.normal(size=500), 1)
    value, used = gauc(np.zeros(500, dtype=int), y, s)
    assert used == 1
    assert value == pytest.approx(auc(y, s), abs=1e-12)


def test_gauc_errors() -> None:
    with pytest.raises(ValueError, match="no user"):
        gauc(np.array([1, 1, 2]), np.array([1, 1, 0]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="same length"):
        gauc(np.array([1, 1]), np.array([1, 0, 0]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN"):
        gauc(np.array([1, 1]), np.array([1, 0]), np.array([0.1, np.nan]))


# ------------------------------------------------------------------------------------------
# NCIS
# ------------------------------------------------------------------------------------------


def test_slate_log_prob_is_sum_of_positions() -> None:
    p = np.array([[0.5, 0.25, 1.0], [0.1, 0.2, 0.5]])
    out = slate_log_prob(np.log(p))
    assert out.shape == (2,)
    np.testing.assert_allclose(np.exp(out), [0.125, 0.01], rtol=1e-12)
    with pytest.raises(ValueError, match="<= 0"):
        slate_log_prob(np.array([[0.1, -0.2]]))
    with pytest.raises(ValueError, match="NaN"):
        slate_log_prob(np.array([[np.nan, -0.2]]))


def test_ncis_cap_not_binding() -> None:
    # ratios pi/mu = [2, 0.5, 4], cap 10 -> w = [2, 0.5, 4], sum w = 6.5
    # V = (2*1 + 0.5*0 + 4*3) / 6.5 = 14 / 6.5;  ESS = 6.5^2 / (4 + 0.25 + 16) = 42.25 / 20.25
    pi = np.array([0.2, 0.1, 0.4])
    mu = np.array([0.1, 0.2, 0.1])
    r = np.array([1.0, 0.0, 3.0])
    res = ncis(pi, mu, r, cap=10.0)
    assert isinstance(res, NCISResult)
    assert res.value == pytest.approx(14 / 6.5, abs=1e-12)
    assert res.ess == pytest.approx(42.25 / 20.25, abs=1e-12)
    assert res.n == 3
    assert res.cap == 10.0
    assert res.clipped_fraction == 0.0


def test_ncis_cap_binding() -> None:
    # ratios [2, 0.5, 4], cap 3 -> w = [2, 0.5, 3], sum w = 5.5
    # V = (2*1 + 0 + 3*3) / 5.5 = 2.0;  ESS = 5.5^2 / (4 + 0.25 + 9) = 30.25 / 13.25
    pi = np.array([0.2, 0.1, 0.4])
    mu = np.array([0.1, 0.2, 0.1])
    r = np.array([1.0, 0.0, 3.0])
    res = ncis(pi, mu, r, cap=3.0)
    assert res.value == pytest.approx(2.0, abs=1e-12)
    assert res.ess == pytest.approx(30.25 / 13.25, abs=1e-12)
    assert res.clipped_fraction == pytest.approx(1 / 3, abs=1e-12)
    with pytest.raises(AttributeError):  # frozen
        res.value = 0.0  # type: ignore[misc]


def test_ncis_ess_hand_example() -> None:
    # w = [1, 3]: ESS = (1 + 3)^2 / (1 + 9) = 1.6; equal weights: ESS = n
    res = ncis(np.array([0.1, 0.3]), np.array([0.1, 0.1]), np.array([0.0, 1.0]), cap=100.0)
    assert res.ess == pytest.approx(1.6, abs=1e-12)
    res_eq = ncis(np.full(5, 0.2), np.full(5, 0.1), np.arange(5.0), cap=100.0)
    assert res_eq.ess == pytest.approx(5.0, abs=1e-12)


def test_ncis_on_policy_is_plain_mean() -> None:
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.01, 1.0, size=1000)
    r = rng.exponential(size=1000)
    res = ncis(mu.copy(), mu, r, cap=5.0)
    assert res.value == pytest.approx(float(r.mean()), abs=1e-12)
    assert res.ess == pytest.approx(1000.0, abs=1e-9)
    assert res.clipped_fraction == 0.0


def test_ncis_per_aspect_matches_ncis() -> None:
    rng = np.random.default_rng(1)
    pi = rng.uniform(0.0, 1.0, size=200)
    mu = rng.uniform(0.05, 1.0, size=200)
    rewards = {"click": rng.integers(0, 2, size=200), "watch_s": rng.exponential(30.0, size=200)}
    out = ncis_per_aspect(pi, mu, rewards, cap=4.0)
    assert list(out) == ["click", "watch_s"]
    for name, r in rewards.items():
        assert out[name] == ncis(pi, mu, r, cap=4.0)


def test_ncis_errors() -> None:
    with pytest.raises(ValueError, match="strictly positive"):
        ncis(np.array([0.1]), np.array([0.0]), np.array([1.0]), cap=2.0)
    with pytest.raises(ValueError, match="cap"):
        ncis(np.array([0.1]), np.array([0.1]), np.array([1.0]), cap=0.0)
    with pytest.raises(ValueError, match="zero"):
        ncis(np.array([0.0, 0.0]), np.array([0.1, 0.2]), np.array([1.0, 0.0]), cap=2.0)
    with pytest.raises(ValueError, match="length"):
        ncis(np.array([0.1, 0.2]), np.array([0.1, 0.2]), np.array([1.0]), cap=2.0)


# ------------------------------------------------------------------------------------------
# bootstrap_ci
# ------------------------------------------------------------------------------------------


def test_bootstrap_contains_point_and_is_deterministic() -> None:
    x = np.random.default_rng(0).normal(loc=2.0, size=400)
    a = bootstrap_ci(np.mean, x, n_boot=300, rng=np.random.default_rng(42))
    b = bootstrap_ci(np.mean, x, n_boot=300, rng=np.random.default_rng(42))
    c = bootstrap_ci(np.mean, x, n_boot=300, rng=np.random.default_rng(43))
    point, low, high = a
    assert point == pytest.approx(float(x.mean()), abs=1e-12)
    assert low < point < high
    # roughly +- 1.96 / sqrt(400) = +- 0.098 around the mean
    assert 0.05 < high - low < 0.3
    assert a == b
    assert a != c


def test_bootstrap_multiple_arrays_share_indices() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=600)
    s = rng.normal(size=600) + y
    point, low, high = bootstrap_ci(auc, y, s, n_boot=100, rng=np.random.default_rng(0))
    assert point == pytest.approx(auc(y, s), abs=1e-12)
    assert low < point < high

    # if indices were not shared, the pairs (x, x) would be broken and the difference non-zero
    x = rng.normal(size=50)
    _, lo, hi = bootstrap_ci(
        lambda a, b: float(np.sum(a - b)), x, x.copy(), n_boot=50, rng=np.random.default_rng(0)
    )
    assert lo == 0.0 and hi == 0.0


def test_bootstrap_groups_resample_whole_groups() -> None:
    # group "a": 1 row of value 0; group "b": 3 rows of value 1.
    # A cluster resample draws 2 groups: {a,a} -> mean 0, {a,b} -> 3/4, {b,b} -> 1,
    # with resample sizes 2, 4, 6. A row resample (4 rows) would also give 1/4 and 1/2.
    values = np.array([0.0, 1.0, 1.0, 1.0])
    groups = np.array(["a", "b", "b", "b"])
    seen_means: list[float] = []
    seen_sizes: list[int] = []

    def stat(v: np.ndarray) -> float:
        seen_means.append(float(v.mean()))
        seen_sizes.append(int(v.shape[0]))
        return float(v.mean())

    point, low, high = bootstrap_ci(
        stat, values, n_boot=200, rng=np.random.default_rng(1), groups=groups
    )
    assert point == pytest.approx(0.75)
    boot_means = seen_means[1:]  # first call is the point estimate
    boot_sizes = seen_sizes[1:]
    assert len(boot_means) == 200
    assert set(np.round(boot_means, 12)) == {0.0, 0.75, 1.0}
    assert set(boot_sizes) == {2, 4, 6}
    assert low == 0.0 and high == 1.0

    # contrast: the row bootstrap hits the values a cluster bootstrap never produces
    seen_means.clear()
    bootstrap_ci(stat, values, n_boot=200, rng=np.random.default_rng(1))
    assert {0.25, 0.5} <= set(np.round(seen_means[1:], 12))


def test_bootstrap_groups_keep_rows_of_group_together() -> None:
    # each group's rows carry its id; in every resample each id appears a multiple of its size
    sizes = np.array([1, 2, 3, 5])
    gid = np.repeat(np.arange(4), sizes)
    perm = np.random.default_rng(0).permutation(gid.shape[0])
    gid = gid[perm]  # groups need not be contiguous

    def stat(g: np.ndarray) -> float:
        counts = np.bincount(g, minlength=4)
        assert np.all(counts % sizes == 0)
        assert (counts // sizes).sum() == 4  # 4 groups drawn
        return float(g.mean())

    bootstrap_ci(stat, gid, n_boot=100, rng=np.random.default_rng(2), groups=gid)


def test_bootstrap_errors() -> None:
    x = np.arange(5.0)
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(np.mean, x, rng=np.random.default_rng(0), groups=np.arange(4))
    with pytest.raises(ValueError, match="same length"):
        bootstrap_ci(lambda a, b: 0.0, x, np.arange(4.0), rng=np.random.default_rng(0))
    with pytest.raises(TypeError):
        bootstrap_ci(np.mean, x)  # type: ignore[call-arg]  # rng is required


# ------------------------------------------------------------------------------------------
# mean_ci
# ------------------------------------------------------------------------------------------


def test_mean_ci_hand_example() -> None:
    # x = 1..5: mean 3, sample variance 2.5, sd / sqrt(n) = sqrt(2.5 / 5) = sqrt(0.5)
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    m, lo, hi = mean_ci(x)
    half = 1.959964 * math.sqrt(0.5)  # = 1.385904...
    assert m == pytest.approx(3.0)
    assert lo == pytest.approx(3.0 - half, abs=1e-12)
    assert hi == pytest.approx(3.0 + half, abs=1e-12)
    # alpha = 0.10 uses z = 1.644854
    _, lo90, hi90 = mean_ci(x, alpha=0.10)
    assert hi90 - 3.0 == pytest.approx(1.6448536 * math.sqrt(0.5), abs=1e-6)
    assert lo90 == pytest.approx(3.0 - (hi90 - 3.0), abs=1e-12)


def test_mean_ci_errors() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci(np.array([1.0]))
    with pytest.raises(ValueError, match="alpha"):
        mean_ci(np.array([1.0, 2.0]), alpha=1.5)


# ------------------------------------------------------------------------------------------
# Input validation: every public metric refuses bad input with a ValueError naming the argument
# ------------------------------------------------------------------------------------------


def test_gauc_object_user_ids_with_none_is_a_value_error() -> None:
    # The fault: numpy's sort of [1, None, 2] raised a TypeError from inside np.unique.
    u = np.array([1, None, 2, 1], dtype=object)
    with pytest.raises(ValueError, match=r"user_ids .*None at index 1"):
        gauc(u, np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.5, 0.2]))


def test_gauc_object_user_ids_of_one_type_give_the_right_value() -> None:
    # user "a": positive 0.9 vs negative 0.2 -> AUC 1 (2 rows); user "b": positive 0.3 vs
    # negatives 0.4 and 0.1 -> AUC 1/2 (3 rows). GAUC = (2 * 1 + 3 * 0.5) / 5 = 0.7.
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.2, 0.3, 0.4, 0.1])
    strs = np.array(["a", "a", "b", "b", "b"], dtype=object)
    ints = np.array([7, 7, 3, 3, 3], dtype=object)
    assert gauc(strs, y, s) == (pytest.approx(0.7, abs=1e-12), 2)
    assert gauc(ints, y, s) == (pytest.approx(0.7, abs=1e-12), 2)
    assert gauc(strs.astype(str), y, s) == (pytest.approx(0.7, abs=1e-12), 2)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (np.array([1.0, np.nan, 2.0]), r"user_ids contains 1 NaN"),
        (np.array([1, np.nan, 2], dtype=object), r"user_ids .*nan at index 1"),
        (np.array([1, "b", 2], dtype=object), r"user_ids mixes integers and strings"),
        (np.array([1, 2.5, 2], dtype=object), r"user_ids .*2.5 at index 1"),
        (np.array([1 + 1j, 2, 3]), r"user_ids must hold integers or strings"),
        (None, r"user_ids is None"),
    ],
)
def test_gauc_refuses_bad_user_ids(ids: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gauc(ids, np.array([1, 0, 1]), np.array([0.9, 0.1, 0.5]))  # type: ignore[arg-type]


Y3 = np.array([1, 0, 1])
S3 = np.array([0.9, 0.1, 0.5])


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        (np.array([1, None, 0], dtype=object), S3, r"y_true .*dtype object.*None at index 1"),
        (np.array([1.0, np.nan, 0.0]), S3, r"y_true contains 1 NaN"),
        (np.array(["1", "0", "1"]), S3, r"y_true must be numeric"),
        (Y3, np.array([0.9, None, 0.5], dtype=object), r"y_score .*None at index 1"),
        (Y3, np.array(["a", "b", "c"]), r"y_score must be numeric"),
        (Y3, np.array([0.9, np.nan, 0.5]), r"y_score contains 1 NaN"),
        (Y3, np.array([0.9, 0.1]), r"same length.*y_true=3, y_score=2"),
        (np.array([], dtype=int), np.array([]), r"empty.*y_true, y_score"),
        (None, S3, r"y_true is None"),
        (Y3, np.ones((3, 1)), r"y_score must be 1-D"),
    ],
)
def test_auc_and_gauc_refuse_bad_labels_and_scores(y: object, s: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        auc(y, s)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        gauc(np.array([1, 1, 1])[: len(s) if s is not None else 3], y, s)  # type: ignore[arg-type]


def test_auc_refuses_bad_weights() -> None:
    with pytest.raises(ValueError, match=r"sample_weight .*None at index 0"):
        auc(np.array([1, 0, 0]), S3, np.array([None, 1.0, 1.0], dtype=object))
    with pytest.raises(ValueError, match=r"sample_weight must be finite.*nan at index 2"):
        auc(np.array([1, 0, 0]), S3, np.array([1.0, 1.0, np.nan]))
    with pytest.raises(ValueError, match=r"same length.*sample_weight=2"):
        auc(np.array([1, 0, 0]), S3, np.array([1.0, 1.0]))


def test_rela_impr_refuses_non_numbers_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="auc_model must be a real number"):
        rela_impr(None, 0.7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="auc_base must be a real number"):
        rela_impr(0.7, "0.6")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"auc_model must be an AUC in \[0, 1\], got nan"):
        rela_impr(float("nan"), 0.7)
    with pytest.raises(ValueError, match=r"auc_base must be an AUC in \[0, 1\], got 1.5"):
        rela_impr(0.7, 1.5)


def test_ncis_cap_inf_is_snips_by_hand() -> None:
    # ratios pi/mu = 0.2/0.1, 0.1/0.4, 0.6/0.2 = 2, 0.25, 3; rewards 1, 4, 0
    # SNIPS = (2*1 + 0.25*4 + 3*0) / (2 + 0.25 + 3) = 3 / 5.25 = 4/7
    # ESS = 5.25^2 / (4 + 0.0625 + 9) = 27.5625 / 13.0625
    pi, mu, r = np.array([0.2, 0.1, 0.6]), np.array([0.1, 0.4, 0.2]), np.array([1.0, 4.0, 0.0])
    res = ncis(pi, mu, r, cap=np.inf)
    assert res.value == pytest.approx(4 / 7, abs=1e-12)
    assert res.ess == pytest.approx(27.5625 / 13.0625, abs=1e-12)
    assert res.cap == np.inf and res.clipped_fraction == 0.0 and res.n == 3
    # a cap of 2.5 binds on the third unit only: (2 + 1 + 0) / (2 + 0.25 + 2.5)
    assert ncis(pi, mu, r, cap=2.5).value == pytest.approx(3 / 4.75, abs=1e-12)
    assert ncis_per_aspect(pi, mu, {"click": r}, cap=np.inf)["click"] == res


@pytest.mark.parametrize(
    ("cap", "match"),
    [
        (0.0, r"cap must be > 0 \(np.inf for no cap\), got 0.0"),
        (-1.0, r"cap must be > 0"),
        (float("nan"), r"cap must be > 0 .*got nan"),
        (-np.inf, r"cap must be > 0"),
        (None, r"cap must be a real number, got None"),
        ("10", r"cap must be a real number, got '10'"),
    ],
)
def test_ncis_refuses_bad_caps(cap: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ncis(np.array([0.2]), np.array([0.1]), np.array([1.0]), cap=cap)  # type: ignore[arg-type]


ONE = np.array([0.5, 0.5])


@pytest.mark.parametrize(
    ("pi", "mu", "r", "match"),
    [
        (ONE, np.array([0.5, np.nan]), ONE, r"behaviour_prob must be finite.*nan at index 1"),
        (ONE, np.array([0.5, -0.1]), ONE, r"behaviour_prob .*positive, got -0.1 at index 1"),
        (ONE, np.array([0.5, None], dtype=object), ONE, r"behaviour_prob .*None at index 1"),
        (np.array([np.nan, 0.5]), ONE, ONE, r"target_prob must be finite.*index 0"),
        (np.array([-0.5, 0.5]), ONE, ONE, r"target_prob must be finite and non-negative"),
        (np.array(["a", "b"]), ONE, ONE, r"target_prob must be numeric"),
        (ONE, ONE, np.array([1.0, np.nan]), r"reward must be finite.*index 1"),
        (ONE, ONE, np.array([1.0, np.inf]), r"reward must be finite"),
        (ONE, ONE, np.array([None, 1.0], dtype=object), r"reward .*None at index 0"),
        (np.array([]), np.array([]), np.array([]), r"empty.*target_prob, behaviour_prob"),
        (ONE, np.array([0.5]), ONE, r"same length.*target_prob=2, behaviour_prob=1"),
        (None, ONE, ONE, r"target_prob is None"),
    ],
)
def test_ncis_refuses_bad_inputs(pi: object, mu: object, r: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ncis(pi, mu, r, cap=10.0)  # type: ignore[arg-type]


def test_ncis_per_aspect_names_the_aspect() -> None:
    with pytest.raises(ValueError, match=r"rewards\['like'\] must be finite"):
        ncis_per_aspect(ONE, ONE, {"click": ONE, "like": np.array([0.0, np.nan])}, cap=2.0)
    with pytest.raises(ValueError, match="rewards must map aspect names"):
        ncis_per_aspect(ONE, ONE, [ONE], cap=2.0)  # type: ignore[arg-type]


def test_slate_log_prob_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError, match="is None"):
        slate_log_prob(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be numeric"):
        slate_log_prob(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="empty"):
        slate_log_prob(np.zeros((2, 0)))


def test_bootstrap_and_mean_ci_refuse_bad_inputs() -> None:
    x = np.arange(5.0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"groups .*None at index 2"):
        bootstrap_ci(np.mean, x, rng=rng, groups=np.array([1, 1, None, 2, 2], dtype=object))
    with pytest.raises(ValueError, match="n_boot must be an integer"):
        bootstrap_ci(np.mean, x, n_boot=2.5, rng=rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha must be a real number"):
        bootstrap_ci(np.mean, x, alpha=None, rng=rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci(np.mean, np.array([]), rng=rng)
    with pytest.raises(ValueError, match="must not be None"):
        bootstrap_ci(np.mean, None, rng=rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"x .*None at index 1"):
        mean_ci(np.array([1.0, None, 2.0], dtype=object))
    with pytest.raises(ValueError, match=r"x must be finite.*nan at index 0"):
        mean_ci(np.array([np.nan, 1.0, 2.0]))


# ------------------------------------------------------------------------------------------
# training.eval.slates: the slate estimators' inputs
# ------------------------------------------------------------------------------------------


def test_ncis_estimate_without_cap_is_snips() -> None:
    from training.eval.slates import ncis_estimate

    # ratios 2, 0.25, 3 (as logs); rewards 1, 4, 0 -> SNIPS 4/7 as in the hand example above
    lr = np.log(np.array([2.0, 0.25, 3.0]))
    est = ncis_estimate(lr, np.array([1.0, 4.0, 0.0]), np.array(["a", "b", "c"]), np.inf, 20,
                        np.random.default_rng(0))  # fmt: skip
    assert est["value"] == pytest.approx(4 / 7, abs=1e-12)
    assert est["clipped_fraction"] == 0.0 and est["log_cap"] == np.inf


@pytest.mark.parametrize(
    ("lr", "r", "users", "log_cap", "match"),
    [
        (np.array([0.0, np.nan]), ONE, np.arange(2), 1.0, r"log_ratio contains 1 NaN"),
        (np.array([0.0, np.inf]), ONE, np.arange(2), 1.0, r"log_ratio contains \+inf"),
        (np.array([0.0, 0.0]), np.array([1.0, np.nan]), np.arange(2), 1.0, r"reward must be"),
        (np.zeros(2), ONE, np.array([1, None], dtype=object), 1.0, r"users .*None at index 1"),
        (np.zeros(2), ONE, np.arange(3), 1.0, r"same length.*users=3"),
        (np.zeros(0), np.zeros(0), np.arange(0), 1.0, r"empty"),
        (np.zeros(2), ONE, np.arange(2), float("nan"), r"log_cap must be a number or inf"),
        (np.zeros(2), ONE, np.arange(2), None, r"log_cap must be a real number"),
        (np.full(2, -np.inf), ONE, np.arange(2), 1.0, r"every log_ratio is -inf"),
    ],
)
def test_ncis_estimate_refuses_bad_inputs(lr, r, users, log_cap, match) -> None:
    from training.eval.slates import ncis_estimate

    with pytest.raises(ValueError, match=match):
        ncis_estimate(lr, r, users, log_cap, 10, np.random.default_rng(0))


def test_ess_and_compare_refuse_bad_inputs() -> None:
    from training.eval.slates import compare, ess

    assert ess(np.log(np.array([1.0, 3.0]))) == pytest.approx(1.6, abs=1e-12)  # 16 / 10
    with pytest.raises(ValueError, match="log_w contains 1 NaN"):
        ess(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        ess(np.array([]))
    with pytest.raises(ValueError, match="log_w needs finite entries"):
        ess(np.array([-np.inf, -np.inf]))
    good = {"value": 1.0, "low": 0.5, "high": 1.5}
    assert compare(good, good)["bias"] == 0.0
    with pytest.raises(ValueError, match="online has no 'low'"):
        compare(good, {"value": 1.0, "high": 2.0})
    with pytest.raises(ValueError, match=r"est\['high'\] must be finite, got nan"):
        compare({**good, "high": float("nan")}, good)


def test_slate_estimators_refuse_bad_propensities_scores_and_temperatures(tiny_data) -> None:
    import dataclasses

    from training.eval.slates import (
        behaviour_log_prob,
        choose_temperature,
        slate_log_prob_from_scores,
    )

    _, _, req = tiny_data
    assert np.all(np.isfinite(behaviour_log_prob(req)))
    for bad, shown in ((0.0, "0.0"), (-0.2, "-0.2"), (np.nan, "nan"), (1.5, "1.5")):
        p = req.propensity.copy()
        p[3, 1] = bad
        with pytest.raises(ValueError, match=rf"propensity .*{shown} at request 3, slot 1"):
            behaviour_log_prob(dataclasses.replace(req, propensity=p))
    k = req.list_size
    scores = np.zeros((req.n_requests, k, req.cand_item.shape[1]))
    assert slate_log_prob_from_scores(scores, req, 1.0).shape == (req.n_requests,)
    with pytest.raises(ValueError, match="scores must have shape"):
        slate_log_prob_from_scores(scores[:, :1], req, 1.0)
    poisoned = scores.copy()
    poisoned[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="scores contains NaN"):
        slate_log_prob_from_scores(poisoned, req, 1.0)
    for t in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            slate_log_prob_from_scores(scores, req, t)
    with pytest.raises(ValueError, match="temperatures is empty"):
        choose_temperature(scores, req, (), 0.1)
    with pytest.raises(ValueError, match=r"min_ess_share must be in \(0, 1\]"):
        choose_temperature(scores, req, (1.0,), 0.0)
