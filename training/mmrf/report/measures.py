"""The MMRF report's measures of one seed: the offline table (GAUC and NCIS per aspect of every
row), the online A/B test against the LTR control, and the feedback model's quality.

Offline (Table 1). Every row is a scorer of the logged candidates at each shown slot, given
the logged prefix (``logged_scores(req, r, t) -> (len(r), C)``): point-wise models and the LTR
through their simulator policies, the multi-agent runs through :class:`ActorScores` (the served
score ``net.scores``: the WatchTime agent's for MMRF, Pareto's weighted mix). On a user sample
of the test split's logged requests:

- GAUC per aspect of the score at the logged slot: click, like, follow, comment, long_view on
  their labels; hate of the *negated* score (ranking hated items low is good); watch time on
  the label "watch time above the sample's median" (the paper does not say how it makes its
  WatchTime GAUC binary; this is our choice).
- NCIS per aspect: the row as a stochastic policy, ``softmax(score / T)`` slot by slot over the
  unplaced candidates (the slate probability the product over slots), ``T`` and the cap chosen
  on the *valid* split (:func:`training.eval.slates.choose_temperature`), the capped weights
  applied to each aspect summed over the logged slate (per request, the aspect's units).

Online (Table 2): :func:`training.eval.online.run_online` on the test days, fresh sessions,
the same users for every arm (``mmrf_bundle``: the exported actor through the runtime's list
builder, :class:`~training.eval.policies.BundlePolicy`); per user watch time (s), depth
(impressions), follows and comments, with the relative change against the LTR control and
against the logging policy (paired delta-method intervals, never below -100%:
:func:`training.harness.stats.relative_change`).

Feedback model (MMRF's M, the chosen lambda's run): per-aspect AUC and watch-time error on the
test split's logged impressions; a probe replays logging-policy sessions of the test days
(:class:`FeedbackProbe`) and at each request scores every candidate at slot 0 with M beside the
world's ground truth (:meth:`training.sim.env.Env.expected`, which a real system never sees):
AUC of M against labels drawn from the truth, on the candidates the logging policy did not
show; and the uncertainty ``KL(r || r')`` (mean over aspects) by the item's exposure count in
the training split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from contract.schema import FEEDBACK
from training.data.features import SideTables, candidate_ids
from training.drl.batches import history
from training.eval.metrics import auc, gauc
from training.harness.stats import nonneg_mean_ci, relative_change
from training.mmrf.networks import encode_unique
from training.mmrf.report.plan import CONTROL, TABLE1_ROWS, MMRFReportConfig

Log = Callable[[str], None]
#: Sample streams of this report (far from the other reports' and the world's).
VALID_STREAM, TEST_STREAM, PROBE_STREAM, LABEL_STREAM = 8101, 8102, 8103, 8104
#: Online metrics of Table 2: name -> per-user field of :class:`~training.eval.online.OnlineResult`.
ONLINE_FIELDS = {"watch_time": "watch_time", "depth": "impressions", "follow": "follow",
                 "comment": "comment"}  # fmt: skip


def load_trainer(run_dir: Path, side: SideTables) -> Any:
    """The trainer (agents ``net`` and feedback model ``model``, eval mode, CPU) of a finished
    ``ranker mmrf-train`` run of any variant or baseline."""
    from training.mmrf.rewards import RewardScale
    from training.mmrf.train import MMRFConfig, make_trainer

    sd = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg_d: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                             for k, v in sd["cfg"].items()}  # fmt: skip
    cfg = MMRFConfig(**cfg_d)
    trainer = make_trainer(cfg, side, RewardScale.from_dict(sd["reward_scale"]))
    trainer.load_state_dict(sd)
    trainer.net.eval()
    trainer.model.eval()
    return trainer


class ActorScores:
    """A multi-agent run's served score of every logged candidate at slot ``t`` of requests
    ``r`` (state: the session's logged impressions before that slot), ``(len(r), C)``."""

    def __init__(self, net: Any, memory: int) -> None:
        self.net, self.memory = net.eval(), memory

    @torch.no_grad()
    def logged_scores(self, req: Any, r: np.ndarray, t: np.ndarray) -> np.ndarray:
        g = req.imp_start[r] + t
        hist, mask = history(req, g, self.memory)
        enc = encode_unique(self.net.encode, torch.from_numpy(hist))
        s = self.net.state(enc, torch.from_numpy(mask), torch.from_numpy(req.user_ctx[r]))
        cand = torch.from_numpy(candidate_ids(req, r, t))
        return self.net.scores(s, cand).float().numpy()


@dataclass
class SeedModels:
    """One seed's world, data and trained rows (loaded lazily)."""

    cfg: MMRFReportConfig
    seed: int
    wcfg: Any
    ds: Any
    side: SideTables
    rl_dirs: dict[str, Path]
    pointwise: Any  # the baselines stages' SeedContext
    ltr: Any
    drl: Any
    bundle: Path | None = None

    def __post_init__(self) -> None:
        self._trainers: dict[str, Any] = {}

    def trainer(self, name: str) -> Any:
        if name not in self._trainers:
            self._trainers[name] = load_trainer(self.rl_dirs[name], self.side)
        return self._trainers[name]

    def scorer(self, row: str) -> Any:
        """The logged-slot scorer of a Table 1 row."""
        from training.baselines.ltr import LTRPolicy
        from training.eval.policies import PointwisePolicy
        from training.eval.slates import Chunked

        kind, name = TABLE1_ROWS[row]
        if kind == "pointwise":
            return PointwisePolicy(Chunked(self.pointwise.model(name)), self.side)
        if kind == "ltr":
            return LTRPolicy(self.ltr, self.side)
        tr = self.trainer(name)
        return ActorScores(tr.net, tr.cfg.memory)

    def requests(self, split: str) -> Any:
        from training.eval.samples import read_requests

        stream = VALID_STREAM if split == "valid" else TEST_STREAM
        return read_requests(self.ds, split, self.side, self.cfg.eval_requests, self.seed, stream)


# --- offline --------------------------------------------------------------------------------
def aspect_gaucs(req: Any, scores: np.ndarray) -> dict[str, float | None]:
    """GAUC per aspect of the logged-slot scores ``(R, K, C)`` (see the module docstring)."""
    r, t = req.imp_req, req.imp_slot
    s = scores[r, t, t].astype(np.float64)
    users = req.user_id[r]
    out: dict[str, float | None] = {}
    for j, a in enumerate(FEEDBACK):
        y = req.feedback[r, t, j].astype(np.float64)
        if a == "watch_time":
            y = (y > np.median(y)).astype(np.float64)
        try:
            out[a] = float(gauc(users, y, -s if a == "hate" else s)[0])
        except ValueError:  # one class for every user: undefined
            out[a] = None
    return out


def aspect_ncis(valid: Any, test: Any, scorer: Any, cfg: MMRFReportConfig) -> dict[str, Any]:
    """NCIS per aspect of ``scorer`` as a softmax policy (``T`` and cap chosen on ``valid``)."""
    from training.eval.metrics import ncis_per_aspect
    from training.eval.slates import (
        behaviour_log_prob,
        choose_temperature,
        logged_slot_scores,
        slate_log_prob_from_scores,
    )

    t = choose_temperature(logged_slot_scores(scorer, valid), valid, cfg.temperatures,
                           cfg.cap_min_ess_share)  # fmt: skip
    lr = slate_log_prob_from_scores(logged_slot_scores(scorer, test), test, t["temperature"])
    lr = lr - behaviour_log_prob(test)
    w = np.exp(np.minimum(lr, t["log_cap"]) - t["log_cap"])  # min(c, pi/mu) / c
    per_slate = {a: test.feedback[:, :, j].sum(axis=1).astype(np.float64)
                 for j, a in enumerate(FEEDBACK)}  # fmt: skip
    est = ncis_per_aspect(w, np.ones_like(w), per_slate, cap=1.0)
    return {"temperature": t["temperature"], "cap_quantile": t["cap_quantile"],
            "ess": next(iter(est.values())).ess, "value": {a: r.value for a, r in est.items()},
            "logged": {a: float(v.mean()) for a, v in per_slate.items()}}  # fmt: skip


def offline_table(m: SeedModels, log: Log) -> dict[str, Any]:
    """Table 1 of one seed: per row GAUC and NCIS per aspect on the test sample."""
    from training.eval.slates import logged_slot_scores

    t0 = time.perf_counter()
    valid, test = m.requests("valid"), m.requests("test")
    rows: dict[str, Any] = {}
    for row in TABLE1_ROWS:
        sc = m.scorer(row)
        rows[row] = {"gauc": aspect_gaucs(test, logged_slot_scores(sc, test)),
                     "ncis": aspect_ncis(valid, test, sc, m.cfg)}  # fmt: skip
        g = rows[row]["gauc"]["watch_time"]
        log(f"offline {row}: watch-time GAUC {g if g is None else round(g, 4)}, NCIS "
            f"{rows[row]['ncis']['value']['watch_time']:.2f} s/request")  # fmt: skip
    return {"rows": rows, "requests": {"valid": int(valid.n_requests),
            "test": int(test.n_requests)}, "seconds": time.perf_counter() - t0}  # fmt: skip


# --- online ---------------------------------------------------------------------------------
def online_arms(m: SeedModels, world: Any) -> dict[str, Any]:
    from runtime.bundle import load_bundle
    from training.baselines.ltr import LTRPolicy
    from training.bundles import MMRF_MODEL
    from training.eval.policies import ActorPolicy, BundlePolicy, PointwisePolicy, QPolicy
    from training.eval.slates import Chunked
    from training.harness.arms import reference_arms

    arms = {
        CONTROL: LTRPolicy(m.ltr, m.side),
        "mmrf": ActorPolicy(m.trainer("mmrf").net, m.side),
        **reference_arms(world, m.seed, ("logging",)),
        "drl_student": QPolicy(m.drl.student, m.side),
        "wide_deep_weighted": PointwisePolicy(Chunked(m.pointwise.model("wide_deep_weighted")),
                                              m.side),
    }  # fmt: skip
    if m.bundle is not None:  # the exported actor through the list builder
        arms["mmrf_bundle"] = BundlePolicy(load_bundle(m.bundle, models=[MMRF_MODEL]), MMRF_MODEL)
    return arms


def arm_rows(res: Any, arms: list[str]) -> dict[str, Any]:
    """Per arm and metric of :data:`ONLINE_FIELDS`: the per-user mean with its interval, and
    the relative change (%) against the control and against the logging policy (and, for
    ``mmrf_bundle``, against the torch actor ``mmrf``)."""
    out: dict[str, Any] = {}
    vals = {a: res.per_user(a) for a in arms}
    for a in arms:
        out[a] = {}
        for name, fld in ONLINE_FIELDS.items():
            v = np.asarray(vals[a][fld], dtype=np.float64)
            row = {"value": dict(zip(("mean", "low", "high"), nonneg_mean_ci(v), strict=True))}
            for base in (CONTROL, "logging", *(("mmrf",) if a == "mmrf_bundle" else ())):
                b = np.asarray(vals[base][fld], dtype=np.float64)
                row[f"vs_{base}"] = dict(zip(("mean", "low", "high"), relative_change(v, b),
                                             strict=True))  # fmt: skip
            out[a][name] = row
    return out


def online_table(m: SeedModels, log: Log) -> dict[str, Any]:
    """Table 2 of one seed (simulated online A/B test against the LTR control)."""
    from training.eval.online import run_online
    from training.harness.data import online_population, split_days
    from training.sim.world import build_world

    t0 = time.perf_counter()
    world = build_world(m.wcfg)
    days = split_days(m.ds, "test")
    users = online_population(m.seed, world.n_users, m.cfg.online_users)
    pols = online_arms(m, world)
    log(f"online: {len(pols)} arms, {len(users)} users, days {days}")
    res = run_online(world, pols, users=users, days=days, seed_offset=m.cfg.online_seed_offset,
                     progress=False)  # fmt: skip
    return {
        "arms": arm_rows(res, list(pols)),
        "users": int(len(res.active_users())),
        "sessions": res.n_sessions,
        "days": days,
        "seconds": time.perf_counter() - t0,
    }


# --- the feedback model ---------------------------------------------------------------------
class FeedbackProbe:
    """The logging policy as an online arm that, before each request's slate, scores every
    candidate at slot 0 with M (state: the session's impressions so far) and reads the world's
    expected responses to it (:meth:`Env.expected`, position 0, no list prefix); records up to
    ``limit`` candidates: M's ``r``, ``r'`` ``(n, A)``, the truth ``(n, A)`` (ASPECTS order),
    the item ids and whether the logging policy showed the item."""

    def __init__(self, world: Any, trainer: Any, side: SideTables, limit: int) -> None:
        from training.eval.policies import OnlineFeatures
        from training.sim.logging_policy import LoggingPolicy

        self.logging, self.features = LoggingPolicy(world), OnlineFeatures(side)
        self.model, self.memory, self.limit = trainer.model, trainer.cfg.memory, limit
        self.hist: dict[int, np.ndarray] = {}
        self.rec: dict[str, list[np.ndarray]] = {k: [] for k in ("r", "rp", "truth", "item",
                                                                   "shown")}  # fmt: skip
        self.n = 0

    def bind(self, env: Any) -> None:
        self.env = env

    def _history(self, obs: Any, n_fields: int) -> tuple[np.ndarray, np.ndarray]:
        b, m = obs.batch_size, self.memory
        ids, mask = np.zeros((b, m, n_fields), dtype=np.int64), np.zeros((b, m), dtype=bool)
        for i, sid in enumerate(obs.session_id.tolist()):
            h = self.hist.get(sid)
            if h is not None and len(h):
                ids[i, m - len(h) :], mask[i, m - len(h) :] = h, True
        return ids, mask

    @torch.no_grad()
    def rank(self, obs: Any, k: int) -> np.ndarray:
        from training.eval.policies import OnlineFeatures
        from training.mmrf.networks import ASPECTS

        slate = self.logging.rank(obs, k)
        x = self.features.request(obs)
        b, c = obs.candidates.shape
        rows = np.arange(b)
        empty = np.zeros((b, 0), dtype=np.int64)
        n_fields = x.user_ctx.shape[1] + OnlineFeatures.cand_ids(x, 0, empty, empty).shape[2]
        if self.n < self.limit:
            ids, mask = self._history(obs, n_fields)
            cand = OnlineFeatures.cand_ids(x, 0, empty, empty)
            z, z2 = self.model(self.model.encode(torch.from_numpy(ids)), torch.from_numpy(mask),
                               torch.from_numpy(x.user_ctx), torch.from_numpy(cand))  # fmt: skip
            truth = self.env.expected(np.broadcast_to(np.arange(c), (b, c)), 0)
            shown = np.zeros((b, c), dtype=bool)
            shown[rows[:, None], slate] = True
            self.rec["r"].append(torch.sigmoid(z).reshape(b * c, -1).numpy())
            self.rec["rp"].append(torch.sigmoid(z2).reshape(b * c, -1).numpy())
            nan = np.full(b * c, np.nan)  # long_view: the env has no expectation of it
            self.rec["truth"].append(np.stack([truth[a].reshape(-1) if a in truth else nan
                                               for a in ASPECTS], axis=1))  # fmt: skip
            self.rec["item"].append(np.asarray(obs.candidate_ids).reshape(-1))
            self.rec["shown"].append(shown.reshape(-1))
            self.n += b * c
        for t in range(k):  # the shown items enter the session's history, as in QPolicy
            cand = OnlineFeatures.cand_ids(x, t, x.tags[rows[:, None], slate[:, :t]],
                                           x.authors[rows[:, None], slate[:, :t]])  # fmt: skip
            imp = np.concatenate([x.user_ctx, cand[rows, slate[:, t]]], axis=1)
            for i, sid in enumerate(obs.session_id.tolist()):
                h = self.hist.get(sid)
                row = imp[i : i + 1]
                self.hist[sid] = row if h is None else np.concatenate([h, row])[-self.memory :]
        return slate

    def observe_feedback(self, obs: Any, slate: np.ndarray, feedback: Any) -> None:
        for sid, left in zip(obs.session_id.tolist(), feedback.left.tolist(), strict=True):
            if left:
                self.hist.pop(sid, None)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.rec.items()}


