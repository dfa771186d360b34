"""The supervised learning-to-rank baseline on watch time: LightGBM lambdarank (MMRF, Table 2).

MMRF's online A/B test compares against "a supervised learning-to-rank (LTR) baseline" (the
paper's ref. [11]); LightGBM's lambdarank is the industry's usual one. This module trains it
on the logged impressions and exposes it as scores (offline GAUC, NCIS) and, through
:class:`LTRPolicy`, as a policy of the simulator.

- Groups. One query group per logged request: its shown items, in slot order (lambdarank
  compares the items of one list with each other). Non-impressed candidates have no
  feedback and are left out. A request whose items share one grade adds no pair and so no
  gradient.
- Features. The field ids of each impression (22 with the default spec; the dataset's spec
  otherwise), the same featurisation as the point-wise baselines
  (:func:`training.data.features.build_requests`' ``imp_ids``: user, context, item and the
  list fields at the logged slot given the logged prefix). Fields of kind ``hash``,
  ``vocab`` and ``category`` are declared categorical to LightGBM (unordered codes); the
  others (``bucket``, ``count``, ``hour``) are ordered and enter as numbers
  (:func:`categorical_fields`). At serving time the policy recomputes the list fields slot
  by slot from the items already placed, as the point-wise policies do.
- Relevance (:func:`fit_grade_edges`, :func:`grade_watch_time`). Watch time in seconds is
  graded against edges fitted on the training split's impressions: the watch-time quantiles
  ``grade_quantiles`` (default 0.25, 0.5, 0.75, 0.9); an impression's grade is the number of
  edges at or below its watch time, so ``0`` (bottom quarter) to ``4`` (top tenth). Equal
  edges (many identical watch times) are merged. LightGBM's default gains ``2^g - 1`` weigh
  the grades in NDCG. The edges are saved with the model (``ltr.json``).
- Training. ``lgb.train`` with objective ``lambdarank``, NDCG at the list size on the valid
  split's groups for early stopping, deterministic and seeded; the best iteration is kept.

Simplified against a production LTR: no feature engineering beyond the shared ids, no
position-debiasing of the logged labels (the other baselines are not debiased either).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.features import DEFAULT_SPEC, FeatureSpec
from contract.schema import FEEDBACK
from training.data.features import SideTables, build_requests
from training.data.pipeline import Dataset, DatasetError
from training.data.validate import check_dataset
from training.eval.policies import PointwisePolicy, _SlotRanker
from training.harness.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Rule, apply_overrides
from training.harness.data import read_share, sample_fraction, split_impressions
from training.sim.config import ConfigError

__all__ = [
    "LTRConfig",
    "LTRModel",
    "Groups",
    "LTRPolicy",
    "categorical_fields",
    "evaluate_ltr",
    "fit_grade_edges",
    "grade_watch_time",
    "group_sizes",
    "main",
    "read_groups",
    "run",
    "train_ltr",
]

CATEGORICAL_KINDS = ("hash", "vocab", "category")
WATCH_TIME = FEEDBACK.index("watch_time")
# Streams of the sample draws (far from the world's and the harness's, training.sim.rng).
_STREAMS = {"train": 7101, "valid": 7102, "test": 7103}


@dataclass(frozen=True)
class LTRConfig:
    """LightGBM lambdarank settings and the relevance grading."""

    grade_quantiles: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    """Training-split watch-time quantiles that separate the grades (increasing, in (0, 1))."""
    num_leaves: int = 31
    """Leaves per tree."""
    learning_rate: float = 0.05
    """Shrinkage."""
    num_rounds: int = 300
    """Boosting rounds at most."""
    early_stopping: int = 30
    """Stop after this many rounds without a better valid NDCG (0: never)."""
    min_data_in_leaf: int = 20
    """Fewest impressions in a leaf."""
    train_impressions: int = 0
    """Training impressions to sample, whole sessions (0: the whole split)."""
    valid_impressions: int = 200_000
    """Valid impressions for early stopping and the NCIS temperature (0: all)."""
    threads: int = 1
    """LightGBM threads."""
    seed: int = 0
    """Seed of LightGBM and of the samples."""

    def __post_init__(self) -> None:
        q = tuple(float(x) for x in self.grade_quantiles)
        object.__setattr__(self, "grade_quantiles", q)
        if (
            not q
            or any(not 0 < x < 1 for x in q)
            or any(b <= a for a, b in zip(q, q[1:], strict=False))
        ):
            raise ValueError(f"grade_quantiles={q}: increasing values in (0, 1)")

    def with_overrides(self, **kw: Any) -> LTRConfig:
        return apply_overrides(self, kw, "ltr config", LTR_RULES)


LTR_RULES: dict[str, Rule] = {
    "num_leaves": Rule(lo=2),
    "learning_rate": POSITIVE,
    "num_rounds": AT_LEAST_1,
    "early_stopping": NON_NEGATIVE,
    "min_data_in_leaf": AT_LEAST_1,
    "train_impressions": NON_NEGATIVE,
    "valid_impressions": NON_NEGATIVE,
    "threads": AT_LEAST_1,
    "seed": NON_NEGATIVE,
}


# --- pure parts -----------------------------------------------------------------------------
def fit_grade_edges(watch_time: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Grade edges: the ``quantiles`` of ``watch_time`` (seconds, finite), duplicates merged.

    Raises ValueError on an empty or non-finite input."""
    w = np.asarray(watch_time, dtype=np.float64)
    if w.size == 0 or not np.isfinite(w).all():
        raise ValueError("fit_grade_edges needs a non-empty, finite watch_time")
    return np.unique(np.quantile(w, np.asarray(quantiles, dtype=np.float64)))


