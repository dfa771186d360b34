"""Offline evaluation metrics: AUC, RelaImpr, GAUC, NCIS off-policy value, confidence intervals.

Pure numpy (plus the standard library). No torch, no pandas, no global randomness: every function
that samples takes an explicit ``np.random.Generator``.

Conventions
-----------
* ``y_true`` holds binary labels, 0/1 (or bool); 1 is the positive class (e.g. a click, a like).
* ``y_score`` holds real-valued model scores; only their order matters. NaN is rejected.
* "Units" for NCIS are whatever the logging policy sampled as one action: a whole list (slate) or
  a single impression.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NCISResult",
    "auc",
    "bootstrap_ci",
    "gauc",
    "mean_ci",
    "ncis",
    "ncis_per_aspect",
    "rela_impr",
    "slate_log_prob",
]

_Z_975 = 1.959964  # standard-normal 0.975 quantile, the z for a 95% two-sided interval


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _as_1d(name: str, a: object) -> np.ndarray:
    if a is None:
        raise ValueError(f"{name} is None; expected a 1-D array")
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _check_same_length(**arrays: np.ndarray) -> int:
    lengths = {name: arr.shape[0] for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise ValueError(f"inputs must have the same length, got {detail}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"inputs are empty ({', '.join(lengths)} have length 0)")
    return n


def _numeric(name: str, a: object) -> np.ndarray:
    """``a`` as a 1-D float64 array; refuses non-numeric dtypes (object arrays holding None,
    strings, ...) with a ValueError naming ``name``. NaN and inf are left to the caller."""
    arr = _as_1d(name, a)
    if arr.dtype.kind not in "iufb":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}{_example(arr)}")
    return arr.astype(np.float64, copy=False)


def _example(arr: np.ndarray) -> str:
    """`` (e.g. None at index 3)`` for the first element of an object array that is not a real
    number, else ``""``."""
    if arr.dtype != object:
        return ""
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            return f" (e.g. {v!r} at index {i})"
    return ""


def _no_nan(name: str, a: np.ndarray) -> None:
    bad = np.isnan(a)
    if bad.any():
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN value(s), first at index {int(np.argmax(bad))}"
        )


def _finite(name: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name} must be finite: {int(bad.sum())} value(s) are not, e.g. {a[i]} at index {i}"
        )


def _number(name: str, v: object) -> float:
    """A real scalar (int or float, not bool) as a float; ValueError naming ``name`` otherwise."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {v!r}")
    return float(v)


def _binary_labels(y_true: object) -> np.ndarray:
    y = _as_1d("y_true", y_true)
    if y.dtype == np.bool_:
        return y
    if y.dtype.kind not in "iuf":
        raise ValueError(f"y_true must be numeric 0/1 or bool, got dtype {y.dtype}{_example(y)}")
    if y.dtype.kind == "f":
        _no_nan("y_true", y)
    pos = y == 1
    if not np.all(pos | (y == 0)):
        bad = np.unique(y[~(pos | (y == 0))])[:5]
        raise ValueError(f"y_true must contain only 0 and 1, found e.g. {bad.tolist()}")
    return pos


def _scores(y_score: object) -> np.ndarray:
    s = _numeric("y_score", y_score)
    _no_nan("y_score", s)
    return s


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _group_ids(name: str, ids: object) -> np.ndarray:
    """Group keys (user ids, cluster ids) as a 1-D array ``np.unique`` can sort: integers,
    bools, finite floats, or strings. An object array must hold only integers or only strings
    (it is converted to int64 or str). Refuses None, NaN, mixed or other types with a
    ValueError naming ``name`` and the first offending index."""
    u = _as_1d(name, ids)
    kind = u.dtype.kind
    if kind == "f":
        _no_nan(name, u)
        return u
    if kind in "iubUS":
        return u
    if kind != "O":
        raise ValueError(f"{name} must hold integers or strings, got dtype {u.dtype}")
    values = u.tolist()
    if all(isinstance(v, str) for v in values):
        return u.astype(str)
    if all(_is_int(v) for v in values):
        return u.astype(np.int64)
    for i, v in enumerate(values):
        if not (isinstance(v, str) or _is_int(v)):
            raise ValueError(f"{name} must hold integers or strings, found {v!r} at index {i}")
    i = next(i for i, v in enumerate(values) if _is_int(v) != _is_int(values[0]))
    raise ValueError(
        f"{name} mixes integers and strings ({values[0]!r} at index 0, {values[i]!r} at index "
        f"{i}); use one type"
    )


