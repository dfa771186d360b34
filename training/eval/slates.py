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
from training.eval.metrics import bootstrap_ci, ncis
from training.eval.online import OnlineResult
from training.eval.policies import OnlineFeatures, PointwisePolicy, RequestInputs
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
    """
    k = scores.shape[1]
    live = np.arange(k)[None, :] < req.n_shown[:, None]  # (R, K)
    z = scores.astype(np.float64) / float(temperature)
    z = np.where(live[:, :, None], z, 0.0)
    m = z.max(axis=2, keepdims=True)
    lse = m[:, :, 0] + np.log(np.exp(z - m).sum(axis=2))
    chosen = z[:, np.arange(k), np.arange(k)]  # the logged item of slot t is column t
    return np.where(live, chosen - lse, 0.0).sum(axis=1)


def behaviour_log_prob(req: Requests) -> np.ndarray:
    """``(R,)`` log-probability of each logged slate under the logging policy."""
    return np.log(req.propensity).sum(axis=1)


def ess(log_w: np.ndarray) -> float:
    w = np.exp(log_w - log_w.max())
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
    """
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
    """
    lr = np.asarray(log_ratio, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    w = np.exp(np.minimum(lr, log_cap) - log_cap)
    res = ncis(w, np.ones_like(w), r, cap=1.0)

    def stat(w_: np.ndarray, r_: np.ndarray) -> float:
        return float(np.dot(w_, r_) / w_.sum())

    _, lo, hi = bootstrap_ci(stat, w, r, n_boot=n_boot, rng=rng, groups=users)
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
    intervals' half-widths: ``h = sqrt(h_ncis^2 + h_online^2)``."""
    bias = est["value"] - online["value"]
    h = math.hypot((est["high"] - est["low"]) / 2, (online["high"] - online["low"]) / 2)
    return {
        "bias": bias,
        "low": bias - h,
        "high": bias + h,
        "rel_bias_pct": 100.0 * bias / online["value"] if online["value"] else math.nan,
        "agrees": bool(bias - h <= 0.0 <= bias + h),
    }