def grade_watch_time(watch_time: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``(G,)`` int32 relevance grades: the number of ``edges`` at or below each watch time
    (``0 .. len(edges)``). Raises ValueError for NaN watch times or unsorted edges."""
    w = np.asarray(watch_time, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    if np.isnan(w).any():
        raise ValueError("watch_time contains NaN")
    if np.any(np.diff(e) <= 0):
        raise ValueError(f"edges must be strictly increasing, got {e.tolist()}")
    return np.searchsorted(e, w, side="right").astype(np.int32)


def group_sizes(imp_req: np.ndarray) -> np.ndarray:
    """Query-group sizes of impressions listed request by request: ``imp_req (G,)``, the
    request of each impression (non-decreasing) -> ``(Q,)`` counts of each run of equal values.
    Raises ValueError when the impressions of a request are not contiguous."""
    r = np.asarray(imp_req)
    if r.size == 0:
        return np.zeros(0, dtype=np.int64)
    if np.any(np.diff(r) < 0):
        raise ValueError("impressions are not grouped by request (imp_req decreases)")
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    return np.diff(np.r_[starts, r.size])


def categorical_fields(spec: FeatureSpec = DEFAULT_SPEC) -> list[int]:
    """Columns of the ``(G, n_fields)`` ids that LightGBM treats as categorical."""
    return [i for i, f in enumerate(spec.fields) if f.kind in CATEGORICAL_KINDS]


# --- data -----------------------------------------------------------------------------------
@dataclass
class Groups:
    """Impressions of a split sample, grouped by request."""

    x: np.ndarray  # (G, 22) int64 field ids
    feedback: np.ndarray  # (G, 7) FEEDBACK order
    user: np.ndarray  # (G,)
    sizes: np.ndarray  # (Q,) impressions per request, in order

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def read_groups(ds: Dataset, split: str, side: SideTables, budget: int, seed: int) -> Groups:
    """The impressions of a hashed share ``budget / impressions`` of ``split``'s sessions
    (all for ``budget`` 0), shard by shard, with their request groups. Raises
    :class:`ConfigError` when the sample is empty."""
    frac = sample_fraction(budget, split_impressions(ds, split))
    xs, fbs, us, sz = [], [], [], []
    for path in ds.paths(split):
        t = read_share(path, "session_id", frac, seed, _STREAMS[split])
        if t.num_rows == 0:
            continue
        req = build_requests(t, side)
        xs.append(req.imp_ids)
        fbs.append(req.feedback[req.imp_req, req.imp_slot])
        us.append(req.user_id[req.imp_req])
        sz.append(group_sizes(req.imp_req))
    if not xs:
        raise ConfigError(f"the {split} sample is empty (budget {budget})")
    return Groups(np.concatenate(xs), np.concatenate(fbs), np.concatenate(us),
                  np.concatenate(sz))  # fmt: skip


# --- the model ------------------------------------------------------------------------------
class LTRModel:
    """A trained lambdarank booster with its grading and feature spec; ``score(x (N, F))
    -> (N,)`` with ``F`` the spec's field count (22 for the default spec)."""

    def __init__(self, booster: Any, edges: np.ndarray, cfg: LTRConfig, info: dict[str, Any],
                 spec: FeatureSpec = DEFAULT_SPEC):  # fmt: skip
        self.booster = booster
        self.edges = np.asarray(edges, dtype=np.float64)
        self.cfg = cfg
        self.info = info
        self.spec = spec

    def score(self, x: np.ndarray) -> np.ndarray:
        """Ranking scores (higher first) of impressions' field ids ``(N, F)``: ``(N,)``
        float64. Raises ValueError for another number of fields than the spec's."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.spec.n_fields:
            raise ValueError(f"x {x.shape}: expected (N, {self.spec.n_fields}) field ids")
        if x.shape[0] == 0:
            return np.zeros(0)
        it = self.booster.best_iteration or None
        return np.asarray(self.booster.predict(x, num_iteration=it), dtype=np.float64)

    def save(self, folder: str | Path) -> None:
        """``folder/model.txt`` (LightGBM's text format) and ``folder/ltr.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / "model.txt"))
        meta = {"edges": self.edges.tolist(), "config": dataclasses.asdict(self.cfg),
                "info": self.info, "feature_spec": self.spec.to_dict()}  # fmt: skip
        (folder / "ltr.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> LTRModel:
        import lightgbm as lgb

        folder = Path(folder)
        for name in ("model.txt", "ltr.json"):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder / name} is missing: not an LTR run folder")
        meta = json.loads((folder / "ltr.json").read_text())
        booster = lgb.Booster(model_file=str(folder / "model.txt"))
        booster.best_iteration = int(meta["info"].get("best_iteration", 0))
        cfg = LTRConfig(**meta["config"])
        fs = meta.get("feature_spec")  # absent in folders written before specs were saved
        spec = DEFAULT_SPEC if fs is None else FeatureSpec.from_dict(fs)
        return cls(booster, np.asarray(meta["edges"]), cfg, meta["info"], spec)


def _params(cfg: LTRConfig, list_size: int) -> dict[str, Any]:
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [list_size],
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "min_data_in_leaf": cfg.min_data_in_leaf,
        "num_threads": cfg.threads,
        "seed": cfg.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }


def train_ltr(
    train: Groups,
    valid: Groups | None,
    cfg: LTRConfig,
    list_size: int,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> LTRModel:
    """Fit the grade edges on ``train``'s watch time and the lambdarank booster on its groups
    (field ids of ``spec``); ``valid`` (optional) early-stops on NDCG@``list_size``. Raises
    ValueError when the ids do not have the spec's field count."""
    if train.x.shape[1] != spec.n_fields:
        raise ValueError(f"train ids have {train.x.shape[1]} fields, the spec {spec.n_fields}")
    import lightgbm as lgb

    edges = fit_grade_edges(train.feedback[:, WATCH_TIME], cfg.grade_quantiles)
    cats = categorical_fields(spec)

    def dataset(g: Groups, ref: Any = None) -> Any:
        y = grade_watch_time(g.feedback[:, WATCH_TIME], edges)
        return lgb.Dataset(g.x, label=y, group=g.sizes, categorical_feature=cats,
                           reference=ref, free_raw_data=False)  # fmt: skip

    t0 = time.perf_counter()
    dtrain = dataset(train)
    sets: list[Any] = [dtrain]
    callbacks: list[Callable[..., Any]] = []
    if valid is not None:
        sets.append(dataset(valid, dtrain))
        if cfg.early_stopping:
            callbacks.append(lgb.early_stopping(cfg.early_stopping, verbose=False))
    evals: dict[str, Any] = {}
    callbacks.append(lgb.record_evaluation(evals))
    booster = lgb.train(_params(cfg, list_size), dtrain, num_boost_round=cfg.num_rounds,
                        valid_sets=sets, valid_names=["train", "valid"][: len(sets)],
                        callbacks=callbacks)  # fmt: skip
    key = f"ndcg@{list_size}"
    best = int(booster.best_iteration or booster.current_iteration())
    info = {
        "best_iteration": best,
        "rounds": int(booster.current_iteration()),
        "train_impressions": train.n,
        "train_groups": int(train.sizes.size),
        "grades": np.bincount(
            grade_watch_time(train.feedback[:, WATCH_TIME], edges), minlength=len(edges) + 1
        ).tolist(),  # fmt: skip
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if "valid" in evals:
        info[f"valid_{key}"] = float(evals["valid"][key][best - 1])
    return LTRModel(booster, edges, cfg, info, spec)


# --- evaluation -----------------------------------------------------------------------------
def evaluate_ltr(
    model: LTRModel,
    ds: Dataset,
    side: SideTables,
    split: str = "test",
    budget: int = 200_000,
    ncis_requests: int = 400,
    temperatures: Sequence[float] = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0),
    min_ess_share: float = 0.05,
) -> dict[str, Any]:
    """Offline figures of the LTR scores on ``split``.

    - ``gauc_<aspect>`` for the binary aspects (hate: of the negated score) and
      ``corr_watch_time`` (Pearson, seconds), on a ``budget``-impression sample;
    - NCIS per aspect (``ncis``): the policy is ``softmax(score / T)`` per slot over the
      candidates not yet placed (:class:`LTRPolicy`, the slate
      probability the product over slots, :mod:`training.eval.slates`); ``T`` and the cap
      are chosen on valid requests (:func:`training.eval.slates.choose_temperature`), the
      estimate is on ``ncis_requests`` requests of ``split``: per aspect the capped-weighted
      mean of the aspect summed over each logged slate, beside the logged (on-policy) mean.
    An undefined GAUC (one class for every user) is ``None``.
    """
    from training.eval.metrics import gauc, ncis_per_aspect
    from training.eval.samples import read_requests
    from training.eval.slates import (
        behaviour_log_prob,
        choose_temperature,
        logged_slot_scores,
        slate_log_prob_from_scores,
    )

    g = read_groups(ds, split, side, budget, model.cfg.seed)
    s = model.score(g.x)
    res: dict[str, Any] = {"split": split, "impressions": g.n}
    for j, a in enumerate(FEEDBACK):
        if a == "watch_time":
            res["corr_watch_time"] = float(np.corrcoef(s, g.feedback[:, j])[0, 1])
            continue
        try:
            res[f"gauc_{a}"] = gauc(g.user, g.feedback[:, j], -s if a == "hate" else s)[0]
        except ValueError:
            res[f"gauc_{a}"] = None
    policy = LTRPolicy(model, side)
    valid = read_requests(ds, "valid", side, ncis_requests, model.cfg.seed, _STREAMS["valid"])
    t = choose_temperature(logged_slot_scores(policy, valid), valid, temperatures, min_ess_share)
    req = read_requests(ds, split, side, ncis_requests, model.cfg.seed, _STREAMS[split])
    lr = slate_log_prob_from_scores(logged_slot_scores(policy, req), req, t["temperature"])
    lr = lr - behaviour_log_prob(req)
    w = np.exp(np.minimum(lr, t["log_cap"]) - t["log_cap"])  # min(c, pi/mu) / c, in (0, 1]
    per_slate = {a: req.feedback[:, :, j].sum(axis=1).astype(np.float64)
                 for j, a in enumerate(FEEDBACK)}  # fmt: skip
    est = ncis_per_aspect(w, np.ones_like(w), per_slate, cap=1.0)
    res["ncis"] = {
        "temperature": t["temperature"],
        "cap_quantile": t["cap_quantile"],
        "requests": int(req.n_requests),
        "ess": next(iter(est.values())).ess,
        "value": {a: r.value for a, r in est.items()},
        "logged": {a: float(v.mean()) for a, v in per_slate.items()},
    }
    return res


# --- the policy -----------------------------------------------------------------------------
class LTRPolicy(PointwisePolicy):
    """The learning-to-rank baseline as a simulator policy: at each slot every unplaced
    candidate is scored by ``model.score`` (an :class:`LTRModel`, or anything with
    ``score(ids (N, n_fields)) -> (N,)``) from the user, context, item and list ids given the
    items already placed, exactly as :class:`~training.eval.policies.PointwisePolicy` scores a
    point-wise model; greedy, or a softmax draw at ``temperature``. Its ``logged_scores`` feed
    :mod:`training.eval.slates` (slate probabilities for NCIS)."""

    def __init__(self, model: Any, side: SideTables, temperature: float = 0.0, seed: int = 0):
        _SlotRanker.__init__(self, side, temperature, seed)
        self.scorer = model

    def _score_ids(self, user_ctx: np.ndarray, cand12: np.ndarray) -> np.ndarray:
        b, c, _ = cand12.shape
        uc = np.broadcast_to(user_ctx[:, None], (b, c, user_ctx.shape[1]))
        ids = np.concatenate([uc, cand12], axis=-1)
        return self.scorer.score(ids.reshape(b * c, -1)).reshape(b, c)


# --- run and command line -------------------------------------------------------------------
def run(
    data: str | Path, out: str | Path, cfg: LTRConfig, eval_split: str | None = "test"
) -> dict[str, Any]:
    """Train on the train split (early stopping on valid), save to ``out`` (``model.txt``,
    ``ltr.json``), evaluate on ``eval_split``; writes and returns ``out/train.json``."""
    ds = Dataset.open(data)
    side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)
    k = int(ds.meta.get("list_size", 10))
    train = read_groups(ds, "train", side, cfg.train_impressions, cfg.seed)
    valid = read_groups(ds, "valid", side, cfg.valid_impressions, cfg.seed)
    model = train_ltr(train, valid, cfg, k, ds.spec)
    out = Path(out)
    model.save(out)
    summary: dict[str, Any] = {"method": "ltr", "config": dataclasses.asdict(cfg), **model.info,
                               "grade_edges": model.edges.tolist()}  # fmt: skip
    if eval_split:
        summary["eval"] = evaluate_ltr(model, ds, side, eval_split)
    (out / "train.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    from training.harness.runfolder import output_folder
    from training.sim.config import parse_overrides

    p = argparse.ArgumentParser(
        prog="python -m training.baselines.ltr",
        description="Train the LightGBM lambdarank learning-to-rank baseline on watch time; "
        "writes model.txt, ltr.json and train.json to --out.",
    )
    p.add_argument("--data", required=True, help="dataset folder (ranker simulate / kuairand)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an LTRConfig field, e.g. --set num_rounds=100")  # fmt: skip
    p.add_argument("--eval-split", default="test", choices=("valid", "test", "none"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    args = p.parse_args(argv)
    try:
        cfg = LTRConfig().with_overrides(**parse_overrides(args.set))
        check_dataset(args.data)  # the whole dataset, as every trainer checks it at start
        with output_folder(args.out, overwrite=args.overwrite, what="run folder"):
            s = run(
                args.data, args.out, cfg, None if args.eval_split == "none" else args.eval_split
            )
    except (ConfigError, DatasetError, FileExistsError, FileNotFoundError) as e:
        print(f"ltr: error: {e}", file=sys.stderr)
        return 2
    brief = {k: s[k] for k in ("best_iteration", "train_impressions", "seconds")}
    brief["eval"] = s.get("eval")
    print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
