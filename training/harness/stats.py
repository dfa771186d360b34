"""Pure statistics of the reports: one copy of each, each against numbers worked by hand.

Conventions: a 95% interval is ``(point, low, high)``; NaN where a quantity is undefined (a
spread of one value, an interval of one unit). Intervals respect their quantity's bounds:

- a **relative change** ``mean(a) / mean(b) - 1`` is formed on the log scale of the ratio
  (delta method, :func:`relative_change`), so it never reaches -100%;
- a **mean of non-negative values** (a count, a rate) gets a log-scale interval
  (:func:`nonneg_mean_ci`), so it never goes below 0;
- an AUC difference is bounded by [-1, 1] and gets a percentile (cluster) bootstrap
  (:func:`paired_auc_diff`), which stays inside the bounds by construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from training.eval.metrics import auc, bootstrap_ci, rela_impr

#: Standard-normal 97.5% quantile.
Z95 = 1.959963984540054


def finite(values: Sequence[float | None]) -> np.ndarray:
    """The finite values of ``values`` (None and NaN dropped), as float64."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return a[np.isfinite(a)]


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample std (ddof 1) of the finite values; std is NaN for fewer than two
    values (one seed has no spread: it is shown as missing, never as ± 0)."""
    a = finite(values)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan


def pooled(points: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> dict:
    """Mean over seeds of per-seed estimates with the interval of that mean.

    With per-seed 95% half-widths ``h_s = (high_s - low_s) / 2`` and independent seeds,
    ``h = sqrt(sum_s h_s^2) / S`` around ``mean_s point_s``. For quantities whose interval is
    not symmetric (relative changes) use :func:`pooled_relative`.
    """
    p = np.asarray(points, dtype=np.float64)
    h = (np.asarray(highs, dtype=np.float64) - np.asarray(lows, dtype=np.float64)) / 2.0
    m = float(p.mean())
    half = float(np.sqrt(np.sum(h**2)) / p.size)
    _, sd = mean_std(p.tolist())
    return {"mean": m, "std": sd, "low": m - half, "high": m + half, "per_seed": p.tolist()}


def pooled_positive(points: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> dict:
    """:func:`pooled` of non-negative quantities (a count's mean, a ratio): the arithmetic mean
    over seeds with an interval on the log scale, so it stays above 0.

    Each seed's standard error is read back from its log-scale 95% interval (the delta method
    of :func:`nonneg_mean_ci`: ``se_s = point_s * (log high_s - log low_s) / (2 z)``; a seed
    whose units were all 0, ``(0, 0, 0)``, has ``se_s = 0``). The mean ``m = mean_s point_s``
    has ``se = sqrt(sum_s se_s^2) / S`` and the interval ``m * exp(-/+ z se / m)``. ``m = 0``
    gives ``(0, 0, 0)``; a seed with an undefined interval (NaN, or a low of 0 above a point
    of 0) makes the pooled interval NaN. The mean is not a geometric one: a seed at 0 pulls it
    down as it should instead of zeroing it.
    """
    p = np.asarray(points, dtype=np.float64)
    lo = np.asarray(lows, dtype=np.float64)
    hi = np.asarray(highs, dtype=np.float64)
    m = float(p.mean())
    _, sd = mean_std(p.tolist())
    out = {"mean": m, "std": sd, "low": math.nan, "high": math.nan, "per_seed": p.tolist()}
    zero = (p == 0.0) & (lo == 0.0) & (hi == 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        se_s = np.where(zero, 0.0, p * (np.log(hi) - np.log(lo)) / (2.0 * Z95))
    if m == 0.0 and bool(zero.all()):
        out.update(low=0.0, high=0.0)
    elif m > 0.0 and bool(np.all(np.isfinite(se_s))):
        se_log = float(np.sqrt(np.sum(se_s**2)) / p.size) / m
        out.update(low=m * math.exp(-Z95 * se_log), high=m * math.exp(Z95 * se_log))
    return out


def pooled_relative(pcts: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> dict:
    """:func:`pooled_positive` of relative changes in %, on the ratio ``1 + pct / 100``: the
    mean is the mean of the per-seed changes and the interval stays above -100%."""

    def ratio(v: Sequence[float]) -> np.ndarray:
        return 1.0 + np.asarray(v, dtype=np.float64) / 100.0

    r = pooled_positive(ratio(pcts), ratio(lows), ratio(highs))
    return {"mean": 100.0 * (r["mean"] - 1.0), "std": mean_std(list(pcts))[1],
            "low": 100.0 * (r["low"] - 1.0), "high": 100.0 * (r["high"] - 1.0),
            "per_seed": [float(x) for x in pcts]}  # fmt: skip


def pool_rows(
    rows: Sequence[Mapping[str, Any]],
    pool: Any = pooled,
    point: str = "mean",
    low: str = "low",
    high: str = "high",
) -> dict:
    """``pool`` (:func:`pooled`, :func:`pooled_positive` or :func:`pooled_relative`) of
    per-seed rows, each holding its point and 95% bounds under ``point``, ``low``, ``high``."""
    return pool([r[point] for r in rows], [r[low] for r in rows], [r[high] for r in rows])


def relative_change(a: np.ndarray, b: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """``100 * (mean(a) / mean(b) - 1)`` for paired non-negative units, with a 95% interval.

    Delta method on the log ratio: ``log(mean a) - log(mean b)`` has standard error
    ``sd(u) / sqrt(n)`` with ``u_i = a_i / mean(a) - b_i / mean(b)``; the interval
    ``exp(log r -/+ z se) - 1`` stays above -100%. NaN where a mean is 0 (no ratio) and for
    the interval of fewer than 2 units.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[0] == 0:
        return math.nan, math.nan, math.nan
    ma, mb = float(a.mean()), float(b.mean())
    if mb <= 0.0:
        return math.nan, math.nan, math.nan
    if ma <= 0.0:
        return -100.0, math.nan, math.nan
    lr = math.log(ma / mb)
    pct = 100.0 * math.expm1(lr)
    if a.shape[0] < 2:
        return pct, math.nan, math.nan
    u = a / ma - b / mb
    se = float(u.std(ddof=1)) / math.sqrt(a.shape[0])
    return pct, 100.0 * math.expm1(lr - z * se), 100.0 * math.expm1(lr + z * se)


