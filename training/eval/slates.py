"""Point-wise models as list policies and the off-policy estimate of them: shortlist greedy
policies, slate probabilities, the NCIS temperature and cap choice, NCIS against the online
truth."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from training.data.features import Requests, SideTables
from training.eval.metrics import (
    _check_same_length,
    _finite,
    _group_ids,
    _no_nan,
    _number,
    _numeric,
    bootstrap_ci,
    ncis,
)
from training.eval.online import OnlineResult
from training.eval.policies import OnlineFeatures, PointwisePolicy, RequestInputs
from training.eval.propensities import check_propensity
from training.sim.env import Observation

#: Candidate NCIS caps, as quantiles of the valid importance ratios, tried from the top.
CAP_QUANTILES = (1.0, 0.999, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.5)


# --------------------------------------------------------------------------------------------
# policies and slate probabilities
# --------------------------------------------------------------------------------------------


class Chunked(nn.Module):
    """Evaluates a point-wise model in chunks of rows (bounded memory for big batches)."""

    def __init__(self, model: nn.Module, chunk: int = 32768):
        super().__init__()
        self.model = model
        self.chunk = chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.chunk:
            return self.model(x)
        return torch.cat([self.model(c) for c in x.split(self.chunk)])


class ShortlistPolicy(PointwisePolicy):
    """Greedy :class:`PointwisePolicy` over a shortlist of the candidates.

    Slot 0 scores every candidate; the ``shortlist`` best by that score are kept and the list
    is then built greedily slot by slot among them, exactly as :class:`PointwisePolicy` does
    over all candidates (list features from the items already placed). With ``shortlist`` 0
    or at least the number of candidates it *is* the greedy :class:`PointwisePolicy`. The
    shortlist cuts the model evaluations per request from ``K C`` to ``C + (K - 1) M``.
    """

    def __init__(self, model: nn.Module, side: SideTables, shortlist: int = 0):
        super().__init__(model, side, temperature=0.0)
        self.shortlist = int(shortlist)

    def rank(self, obs: Observation, k: int) -> np.ndarray:
        c = obs.candidates.shape[1]
        m = self.shortlist
        if m <= 0 or m >= c:
            return super().rank(obs, k)
        if m < k:
            raise ValueError(f"shortlist {m} is shorter than the list ({k})")
        x = self.features.request(obs)
        b = obs.batch_size
        rows = np.arange(b)
        empty = np.zeros((b, 0), dtype=np.int64)
        s0 = self._scores(obs, x, OnlineFeatures.cand_ids(x, 0, empty, empty))
        top = np.argpartition(-s0, m - 1, axis=1)[:, :m]

        def sub(a: np.ndarray) -> np.ndarray:
            return np.take_along_axis(a, top if a.ndim == 2 else top[:, :, None], axis=1)

        xs = RequestInputs(
            user_ctx=x.user_ctx, cand_f=sub(x.cand_f), tags=sub(x.tags), authors=sub(x.authors),
            recent=sub(x.recent), depth=x.depth, clicks=x.clicks,
        )  # fmt: skip
        placed = np.zeros((b, m), dtype=bool)
        slate = np.empty((b, k), dtype=np.int64)
        for t in range(k):
            if t == 0:
                scores = np.take_along_axis(s0, top, axis=1)
            else:
                cand12 = OnlineFeatures.cand_ids(
                    xs, t, xs.tags[rows[:, None], slate[:, :t]],
                    xs.authors[rows[:, None], slate[:, :t]],
                )  # fmt: skip
                scores = self._scores(obs, xs, cand12)
            j = np.argmax(np.where(placed, -np.inf, scores), axis=1)
            slate[:, t] = j
            placed[rows, j] = True
        return np.take_along_axis(top, slate, axis=1)


def logged_slot_scores(policy: PointwisePolicy, req: Requests, batch: int = 256) -> np.ndarray:
    """``(R, K, C)`` scores of every logged candidate at every shown slot (logged prefix).

    Candidates already placed in slots ``< t`` and padding get ``-inf``; slots at or beyond a
    request's ``n_shown`` are all ``-inf``.
    """
    k = req.list_size
    c = req.cand_item.shape[1]
    out = np.full((req.n_requests, k, c), -np.inf, dtype=np.float32)
    cols = np.arange(c)[None, :]
    for lo in range(0, req.n_requests, batch):
        r = np.arange(lo, min(lo + batch, req.n_requests))
        for t in range(k):
            rr = r[req.n_shown[r] > t]
            if rr.size == 0:
                break
            s = policy.logged_scores(req, rr, np.full(rr.size, t))
            avail = req.cand_mask[rr] & (cols >= t)
            out[rr, t] = np.where(avail, s, -np.inf)
    return out


def slate_log_prob_from_scores(scores: np.ndarray, req: Requests, temperature: float) -> np.ndarray:
    """``(R,)`` log-probability of each logged slate under ``softmax(score / T)`` per slot.

    The same quantity as :func:`training.eval.policies.slate_log_prob_pointwise`, from
    precomputed :func:`logged_slot_scores` (so several temperatures cost one scoring).

    Raises:
        ValueError: ``scores`` not a numeric ``(R, K, C)`` array matching ``req`` (R requests,
            K = ``req.list_size``, C candidate columns) or holding NaN, or ``temperature`` not
            a finite number > 0.
    """
    t = _number("temperature", temperature)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    scores = np.asarray(scores)
    if scores.dtype.kind not in "iuf":
        raise ValueError(f"scores must be numeric, got dtype {scores.dtype}")
    want = (req.n_requests, req.list_size, req.cand_item.shape[1])
    if scores.shape != want:
        raise ValueError(f"scores must have shape (R, K, C) = {want}, got {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contains NaN (unavailable candidates are -inf)")
    k = scores.shape[1]
    live = np.arange(k)[None, :] < req.n_shown[:, None]  # (R, K)
    z = scores.astype(np.float64) / float(temperature)
    z = np.where(live[:, :, None], z, 0.0)
    m = z.max(axis=2, keepdims=True)
    lse = m[:, :, 0] + np.log(np.exp(z - m).sum(axis=2))
    chosen = z[:, np.arange(k), np.arange(k)]  # the logged item of slot t is column t
    return np.where(live, chosen - lse, 0.0).sum(axis=1)


def behaviour_log_prob(req: Requests, propensity: str = "conditional") -> np.ndarray:
    """``(R,)`` log-probability of each logged slate under the logging policy:
    ``sum_k log p_k`` over the request's ``(R, K)`` per-slot propensities (1 where no item
    was shown). ``propensity`` is what the dataset's propensities mean (``dataset.json``,
    :func:`training.eval.propensities.dataset_propensity`): the sum is a slate's
    log-probability only for ``conditional`` ones.

    Raises:
        ValueError: ``propensity`` not ``conditional`` (a product of marginals is not a
            slate's probability; unknown ones are not probabilities), no requests, or a
            propensity that is NaN, ``<= 0`` or ``> 1`` (named by request and slot).
    """
    check_propensity(propensity, "slate")
    p = np.asarray(req.propensity, dtype=np.float64)
    if p.size == 0:
        raise ValueError("req.propensity is empty: no logged requests")
    bad = ~((p > 0) & (p <= 1))  # NaN fails both comparisons
    if bad.any():
        r, k = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"req.propensity must lie in (0, 1]: {int(bad.sum())} value(s) do not, e.g. "
            f"{p[r, k]} at request {r}, slot {k}"
        )
    return np.log(p).sum(axis=1)


def ess(log_w: np.ndarray) -> float:
    """Effective sample size ``(sum w)^2 / sum w^2`` of weights given as logs, ``w = exp(log_w)``
    (shifted by ``max log_w`` first, so no overflow). ``(n,)`` -> a count in ``[1, n]``.

    Raises:
        ValueError: ``log_w`` empty, non-numeric, NaN, or with no finite entry.
    """
    lw = _numeric("log_w", log_w)
    _check_same_length(log_w=lw)
    _no_nan("log_w", lw)
    if not np.isfinite(lw.max()):
        raise ValueError(f"log_w needs finite entries (max log weight {lw.max()})")
    w = np.exp(lw - lw.max())
    return float(w.sum() ** 2 / np.dot(w, w))


def _capped_ess_share(log_ratio: np.ndarray, log_cap: float) -> float:
    w = np.exp(np.minimum(log_ratio, log_cap) - log_cap)
    return float(w.sum() ** 2 / np.dot(w, w) / w.size)


def choose_temperature(
    scores: np.ndarray,
    req: Requests,
    temperatures: Sequence[float],
    min_ess_share: float,
) -> dict[str, Any]:
    """The temperature and NCIS cap of a stochastic point-wise policy, from (valid) requests.

    ``T``: the grid value with the largest uncapped ESS of the slate weights (the policy
    closest to the logging policy in that sense). Cap ``c``: the largest quantile of that
    ``T``'s ratios, over :data:`CAP_QUANTILES` from the top, whose capped weights keep an ESS
    of at least ``min_ess_share`` of the requests (the smallest quantile if none does).

    Returns a dict: ``temperature``, ``log_cap``, ``cap_quantile``, ``valid_ess_share``
    (capped), ``grid`` (per temperature: uncapped ESS, its share, median log ratio).

    Raises:
        ValueError: ``temperatures`` empty or not all finite and > 0, ``min_ess_share`` not in
            ``(0, 1]``, or bad scores/propensities (:func:`slate_log_prob_from_scores`,
            :func:`behaviour_log_prob`).
    """
    if len(temperatures) == 0:
        raise ValueError("temperatures is empty")
    share_min = _number("min_ess_share", min_ess_share)
    if not 0 < share_min <= 1:
        raise ValueError(f"min_ess_share must be in (0, 1], got {min_ess_share}")
    lb = behaviour_log_prob(req)
    grid = []
    for temp in temperatures:
        lr = slate_log_prob_from_scores(scores, req, temp) - lb
        grid.append(
            {
                "temperature": float(temp),
                "ess": ess(lr),
                "ess_share": ess(lr) / lr.size,
                "median_log_ratio": float(np.median(lr)),
            }
        )
    best = max(grid, key=lambda g: g["ess"])
    lr = slate_log_prob_from_scores(scores, req, best["temperature"]) - lb
    q, log_cap, share = CAP_QUANTILES[-1], float(np.quantile(lr, CAP_QUANTILES[-1])), 0.0
    for q in CAP_QUANTILES:
        log_cap = float(np.quantile(lr, q))
        share = _capped_ess_share(lr, log_cap)
        if share >= min_ess_share:
            break
    return {
        "temperature": best["temperature"],
        "log_cap": log_cap,
        "cap_quantile": q,
        "valid_ess_share": share,
        "min_ess_share": min_ess_share,
        "n_requests": int(req.n_requests),
        "grid": grid,
    }


def ncis_estimate(
    log_ratio: np.ndarray,
    reward: np.ndarray,
    users: np.ndarray,
    log_cap: float,
    n_boot: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """NCIS with weights ``min(c, pi/mu)`` from log ratios, and a user-cluster bootstrap CI.

    The weights are rescaled by ``1/c`` (``exp(min(log_ratio, log c) - log c)`` in ``(0, 1]``)
    before :func:`training.eval.metrics.ncis` with cap 1: the same estimate, no overflow.
    ``log_cap = inf`` is no cap (self-normalised IPS); the weights are then rescaled by the
    largest ratio instead.

    Args:
        log_ratio: ``(n,)`` natural-log importance ratios ``log pi - log mu`` (``-inf`` allowed:
            the target never takes that slate).
        reward: ``(n,)`` finite rewards per slate.
        users: ``(n,)`` user ids (integers or strings), the bootstrap's clusters.
        log_cap: natural log of the cap, a number or ``inf``.

    Raises:
        ValueError: naming the argument: lengths differ, empty inputs, non-numeric dtypes,
            NaN or ``+inf`` log ratios, non-finite rewards, None/NaN user ids, ``log_cap`` NaN
            or ``-inf``, or every weight zero.
    """
    lr = _numeric("log_ratio", log_ratio)
    r = _numeric("reward", reward)
    u = _group_ids("users", users)
    _check_same_length(log_ratio=lr, reward=r, users=u)
    _no_nan("log_ratio", lr)
    if (lr == np.inf).any():
        raise ValueError("log_ratio contains +inf (a behaviour probability of 0?)")
    _finite("reward", r)
    cap = _number("log_cap", log_cap)
    if np.isnan(cap) or cap == -np.inf:
        raise ValueError(f"log_cap must be a number or inf, got {log_cap}")
    if not np.isfinite(lr.max()):
        raise ValueError("every log_ratio is -inf: the target takes none of the logged slates")
    shift = cap if np.isfinite(cap) else float(lr.max())
    w = np.exp(np.minimum(lr, cap) - shift)
    res = ncis(w, np.ones_like(w), r, cap=1.0)

    def stat(w_: np.ndarray, r_: np.ndarray) -> float:
        return float(np.dot(w_, r_) / w_.sum())

    _, lo, hi = bootstrap_ci(stat, w, r, n_boot=n_boot, rng=rng, groups=u)
    return {
        "value": res.value,
        "low": lo,
        "high": hi,
        "ess": res.ess,
        "n": res.n,
        "log_cap": float(log_cap),
        "clipped_fraction": float((lr > log_cap).mean()),
        "mean_logged_reward": float(r.mean()),
    }


def online_clicks_per_request(
    result: OnlineResult, arm: str, n_boot: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Clicks per request of an arm (total clicks / total requests) with a user-cluster
    bootstrap 95% interval."""
    s = result.per_session(arm)
    c = s["click"].astype(np.float64)
    q = s["requests"].astype(np.float64)

    def stat(c_: np.ndarray, q_: np.ndarray) -> float:
        return float(c_.sum() / q_.sum())

    v, lo, hi = bootstrap_ci(stat, c, q, n_boot=n_boot, rng=rng, groups=result.session_user)
    return {"value": v, "low": lo, "high": hi, "requests": int(q.sum())}


def compare(est: Mapping[str, float], online: Mapping[str, float]) -> dict[str, Any]:
    """``bias = NCIS - online`` with a normal-approximation interval from the two (independent)
    intervals' half-widths: ``h = sqrt(h_ncis^2 + h_online^2)``.

    Raises:
        ValueError: ``est`` or ``online`` lacks ``value``, ``low`` or ``high``, or one of them
            is not a finite number (named as ``est['low']`` etc.).
    """
    for name, d in (("est", est), ("online", online)):
        for key in ("value", "low", "high"):
            if key not in d:
                raise ValueError(f"{name} has no {key!r}")
            if not np.isfinite(_number(f"{name}[{key!r}]", d[key])):
                raise ValueError(f"{name}[{key!r}] must be finite, got {d[key]}")
    bias = est["value"] - online["value"]
    h = math.hypot((est["high"] - est["low"]) / 2, (online["high"] - online["low"]) / 2)
    return {
        "bias": bias,
        "low": bias - h,
        "high": bias + h,
        "rel_bias_pct": 100.0 * bias / online["value"] if online["value"] else math.nan,
        "agrees": bool(bias - h <= 0.0 <= bias + h),
    }
