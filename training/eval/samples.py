"""Samples of a dataset's splits for the baselines: impression arrays with feedback, whole logged
requests, behaviour-cloning rows and MMRF-style sample weights."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contract.schema import FEEDBACK
from training.data.features import Requests, SideTables, build_requests, candidate_ids
from training.data.pipeline import Dataset
from training.eval.propensities import check_propensity, dataset_propensity
from training.harness.data import (
    read_share,
    sample_fraction,
    split_impressions,
)
from training.sim.config import ConfigError

#: MMRF-style sample weights: ``w = max(0, 1 + sum_a MMRF_WEIGHTS[a] * x_a)`` with
#: ``x_watch_time = min(watch_time / WATCH_NORM_S, 1)`` and ``hate`` entering negatively.
#: The rarer and stronger the signal, the larger its weight (follow > comment > like); a long
#: view and the watched share of a minute add up to one unit; a hate takes half a unit away.
MMRF_WEIGHTS: dict[str, float] = {
    "like": 1.0,
    "follow": 2.0,
    "comment": 1.5,
    "long_view": 0.5,
    "watch_time": 0.5,
    "hate": -0.5,
}
#: Watch seconds that count as a full unit in :func:`mmrf_weights`.
WATCH_NORM_S = 60.0

# Streams of the harness's own hashed draws (far from the world's, see training.sim.rng).
_S_TRAIN, _S_VALID, _S_TEST, NCIS_VALID_STREAM, NCIS_TEST_STREAM = 7001, 7002, 7003, 7004, 7005
_SPLIT_STREAM = {"train": _S_TRAIN, "valid": _S_VALID, "test": _S_TEST}


# --------------------------------------------------------------------------------------------
# labels and rows
# --------------------------------------------------------------------------------------------


def mmrf_weights(feedback: Mapping[str, np.ndarray]) -> np.ndarray:
    """MMRF-style sample weights of impressions from their feedback aspects.

    ``w = max(0, 1 + 1.0 like + 2.0 follow + 1.5 comment + 0.5 long_view
    + 0.5 min(watch_time / 60 s, 1) - 0.5 hate)`` (weights: :data:`MMRF_WEIGHTS`).

    Args:
        feedback: aspect -> ``(G,)`` values for ``like``, ``follow``, ``comment``,
            ``long_view``, ``hate`` (0/1) and ``watch_time`` (seconds).
    Returns:
        ``(G,)`` float64 non-negative weights.
    """
    missing = [a for a in MMRF_WEIGHTS if a not in feedback]
    if missing:
        raise ValueError(f"feedback lacks aspects {missing}")
    w = np.ones(np.asarray(feedback["like"]).shape, dtype=np.float64)
    for name, coef in MMRF_WEIGHTS.items():
        x = np.asarray(feedback[name], dtype=np.float64)
        if name == "watch_time":
            x = np.minimum(np.maximum(x, 0.0) / WATCH_NORM_S, 1.0)
        w += coef * x
    return np.maximum(w, 0.0)


def feedback_dict(fb: np.ndarray) -> dict[str, np.ndarray]:
    return {name: fb[:, j] for j, name in enumerate(FEEDBACK)}


def bc_rows(
    req: Requests, n_neg: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Behaviour-cloning rows of logged requests: impressed = 1, non-impressed = 0.

    Positives: every impression with its own ids (slot and logged prefix). Negatives: per
    request, ``n_neg`` non-impressed candidates drawn uniformly with replacement, each placed
    at a uniformly drawn slot ``t`` of the shown list (list ids from the logged prefix before
    ``t``), weighted ``(n_cand - n_shown) / n_neg`` so that the loss is that of *all* logged
    candidates in expectation.

    Returns ``(x (N, 22), y (N,), w (N,))``.
    """
    x_pos = req.imp_ids
    ok = np.flatnonzero((req.n_cand > req.n_shown) & (req.n_shown > 0))
    if n_neg == 0 or ok.size == 0:
        n = x_pos.shape[0]
        return x_pos, np.ones(n, np.float32), np.ones(n, np.float64)
    r = np.repeat(ok, n_neg)
    n_other = req.n_cand[r] - req.n_shown[r]
    col = req.n_shown[r] + np.floor(rng.random(r.size) * n_other).astype(np.int64)
    t = np.floor(rng.random(r.size) * req.n_shown[r]).astype(np.int64)
    ids12 = candidate_ids(req, r, t, cols=col[:, None])[:, 0]
    x_neg = np.concatenate([req.user_ctx[r], ids12], axis=1).astype(np.int64)
    x = np.concatenate([x_pos, x_neg])
    y = np.r_[np.ones(x_pos.shape[0]), np.zeros(x_neg.shape[0])].astype(np.float32)
    w = np.r_[np.ones(x_pos.shape[0]), n_other / n_neg].astype(np.float64)
    return x, y, w