def nonneg_mean_ci(x: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """Mean of non-negative values (counts, rates) with a log-scale 95% interval.

    ``se_log = sd / (sqrt(n) * mean)``; interval ``mean * exp(-/+ z se_log)``: never below 0,
    wider above the mean than below as a skewed count's is. All zeros give ``(0, 0, 0)``;
    fewer than two values give NaN bounds.
    """
    v = np.asarray(x, dtype=np.float64)
    if v.shape[0] == 0:
        return math.nan, math.nan, math.nan
    if np.any(v < 0):
        raise ValueError(f"nonneg_mean_ci: negative value {float(v.min())}")
    m = float(v.mean())
    if v.shape[0] < 2:
        return m, math.nan, math.nan
    if m == 0.0:
        return 0.0, 0.0, 0.0
    se_log = float(v.std(ddof=1)) / (math.sqrt(v.shape[0]) * m)
    return m, m * math.exp(-z * se_log), m * math.exp(z * se_log)


def paired_auc_diff(
    y: np.ndarray, users: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int, seed: int
) -> tuple[float, float, float]:
    """``AUC(a) - AUC(b)`` on the same impressions (positive: ``a`` ranks clicks higher), with a
    user-cluster percentile bootstrap 95% interval (``n_boot`` resamples, seeded)."""

    def stat(y_: np.ndarray, a_: np.ndarray, b_: np.ndarray) -> float:
        return auc(y_, a_) - auc(y_, b_)

    return bootstrap_ci(stat, y, a, b, n_boot=n_boot, rng=np.random.default_rng([seed, 41]),
                        groups=users)  # fmt: skip


def relaimpr_columns(
    aucs: Mapping[str, Mapping[int, float]], base: str = "fm"
) -> dict[str, dict[str, Any]]:
    """RelaImpr (%) of every model over ``base``, per seed then mean ± std over seeds.

    ``aucs``: model -> seed -> AUC. A model's RelaImpr on seed ``s`` uses the *base's* AUC on
    ``s`` (seeds where the base is missing are left out):
    ``RelaImpr = ((AUC - 0.5) / (AUC_base - 0.5) - 1) * 100``.
    """
    out: dict[str, dict[str, Any]] = {}
    b = aucs.get(base, {})
    for name, per in aucs.items():
        ri = {s: rela_impr(a, b[s]) for s, a in per.items() if s in b}
        out[name] = {"auc": mean_std(list(per.values())),
                     "relaimpr": mean_std(list(ri.values())), "auc_per_seed": dict(per),
                     "relaimpr_per_seed": ri, "seeds": sorted(per)}  # fmt: skip
    return out