# --------------------------------------------------------------------------------------------
# AUC family
# --------------------------------------------------------------------------------------------


def auc(
    y_true: np.ndarray,
    y_score: np.ndarray,
    sample_weight: np.ndarray | None = None,
) -> float:
    """ROC AUC: the probability that a random positive outscores a random negative.

    Equation (ties count one half)::

        AUC = sum_{i in P} sum_{j in N} w_i w_j ( [s_i > s_j] + 0.5 [s_i == s_j] )
              / ( sum_{i in P} w_i * sum_{j in N} w_j )

    With unit weights this is the Mann-Whitney statistic computed from average (mid) ranks,
    ``AUC = (sum_{i in P} rank_i - |P|(|P|+1)/2) / (|P| |N|)``. It is computed the same way here:
    sort once by score (O(n log n)), collapse tied scores into one block, and credit each
    positive with the negative weight in lower blocks plus half the negative weight in its own
    block — which is what an average rank does.

    Args:
        y_true: shape (n,), labels in {0, 1} (or bool). Unitless.
        y_score: shape (n,), real scores (any monotone scale: logits, probabilities). No NaN.
        sample_weight: optional shape (n,), non-negative finite weights (e.g. impression
            counts). ``None`` means every row weighs 1.

    Returns:
        AUC in [0, 1] (a probability; 0.5 is a random ranking).

    Raises:
        ValueError: naming the argument: an input None, not 1-D, of a non-numeric dtype (e.g.
            an object array holding None), shapes differ, inputs empty, labels not binary or
            NaN, NaN scores, weights negative or not finite, or only one class present (with
            positive weight).
    """
    y = _binary_labels(y_true)
    s = _scores(y_score)
    if sample_weight is None:
        _check_same_length(y_true=y, y_score=s)
        w = np.ones(y.shape[0], dtype=np.float64)
    else:
        w = _numeric("sample_weight", sample_weight)
        _check_same_length(y_true=y, y_score=s, sample_weight=w)
        _finite("sample_weight", w)
        if (w < 0).any():
            raise ValueError("sample_weight must be finite and non-negative")

    w_pos_total = float(w[y].sum())
    w_neg_total = float(w[~y].sum())
    if w_pos_total <= 0.0 or w_neg_total <= 0.0:
        raise ValueError(
            "AUC is undefined when only one class is present: "
            f"positive weight={w_pos_total}, negative weight={w_neg_total}"
        )

    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    w_sorted = w[order]
    block_start = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    pos_w = np.add.reduceat(np.where(y_sorted, w_sorted, 0.0), block_start)
    neg_w = np.add.reduceat(np.where(y_sorted, 0.0, w_sorted), block_start)
    neg_below = np.cumsum(neg_w) - neg_w
    numerator = float(np.dot(pos_w, neg_below + 0.5 * neg_w))
    return numerator / (w_pos_total * w_neg_total)