# --------------------------------------------------------------------------------------------
# reading samples of a split
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """Impression arrays of a split sample (and BC rows when asked for)."""

    x: np.ndarray  # (G, 22) int64
    feedback: np.ndarray  # (G, 7) float32, FEEDBACK order
    user: np.ndarray  # (G,)
    bc_x: np.ndarray | None = None
    bc_y: np.ndarray | None = None
    bc_w: np.ndarray | None = None

    @property
    def click(self) -> np.ndarray:
        return self.feedback[:, FEEDBACK.index("click")]

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def read_sample(
    ds: Dataset,
    split: str,
    side: SideTables,
    budget: int,
    seed: int,
    key: str,
    bc_negatives: int = 0,
    list_size: int | None = None,
) -> Sample:
    """Impressions of a random share of ``split``'s sessions or users, shard by shard.

    ``key`` is ``"session_id"`` or ``"user_id"``: which rows are kept together. The share is
    ``budget / impressions of the split`` (all for ``budget = 0``), drawn by hashing the key
    with ``seed``, so it is the same on every run.
    """
    frac = sample_fraction(budget, split_impressions(ds, split))
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
    xs, fbs, us, bx, by, bw = [], [], [], [], [], []
    for path in ds.paths(split):
        t = read_share(path, key, frac, seed, _SPLIT_STREAM[split])
        if t.num_rows == 0:
            continue
        req = build_requests(t, side, list_size)
        xs.append(req.imp_ids)
        fbs.append(req.feedback[req.imp_req, req.imp_slot])
        us.append(req.user_id[req.imp_req])
        if bc_negatives:
            a, b, c = bc_rows(req, bc_negatives, rng)
            bx.append(a)
            by.append(b)
            bw.append(c)
        del req
    if not xs:
        raise ConfigError(f"{split} sample is empty (budget {budget})")
    s = Sample(np.concatenate(xs), np.concatenate(fbs), np.concatenate(us))
    if bc_negatives:
        s.bc_x, s.bc_y, s.bc_w = np.concatenate(bx), np.concatenate(by), np.concatenate(bw)
    return s


def read_requests(
    ds: Dataset, split: str, side: SideTables, n_requests: int, seed: int, stream: int,
    list_size: int | None = None,
) -> Requests:  # fmt: skip
    """Whole logged requests (all candidates) of a random share of ``split``'s users."""
    k = list_size or int(ds.meta.get("list_size", 10))
    frac = sample_fraction(n_requests * k, split_impressions(ds, split))
    tables = [read_share(p, "user_id", frac, seed, stream) for p in ds.paths(split)]
    return build_requests(pa.concat_tables(tables), side, list_size)


def logged_slates(ds: Dataset, split: str) -> dict[str, np.ndarray]:
    """Per logged request of ``split``: user, clicks, and the log-probability of its slate
    under the logging policy (sum of log logged propensities). Raises ValueError unless the
    dataset's propensities are ``conditional`` (:func:`training.eval.propensities.
    check_propensity`: a sum of log marginals is not a slate's log-probability)."""
    check_propensity(dataset_propensity(ds.meta), "slate")
    cols = ["request_id", "user_id", "position", "propensity", "click"]
    users, rewards, lps = [], [], []
    for path in ds.paths(split):
        t = pq.read_table(path, columns=cols)
        t = t.filter(pc.greater_equal(t.column("position"), 0))
        rid = t.column("request_id").to_numpy()
        # Rows are grouped by request (sessions in order, slots in order).
        start = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
        click = t.column("click").to_numpy(zero_copy_only=False).astype(np.float64)
        lp = np.log(t.column("propensity").to_numpy(zero_copy_only=False).astype(np.float64))
        users.append(t.column("user_id").to_numpy()[start])
        rewards.append(np.add.reduceat(click, start))
        lps.append(np.add.reduceat(lp, start))
    return {
        "user": np.concatenate(users),
        "reward": np.concatenate(rewards),
        "log_prob": np.concatenate(lps),
    }
