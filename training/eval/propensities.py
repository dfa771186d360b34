"""What a dataset's propensities mean, and the off-policy estimators each meaning allows.

``dataset.json`` key ``propensity`` (README "Bring your own logs"):

- ``conditional``: a row's propensity is the probability of its item at its slot given the
  items in the earlier slots (the contract's meaning, :mod:`contract.schema`; the simulator's
  logging policy writes it exactly). A list's probability is the product of its rows', so
  slate estimators (slate NCIS, :func:`training.eval.metrics.slate_log_prob`) are valid.
- ``marginal``: the probability of the item at that slot over the policy's lists (a bandit
  log's per-position propensity). A product of marginals is not a list's probability, so only
  per-slot estimators are valid: item-position IPS (:func:`item_position_ncis`).
- ``unknown``: no propensity-weighted estimate is valid (KuaiRand; a log without them).

:func:`check_propensity` refuses an estimator the meaning does not support, with the reason.
Pure numpy; no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from training.sim.config import ConfigError

PROPENSITY_KINDS = ("conditional", "marginal", "unknown")


def check_propensity(kind: str, estimator: str) -> None:
    """Refuse an estimator the dataset's propensities do not support.

    ``estimator``: ``"slate"`` (a list's probability as the product of its rows'
    propensities: needs ``conditional``) or ``"position"`` (item-position IPS, the logged item
    at its slot: needs ``marginal``). Raises ValueError with the reason otherwise.
    """
    if kind not in PROPENSITY_KINDS:
        raise ValueError(f"propensity {kind!r}: expected one of {PROPENSITY_KINDS}")
    if kind == "unknown":
        raise ValueError("the dataset's propensities are unknown: no propensity-weighted "
                         "estimate can be made")  # fmt: skip
    need = {"slate": "conditional", "position": "marginal"}.get(estimator)
    if need is None:
        raise ValueError(f"estimator {estimator!r}: expected slate or position")
    if kind != need:
        why = (
            "a product of marginal propensities is not a list's probability"
            if estimator == "slate"
            else "a conditional propensity is not the probability of the item at that slot "
            "over the policy's lists (except at the first slot)"
        )
        raise ValueError(f"{estimator} estimator needs {need} propensities, the dataset's are "
                         f"{kind}: {why}")  # fmt: skip


def dataset_propensity(meta: Mapping[str, Any]) -> str:
    """What a dataset's propensity column means: ``dataset.json`` key ``propensity``; a
    dataset without it is simulated (``conditional``, exact); the KuaiRand converter's
    text that begins ``none`` is ``unknown``. Raises ConfigError for anything else."""
    v = meta.get("propensity", "conditional")
    if isinstance(v, str) and v.startswith("none"):
        return "unknown"
    if v not in PROPENSITY_KINDS:
        raise ConfigError(f"dataset.json propensity {v!r}: expected one of {PROPENSITY_KINDS}")
    return str(v)


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(scores / T)`` over the last axis (``-inf`` entries get 0)."""
    z = np.asarray(scores, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def ess(w: np.ndarray) -> float:
    """Effective sample size ``(sum w)^2 / sum w^2`` of non-negative weights."""
    w = np.asarray(w, dtype=np.float64)
    return float(w.sum() ** 2 / np.dot(w, w)) if np.dot(w, w) > 0 else 0.0


def item_position_ncis(
    target: np.ndarray, behaviour: np.ndarray, reward: np.ndarray, live: np.ndarray, cap: float
) -> dict[str, Any]:
    """Item-position NCIS: per slot ``k``, with ``w = min(cap, pi_k / mu_k)`` over the
    requests that logged slot ``k``::

        V_k = sum_r w_rk r_rk / sum_r w_rk,      V = sum_k V_k

    the target's expected reward per request (the sum of its per-slot values) under the
    item-position model (a slot's reward depends on the item at that slot only).

    Args:
        target: ``(R, K)`` the target's probability of the logged item at its slot, >= 0.
        behaviour: ``(R, K)`` the logged marginal propensities, in (0, 1] where ``live``.
        reward: ``(R, K)`` the aspect's value at each slot.
        live: ``(R, K)`` bool, the slots the log holds.
        cap: cap on the ratio, > 0 (``np.inf``: none).
    Returns ``value``, ``per_slot`` (``V_k``, NaN for a slot never logged or with zero weight),
    ``ess`` per slot, ``logged`` (the plain per-slot means summed: the logging policy's value).
    Raises ValueError for shape mismatches, ``cap <= 0`` or behaviour outside (0, 1] on live
    slots.
    """
    pi, mu, r, m = (np.asarray(a) for a in (target, behaviour, reward, live))
    if not (pi.shape == mu.shape == r.shape == m.shape) or pi.ndim != 2:
        raise ValueError(f"shapes differ: {pi.shape}, {mu.shape}, {r.shape}, {m.shape}")
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    m = m.astype(bool)
    if ((mu[m] <= 0) | (mu[m] > 1) | ~np.isfinite(mu[m])).any():
        raise ValueError("behaviour propensities must be in (0, 1] on logged slots")
    w = np.where(m, np.minimum(np.where(m, pi, 0.0) / np.where(m, mu, 1.0), cap), 0.0)
    per_slot, ess_k, logged = [], [], []
    for k in range(pi.shape[1]):
        wk, rk, mk = w[:, k], r[:, k], m[:, k]
        s = wk.sum()
        per_slot.append(float(np.dot(wk, rk) / s) if s > 0 else float("nan"))
        ess_k.append(ess(wk))
        logged.append(float(rk[mk].mean()) if mk.any() else float("nan"))
    return {"value": float(np.nansum(per_slot)), "per_slot": per_slot, "ess": ess_k,
            "logged": float(np.nansum(logged)), "cap": float(cap)}  # fmt: skip