def rela_impr(auc_model: float, auc_base: float) -> float:
    """Relative improvement of a model's AUC over a base model's AUC, in percent.

    Equation::

        RelaImpr = ( (AUC_model - 0.5) / (AUC_base - 0.5) - 1 ) * 100

    It measures the lift over the random-guess AUC of 0.5, so 0.76 vs 0.75 gives +4.0 %.

    Args:
        auc_model: AUC of the model under test, a probability in [0, 1].
        auc_base: AUC of the baseline, a probability in [0, 1], not 0.5.

    Returns:
        The relative improvement in percent (positive is better than the base).

    Raises:
        ValueError: ``auc_base`` is 0.5 (the ratio is undefined), or an input is not a number
            in [0, 1] (NaN included); the message names the argument.
    """
    for name, v in (("auc_model", auc_model), ("auc_base", auc_base)):
        if not 0.0 <= _number(name, v) <= 1.0:
            raise ValueError(f"{name} must be an AUC in [0, 1], got {v}")
    if auc_base == 0.5:
        raise ValueError("RelaImpr is undefined for auc_base == 0.5 (a random baseline)")
    return ((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0


def gauc(
    user_ids: np.ndarray,
    y_true: np.ndarray,
    y_score: np.ndarray,
) -> tuple[float, int]:
    """Group AUC: per-user AUC averaged with impression-count weights.

    Equation::

        GAUC = sum_{u in U*} n_u AUC_u / sum_{u in U*} n_u

    where ``AUC_u`` is :func:`auc` on user u's rows (ties count one half), ``n_u`` is the number
    of impressions (rows) of u, and ``U*`` is the set of users who have at least one positive and
    at least one negative; users with a single class are skipped (their AUC is undefined).

    Fully vectorised, O(n log n): one ``np.lexsort`` by (user, score), then blocks of tied
    (user, score) pairs are reduced with ``np.add.reduceat``; each positive is credited with the
    user's negatives in lower blocks plus half of those in its own block (average ranks). The
    numerators are kept as exact integers.

    Args:
        user_ids: shape (n,), user identifiers: integers, finite floats or strings (an object
            array must hold only integers or only strings). Need not be sorted.
        y_true: shape (n,), labels in {0, 1} (or bool).
        y_score: shape (n,), real scores. No NaN.

    Returns:
        ``(gauc, n_users_used)``: GAUC in [0, 1] and the number of users in ``U*``.

    Raises:
        ValueError: naming the argument: an input None, not 1-D or of a non-numeric dtype,
            shapes differ, inputs empty, labels not binary or NaN, NaN scores, user ids None,
            NaN, mixed integers and strings or of another type, or no user has both classes.
    """
    u = _group_ids("user_ids", user_ids)
    y = _binary_labels(y_true)
    s = _scores(y_score)
    n = _check_same_length(user_ids=u, y_true=y, y_score=s)

    order = np.lexsort((s, u))
    u_sorted = u[order]
    s_sorted = s[order]
    y_sorted = y[order].astype(np.int64)

    user_change = np.r_[True, u_sorted[1:] != u_sorted[:-1]]
    block_change = user_change | np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    block_start = np.flatnonzero(block_change)  # blocks of tied (user, score)
    block_size = np.diff(np.r_[block_start, n])
    block_pos = np.add.reduceat(y_sorted, block_start)
    block_neg = block_size - block_pos

    block_is_user_first = user_change[block_start]
    user_first_block = np.flatnonzero(block_is_user_first)  # index into blocks
    block_user = np.cumsum(block_is_user_first) - 1  # user index of each block

    neg_before = np.cumsum(block_neg) - block_neg  # global, exclusive
    neg_below_in_user = neg_before - neg_before[user_first_block][block_user]
    twice_num = block_pos * (2 * neg_below_in_user + block_neg)  # exact integers

    user_twice_num = np.add.reduceat(twice_num, user_first_block)
    user_pos = np.add.reduceat(block_pos, user_first_block)
    user_n = np.add.reduceat(block_size, user_first_block)
    user_neg = user_n - user_pos

    used = (user_pos > 0) & (user_neg > 0)
    n_used = int(used.sum())
    if n_used == 0:
        raise ValueError("GAUC is undefined: no user has both a positive and a negative")
    auc_u = user_twice_num[used] / (2.0 * user_pos[used] * user_neg[used])
    weight = user_n[used].astype(np.float64)
    return float(np.dot(weight, auc_u) / weight.sum()), n_used


# --------------------------------------------------------------------------------------------
# NCIS off-policy estimation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NCISResult:
    """Result of :func:`ncis`.

    Attributes:
        value: the NCIS estimate of the target policy's mean reward per unit (reward units).
        ess: effective sample size ``(sum w)^2 / sum w^2``, in units (lists or impressions);
            between 1 and ``n``.
        n: number of logged units used.
        cap: the cap applied to the importance ratios (``inf``: none, the SNIPS estimate).
        clipped_fraction: fraction of units whose raw ratio ``pi/mu`` exceeded ``cap``.
    """

    value: float
    ess: float
    n: int
    cap: float
    clipped_fraction: float


def slate_log_prob(log_propensities_per_position: np.ndarray) -> np.ndarray:
    """Log-probability of each logged list from its per-position log-propensities.

    The logged propensity at position k is the probability that the policy chose that item for
    slot k *given the items already placed in slots 1..k-1* (a sequential sampler: pick slot 1,
    remove the item, pick slot 2, ...). By the chain rule a list's probability is the product over
    its positions, so its log-probability is the sum::

        log P(list) = sum_{k=1}^{K} log p(a_k | a_1, ..., a_{k-1})

    This is exact for sequential samplers such as Plackett-Luce (softmax without replacement).
    For a target policy that scores items independently per position, plugging in its
    per-position probabilities is the per-position-independence approximation, not an exact
    list probability.
    Logged propensities qualify only when the dataset declares them ``conditional``; a log's
    *marginal* per-position propensities do not (their product is not a list's probability:
    use item-position IPS, :func:`training.eval.propensities.item_position_ncis`), and
    ``unknown`` ones are not probabilities (:func:`training.eval.propensities.check_propensity`).

    Products of K small numbers underflow, so compute importance ratios in log space, e.g.
    ``ncis(np.exp(slate_log_prob(lp_target) - slate_log_prob(lp_behaviour)), np.ones(n), r,
    cap)``.

    Args:
        log_propensities_per_position: shape (n_lists, K) (or (K,) for one list), natural-log
            probabilities, each <= 0. ``-inf`` (a zero-probability choice) is allowed.

    Returns:
        shape (n_lists,) (or a 0-d array for a 1-D input): natural-log list probabilities.

    Raises:
        ValueError: None, a 0-d or empty input, a non-numeric dtype, NaN values, or values > 0
            (not log-probabilities).
    """
    name = "log_propensities_per_position"
    if log_propensities_per_position is None:
        raise ValueError(f"{name} is None; expected an array")
    raw = np.asarray(log_propensities_per_position)
    if raw.ndim == 0:
        raise ValueError(f"{name} must have a position axis")
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numeric, got dtype {raw.dtype}")
    if raw.size == 0:
        raise ValueError(f"{name} is empty (shape {raw.shape})")
    lp = raw.astype(np.float64, copy=False)
    if np.isnan(lp).any():
        raise ValueError(f"{name} contains NaN")
    if (lp > 1e-12).any():
        raise ValueError("log_propensities_per_position must be <= 0 (log-probabilities)")
    return np.sum(lp, axis=-1)


def _ncis_weights(
    target_prob: np.ndarray, behaviour_prob: np.ndarray, cap: float
) -> tuple[np.ndarray, float]:
    pi = _numeric("target_prob", target_prob)
    mu = _numeric("behaviour_prob", behaviour_prob)
    _check_same_length(target_prob=pi, behaviour_prob=mu)
    c = _number("cap", cap)
    if not c > 0:  # NaN fails this too
        raise ValueError(f"cap must be > 0 (np.inf for no cap), got {cap}")
    _finite("target_prob", pi)
    if (pi < 0).any():
        raise ValueError("target_prob must be finite and non-negative")
    _finite("behaviour_prob", mu)
    if (mu <= 0).any():
        i = int(np.argmax(mu <= 0))
        raise ValueError(
            f"behaviour_prob must be finite and strictly positive, got {mu[i]} at index {i}"
        )
    ratio = pi / mu
    clipped = ratio > cap
    w = np.minimum(ratio, cap)
    if w.sum() <= 0.0:
        raise ValueError("all importance weights are zero: the target never takes a logged action")
    return w, float(clipped.mean())


def _ncis_from_weights(w: np.ndarray, reward: np.ndarray, cap: float, clipped: float) -> NCISResult:
    sum_w = float(w.sum())
    return NCISResult(
        value=float(np.dot(w, reward) / sum_w),
        ess=sum_w * sum_w / float(np.dot(w, w)),
        n=int(w.shape[0]),
        cap=float(cap),
        clipped_fraction=clipped,
    )


def _reward(name: str, reward: object, n: int) -> np.ndarray:
    r = _numeric(name, reward)
    if r.shape[0] != n:
        raise ValueError(f"{name} has length {r.shape[0]}, expected {n}")
    _finite(name, r)
    return r


def ncis(
    target_prob: np.ndarray,
    behaviour_prob: np.ndarray,
    reward: np.ndarray,
    cap: float,
) -> NCISResult:
    """Normalised capped importance sampling (NCIS) estimate of a target policy's value.

    Equation, over logged units i = 1..n (whole lists, or single impressions)::

        w_i = min(cap, pi_i / mu_i)
        V   = sum_i w_i r_i / sum_i w_i
        ESS = (sum_i w_i)^2 / sum_i w_i^2

    Capping bounds the variance (at the cost of a bias towards the behaviour policy);
    normalising by ``sum w`` instead of ``n`` makes V a weighted mean of rewards, so it stays in
    the reward range. With ``pi == mu`` every weight is 1 and V is the plain mean reward. With
    ``cap=np.inf`` nothing is capped and V is the self-normalised IPS (SNIPS) estimate
    ``sum_i (pi_i/mu_i) r_i / sum_i (pi_i/mu_i)``: unbiased in the limit, high variance.

    Args:
        target_prob: shape (n,), pi_i: probability of the logged unit under the target policy
            (for a list, the product over positions — see :func:`slate_log_prob`), >= 0.
        behaviour_prob: shape (n,), mu_i: probability of the logged unit under the logging
            policy, > 0. Only the ratio matters, so a precomputed ratio with ``mu = 1`` works.
        reward: shape (n,), r_i, the unit's reward (e.g. clicks per list, watch seconds).
        cap: cap on the importance ratio (unitless), > 0, e.g. 10; ``np.inf`` for no cap.

    Returns:
        :class:`NCISResult` with the value in the reward's units.

    Raises:
        ValueError: naming the argument: an input None, not 1-D or of a non-numeric dtype,
            shapes differ, inputs empty, non-finite (NaN, inf) probabilities or rewards,
            ``mu <= 0``, ``pi < 0``, ``cap`` not a number, ``<= 0`` or NaN, or all weights
            zero.
    """
    w, clipped = _ncis_weights(target_prob, behaviour_prob, cap)
    r = _reward("reward", reward, w.shape[0])
    return _ncis_from_weights(w, r, cap, clipped)


def ncis_per_aspect(
    target_prob: np.ndarray,
    behaviour_prob: np.ndarray,
    rewards: Mapping[str, np.ndarray],
    cap: float,
) -> dict[str, NCISResult]:
    """:func:`ncis` for several reward aspects (click, like, watch time, ...) sharing one weighting.

    The capped weights ``w_i = min(cap, pi_i / mu_i)`` are computed once and applied to each
    aspect: ``V_a = sum_i w_i r_{a,i} / sum_i w_i``. ESS, n and clipped_fraction are the same for
    every aspect.

    Args:
        target_prob: shape (n,), target-policy probability of each logged unit, >= 0.
        behaviour_prob: shape (n,), logging-policy probability of each logged unit, > 0.
        rewards: aspect name -> shape (n,) reward array (each in its own units).
        cap: cap on the importance ratio, > 0; ``np.inf`` for no cap (SNIPS).

    Returns:
        aspect name -> :class:`NCISResult`, in the order of ``rewards``.

    Raises:
        ValueError: as :func:`ncis`, or ``rewards`` empty.
    """
    if not isinstance(rewards, Mapping):
        raise ValueError(f"rewards must map aspect names to arrays, got {type(rewards).__name__}")
    if not rewards:
        raise ValueError("rewards is empty")
    w, clipped = _ncis_weights(target_prob, behaviour_prob, cap)
    return {
        name: _ncis_from_weights(w, _reward(f"rewards[{name!r}]", r, w.shape[0]), cap, clipped)
        for name, r in rewards.items()
    }


# --------------------------------------------------------------------------------------------
# confidence intervals
# --------------------------------------------------------------------------------------------


def _check_alpha(alpha: float) -> None:
    if not 0.0 < _number("alpha", alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def bootstrap_ci(
    stat_fn: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 200,
    alpha: float = 0.05,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of a statistic.

    Equation::

        point = stat_fn(*arrays)
        theta_b = stat_fn(*[a[idx_b] for a in arrays]),  b = 1..n_boot
        (low, high) = (quantile_{alpha/2}(theta), quantile_{1-alpha/2}(theta))

    Row bootstrap: ``idx_b`` draws n row indices with replacement. Cluster bootstrap (``groups``
    given): draw G group ids with replacement from the G distinct groups and take all rows of
    each drawn group (a group drawn twice appears twice), which keeps within-group correlation
    (e.g. many impressions of one user) and gives honest intervals for per-user-correlated data.
    All arrays are indexed with the same ``idx_b``. The resample size varies with group sizes.

    Args:
        stat_fn: maps the (resampled) arrays to a float, e.g. ``auc`` or ``np.mean``.
            Exceptions it raises (e.g. one class in a resample) propagate.
        *arrays: one or more arrays with the same length n along axis 0.
        n_boot: number of bootstrap resamples (>= 1).
        alpha: 1 - confidence level; 0.05 gives a 95% interval.
        rng: the random generator (required; no global randomness).
        groups: optional shape (n,) group ids (e.g. user ids) for the cluster bootstrap.

    Returns:
        ``(point, low, high)`` in the statistic's units.

    Raises:
        ValueError: no arrays, an array None or 0-d, lengths differ, empty arrays, ``n_boot``
            not an integer >= 1, ``alpha`` not in (0, 1), or ``groups`` of the wrong length or
            holding None, NaN or mixed types.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    if not _is_int(n_boot) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    _check_alpha(alpha)
    if any(a is None for a in arrays):
        raise ValueError("arrays must not be None")
    arrs = [np.asarray(a) for a in arrays]
    if any(a.ndim == 0 for a in arrs):
        raise ValueError("arrays must have at least one dimension")
    n = _check_same_length(**{f"arrays[{i}]": a for i, a in enumerate(arrs)})

    point = float(stat_fn(*arrs))
    stats = np.empty(n_boot, dtype=np.float64)

    if groups is None:
        for b in range(n_boot):
            idx = rng.integers(0, n, size=n)
            stats[b] = stat_fn(*[a[idx] for a in arrs])
    else:
        g = _group_ids("groups", groups)
        if g.shape[0] != n:
            raise ValueError(f"groups has length {g.shape[0]}, expected {n}")
        _, codes = np.unique(g, return_inverse=True)
        rows_by_group = np.argsort(codes, kind="stable")
        group_size = np.bincount(codes)
        group_start = np.cumsum(group_size) - group_size
        n_groups = group_size.shape[0]
        for b in range(n_boot):
            drawn = rng.integers(0, n_groups, size=n_groups)
            sizes = group_size[drawn]
            out_start = np.cumsum(sizes) - sizes
            # position j of the resample -> group_start[drawn[k]] + (j - out_start[k])
            pos = np.arange(int(sizes.sum())) + np.repeat(group_start[drawn] - out_start, sizes)
            idx = rows_by_group[pos]
            stats[b] = stat_fn(*[a[idx] for a in arrs])

    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return point, float(low), float(high)


def mean_ci(x: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean with a normal-approximation confidence interval.

    Equation::

        mean = sum_i x_i / n
        sd   = sqrt( sum_i (x_i - mean)^2 / (n - 1) )
        (low, high) = mean -/+ z_{1-alpha/2} * sd / sqrt(n)

    ``z = 1.959964`` for ``alpha = 0.05``; otherwise the standard-normal quantile from
    ``statistics.NormalDist().inv_cdf``. (A Student-t quantile would need scipy; for the sample
    sizes of offline evaluation the difference is negligible.)

    Args:
        x: shape (n,), n >= 2, finite values (any units).
        alpha: 1 - confidence level, in (0, 1).

    Returns:
        ``(mean, low, high)`` in the units of ``x``.

    Raises:
        ValueError: ``x`` None, not 1-D, non-numeric, with fewer than 2 values or non-finite
            values, or ``alpha`` not in (0, 1).
    """
    _check_alpha(alpha)
    v = _numeric("x", x)
    if v.shape[0] < 2:
        raise ValueError(f"mean_ci needs at least 2 values, got {v.shape[0]}")
    _finite("x", v)
    z = _Z_975 if alpha == 0.05 else statistics.NormalDist().inv_cdf(1.0 - alpha / 2.0)
    m = float(v.mean())
    half = z * float(v.std(ddof=1)) / np.sqrt(v.shape[0])
    return m, m - half, m + half