def exposure_counts(ds: Any, items: np.ndarray) -> np.ndarray:
    """Impressions of each of ``items`` in the training split (0 for items never shown)."""
    ids = []
    for p in ds.paths("train"):
        t = pq.read_table(p, columns=["item_id", "position"])
        ids.append(t.filter(pc.greater_equal(t.column("position"), 0)).column("item_id").to_numpy())
    u, n = np.unique(np.concatenate(ids), return_counts=True)
    pos = np.clip(np.searchsorted(u, items), 0, max(len(u) - 1, 0))
    return np.where((len(u) > 0) & (u[pos] == items), n[pos], 0)


def bucket_means(values: np.ndarray, counts: np.ndarray, edges: tuple[int, ...]) -> list[dict]:
    """Mean of ``values`` per exposure bucket ``[0, e1), [e1, e2), ..., [e_last, inf)``:
    ``label``, ``n`` and ``mean`` (NaN for an empty bucket). Pure."""
    b = np.searchsorted(np.asarray(edges), counts, side="right")
    lows, out = (0, *edges), []
    for i, lo in enumerate(lows):
        hi = edges[i] if i < len(edges) else None
        sel = values[b == i]
        label = f"{lo}+" if hi is None else (f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}")
        out.append({"label": label, "n": int(sel.size),
                    "mean": float(sel.mean()) if sel.size else math.nan})  # fmt: skip
    return out


def _aucs(y: np.ndarray, p: np.ndarray, binary: tuple[bool, ...], names: tuple[str, ...]) -> dict:
    out: dict[str, float | None] = {}
    for i, a in enumerate(names):
        if binary[i]:
            ok = 0 < y[:, i].sum() < len(y)
            out[a] = float(auc(y[:, i], p[:, i])) if ok else None
    return out


def feedback_quality(m: SeedModels, log: Log) -> dict[str, Any]:
    """M's quality (the chosen MMRF run): held-out impressions, the probe against the truth,
    uncertainty by exposure."""
    from training.eval.online import run_online
    from training.harness.data import online_population, split_days
    from training.mmrf.losses import bernoulli_kl
    from training.mmrf.networks import ASPECTS
    from training.mmrf.rewards import BINARY, model_scale
    from training.mmrf.train import impression_outputs
    from training.sim.world import build_world

    t0 = time.perf_counter()
    tr = m.trainer("mmrf")
    wt = ASPECTS.index("watch_time")
    # held-out impressions (test split)
    req = m.requests("test")
    o = impression_outputs(tr, req)
    fb = model_scale(torch.from_numpy(req.feedback[req.imp_req, req.imp_slot]), tr.scale).numpy()
    kl_imp = bernoulli_kl(torch.from_numpy(o["model_r"]),
                          torch.from_numpy(o["model_r_prime"])).mean(1).numpy()  # fmt: skip
    impressions: dict[str, Any] = {
        "n": int(req.n_impressions),
        "auc": _aucs(fb, o["model_r"], BINARY, ASPECTS),
        "watch_time_mse": float(np.mean((o["model_r"][:, wt] - fb[:, wt]) ** 2)),
        "watch_time_corr": float(np.corrcoef(o["model_r"][:, wt], fb[:, wt])[0, 1]),
        "kl": float(kl_imp.mean()),
    }
    # the probe: logging-policy sessions of the test days, every candidate against the truth
    world = build_world(m.wcfg)
    probe = FeedbackProbe(world, tr, m.side, m.cfg.probe_candidates)
    users = online_population(m.seed + 7919, world.n_users, m.cfg.probe_users)
    run_online(world, {"probe": probe}, users=users, days=split_days(m.ds, "test"),
               seed_offset=m.cfg.online_seed_offset, progress=False)  # fmt: skip
    a = probe.arrays()
    rng = np.random.default_rng([m.seed, LABEL_STREAM])
    known = ~np.isnan(a["truth"]).all(axis=0)  # aspects the world gives a truth for
    binary = tuple(bool(x and k) for x, k in zip(BINARY, known, strict=True))
    drawn = (rng.random(a["truth"].shape) < np.nan_to_num(a["truth"])).astype(np.float64)
    kl = bernoulli_kl(torch.from_numpy(a["r"]), torch.from_numpy(a["rp"])).mean(1).numpy()
    counts = exposure_counts(m.ds, a["item"])
    groups: dict[str, Any] = {}
    for name, sel in (("non_impressed", ~a["shown"]), ("impressed", a["shown"])):
        r, tru, y = a["r"][sel], a["truth"][sel], drawn[sel]
        groups[name] = {
            "n": int(sel.sum()), "auc": _aucs(y, r, binary, ASPECTS),
            "truth_auc": _aucs(y, tru, binary, ASPECTS),  # the ceiling: the truth itself
            "corr": {x: float(np.corrcoef(r[:, i], tru[:, i])[0, 1])
                     for i, x in enumerate(ASPECTS) if known[i]},
            "kl": float(kl[sel].mean()) if sel.any() else math.nan,
            "kl_by_exposure": bucket_means(kl[sel], counts[sel], m.cfg.exposure_edges),
        }  # fmt: skip
    imp_items = req.cand_item[req.imp_req, req.imp_slot]
    impressions["kl_by_exposure"] = bucket_means(kl_imp, exposure_counts(m.ds, imp_items),
                                                 m.cfg.exposure_edges)  # fmt: skip
    log(f"feedback model: click AUC impressions {impressions['auc'].get('click')}, "
        f"non-impressed vs truth {groups['non_impressed']['auc'].get('click')}")  # fmt: skip
    return {"impressions": impressions, "probe": groups, "probe_users": int(len(users)),
            "seconds": time.perf_counter() - t0}  # fmt: skip
