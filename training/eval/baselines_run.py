"""One seed of the baselines evaluation: data, point-wise models, offline metrics, NCIS, online.

:func:`run_seed` does, for one world seed, in a run folder it can resume from:

1. **data**: generate the world's logged dataset with :func:`training.sim.generate.
   generate_dataset` (or reuse the folder when its world config is the same); read a sample
   of each split into impression arrays (field ids of :func:`training.data.features.
   build_requests`, feedback, user). Train is subsampled by *session* to
   ``train_impressions``; valid and test by *user* (so per-user metrics see whole users).
2. **models**: every point-wise model of DRL-Rec Table 2 (FM, Wide&Deep, NFM, AFM, DeepFM,
   AutoInt, AFN) on ``(imp_ids, click)``; MMRF's ``wide_deep_weighted`` and
   ``deepfm_weighted`` on the same rows with sample weights :func:`mmrf_weights`; and ``bc``,
   a DeepFM imitating the logging policy (behaviour cloning, :func:`bc_rows`). Each is trained
   with :func:`training.baselines.pointwise.train_pointwise` one epoch at a time, keeping the
   epoch with the best loss of its own objective on the *valid* sample (early stopping; the
   test split is never used for a choice). Its state_dict and a JSON of its metrics are saved;
   a rerun loads them instead of training.
3. **offline**: test-sample AUC (click), GAUC (click, per user), AUC of like and long_view
   from the same scores. RelaImpr against FM is formed when seeds are aggregated.
4. **NCIS temperature**: for FM and DeepFM as *stochastic* policies (slot-by-slot softmax of
   ``score / T``), the temperature ``T`` is the grid value that maximises the effective sample
   size of the (uncapped) slate importance weights on a *valid* sample, and the cap ``c`` is
   the largest quantile of that ``T``'s ratios on valid (from :data:`CAP_QUANTILES`) whose
   capped weights keep an ESS of at least ``cap_min_ess_share`` of the requests
   (:func:`choose_temperature`).
5. **online**: :func:`training.eval.online.run_online` on the test days with fresh sessions
   (``seed_offset``), a fixed random population of ``online_users`` users, arms ``random``,
   ``logging``, ``oracle`` (greedy on the true click probability: myopic), ``oracle_lt``
   (greedy on click + 0.1 satisfaction, :data:`training.harness.arms.ORACLE_LT_REWARD`), every
   model as a greedy policy (:class:`ShortlistPolicy`), and ``fm@T`` / ``deepfm@T`` (the
   stochastic policies above).
6. **NCIS**: on the test split's logged slates, NCIS of the logging policy (target =
   behaviour: the mean logged clicks per request) and of ``fm@T`` / ``deepfm@T``, each with a
   user-cluster bootstrap interval, against the same policy's online clicks per request.

Slate probabilities (METHODS.md asks to document them): the logging policy is a sequential
sampler, so its slate probability is exactly the product of the logged per-slot propensities.
The stochastic point-wise policies are sequential samplers too: at slot ``t`` the probability
of the logged item is ``softmax(score / T)`` over the candidates not in the logged slots
``< t``, with the list features computed from the logged prefix; the slate probability is the
product over slots (:func:`slate_log_prob_from_scores`, equal to
:func:`training.eval.policies.slate_log_prob_pointwise`). Ratios are formed in log space.

Units: NCIS here estimates expected clicks per *request* (one logged slate), and the online
value it is compared with is clicks per request of the online run (total clicks / total
requests of the arm), with a user-cluster bootstrap interval.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.features import DEFAULT_SPEC
from contract.schema import FEEDBACK
from training.baselines.pointwise import predict, seeded_build_model, train_pointwise
from training.data.features import SideTables
from training.data.pipeline import Dataset, code_version
from training.eval.metrics import auc, gauc
from training.eval.online import OnlineResult, run_online
from training.eval.policies import PointwisePolicy
from training.eval.samples import (
    NCIS_TEST_STREAM,
    NCIS_VALID_STREAM,
    Sample,
    feedback_dict,
    logged_slates,
    mmrf_weights,
    read_requests,
    read_sample,
)
from training.eval.slates import (
    Chunked,
    ShortlistPolicy,
    behaviour_log_prob,
    choose_temperature,
    compare,
    ess,
    logged_slot_scores,
    ncis_estimate,
    online_clicks_per_request,
    slate_log_prob_from_scores,
)
from training.harness.arms import reference_arms
from training.harness.config import apply_overrides, pick
from training.harness.data import (
    SIM_SOURCE,
    dataset_dir,
    ensure_dataset,
    online_population,
    split_days,
    split_impressions,
    world_fingerprint,
)
from training.harness.runfolder import cached, jsonable, read_json, write_json
from training.sim.config import ConfigError, WorldConfig, preset
from training.sim.env import Env
from training.sim.world import build_world

__all__ = [
    "ALL_MODELS",
    "EVAL_PRESETS",
    "EvalConfig",
    "check_run_dir",
    "eval_preset",
    "run_seed",
    "world_config",
]

#: Trained baselines: name -> (architecture in MODELS, training data / label).
ALL_MODELS: dict[str, tuple[str, str]] = {
    "fm": ("fm", "click"),
    "wide_deep": ("wide_deep", "click"),
    "nfm": ("nfm", "click"),
    "afm": ("afm", "click"),
    "deepfm": ("deepfm", "click"),
    "autoint": ("autoint", "click"),
    "afn": ("afn", "click"),
    "wide_deep_weighted": ("wide_deep", "weighted"),
    "deepfm_weighted": ("deepfm", "weighted"),
    "bc": ("deepfm", "bc"),
}

ARTIFACT_VERSION = 1


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig:
    """Budgets and choices of the baselines evaluation (one value per preset, overridable)."""

    world_preset: str = "default"
    """World preset of :mod:`training.sim.config` (overrides go in ``world_overrides``)."""
    world_overrides: tuple[tuple[str, str], ...] = ()
    """``key=value`` overrides of the world config (as pairs)."""
    models: tuple[str, ...] = tuple(ALL_MODELS)
    """Models to train (names of :data:`ALL_MODELS`); ``fm`` is RelaImpr's base."""
    train_impressions: int = 300_000
    """Train sample size in impressions (sessions drawn at random); 0 = the whole split."""
    valid_impressions: int = 60_000
    """Valid sample (users drawn at random) for early stopping; 0 = the whole split."""
    test_impressions: int = 150_000
    """Test sample (users drawn at random) for the offline metrics; 0 = the whole split."""
    max_epochs: int = 1
    """Epochs at most; the epoch with the best valid loss is kept (stop at the first worse).
    Default 1: on seed 0's valid day a second epoch lowered the valid AUC of FM (0.7129 ->
    0.7103) and DeepFM (0.7158 -> 0.7116) at 392k train impressions."""
    batch_size: int = 1024
    lr: float = 2e-3
    embed_dim: int = 16
    bc_negatives: int = 10
    """Non-impressed candidates sampled per logged request as BC negatives."""
    online_users: int = 400
    """Online population: users drawn at random (0 = all users)."""
    online_seed_offset: int = 1
    """Seed offset of the online env: fresh sessions on the test days (not the logged ones)."""
    shortlist: int = 0
    """Greedy policies rank the top ``shortlist`` candidates by slot-0 score (0 = all, the exact
    greedy :class:`PointwisePolicy`). Not used by default: on seed 0 a shortlist of 30 of 200
    kept 87% of FM's greedy lists identical but only 1% of DeepFM's (57% of its items)."""
    ncis_models: tuple[str, ...] = ("fm", "deepfm")
    """Models run as stochastic (softmax) policies for the NCIS bias check."""
    ncis_requests: int = 1200
    """Logged requests (users drawn at random) scored for NCIS, on valid and on test."""
    temperatures: tuple[float, ...] = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
    """Temperature grid; the one with the largest valid ESS is used. Up to 1: beyond, the
    softmax over ~200 candidates is close to uniform and the policy no longer follows its
    model."""
    cap_min_ess_share: float = 0.05
    """NCIS cap: the largest valid-ratio quantile (:data:`CAP_QUANTILES`) whose capped weights
    keep ``ESS >= cap_min_ess_share * n`` on valid."""
    n_boot: int = 200
    expected_findings: tuple[str, ...] = ("ncis:fm@T", "ncis:deepfm@T")
    """Sanity checks whose failure is a known finding (the command does not fail on them): the
    NCIS bias of the stochastic point-wise policies is the estimator's measured bias."""
    threads: int = 1
    """torch threads (not part of the fingerprint)."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in ALL_MODELS]
        if unknown:
            raise ConfigError(f"eval config models: unknown {unknown} (known: {list(ALL_MODELS)})")
        if "fm" not in self.models:
            raise ConfigError("eval config models: must include 'fm' (RelaImpr's base)")
        missing = [m for m in self.ncis_models if m not in self.models]
        if missing:
            raise ConfigError(f"eval config ncis_models: {missing} are not in models")
        for key in ("train_impressions", "valid_impressions", "test_impressions",
                    "online_users", "shortlist", "ncis_requests", "bc_negatives"):  # fmt: skip
            if getattr(self, key) < 0:
                raise ConfigError(f"eval config {key}={getattr(self, key)}: must be >= 0")
        for key in ("max_epochs", "batch_size", "embed_dim", "n_boot", "threads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"eval config {key}={getattr(self, key)}: must be >= 1")
        if not 0 < self.cap_min_ess_share <= 1:
            raise ConfigError(
                f"eval config cap_min_ess_share={self.cap_min_ess_share}: must be in (0, 1]"
            )
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ConfigError(f"eval config temperatures={self.temperatures}: must be > 0")
        if self.lr <= 0:
            raise ConfigError(f"eval config lr={self.lr}: must be > 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["world_overrides"] = dict(self.world_overrides)
        return d

    def fingerprint(self) -> dict[str, Any]:
        """What the results depend on (everything but ``threads`` and the report's verdicts)."""
        d = self.to_dict()
        d.pop("threads")
        d.pop("expected_findings")
        return d

    def with_overrides(self, overrides: Mapping[str, str]) -> EvalConfig:
        """A copy with ``key=value`` strings applied (lists comma-separated), through
        :func:`training.harness.config.apply_overrides`."""
        return apply_overrides(self, overrides, "eval config", fixed=("world_overrides",))


EVAL_PRESETS: dict[str, EvalConfig] = {
    # Seconds: every model on the tiny world, small budgets.
    "tiny": EvalConfig(
        world_preset="tiny",
        train_impressions=0,
        valid_impressions=0,
        test_impressions=0,
        max_epochs=2,
        batch_size=512,
        lr=3e-3,
        embed_dim=8,
        bc_negatives=5,
        online_users=100,
        shortlist=0,
        ncis_requests=400,
        n_boot=100,
    ),
    # The benchmark world, budgets sized to about 16 minutes per seed on 2 shared CPU cores
    # (generation about 2-5 minutes, training 6, online 6; measured on seed 0).
    "default": EvalConfig(world_preset="default"),
    # The large world (27,285 users, 28 days) with the default budgets.
    "large": EvalConfig(world_preset="large"),
}


def eval_preset(name: str) -> EvalConfig:
    return pick(EVAL_PRESETS, name, "report preset")


def world_config(cfg: EvalConfig, seed: int) -> WorldConfig:
    """The world of ``cfg`` with ``seed``."""
    wc = preset(cfg.world_preset).with_overrides(dict(cfg.world_overrides))
    return wc.with_overrides({"seed": int(seed)})


# --------------------------------------------------------------------------------------------
# the run folder
# --------------------------------------------------------------------------------------------


def check_run_dir(run_dir: Path, cfg: EvalConfig, wcfg: WorldConfig) -> None:
    """Create the run folder, or check that it belongs to the same configuration (evaluation
    config, world config and simulator source)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    want = jsonable(
        {"eval": cfg.fingerprint(), "world": world_fingerprint(wcfg), "sim_source": SIM_SOURCE}
    )
    if path.exists():
        have = read_json(path)
        have = {k: have.get(k) for k in want}
        if have != want:
            raise ConfigError(
                f"{run_dir} holds results of another configuration or simulator source; choose "
                "another --runs folder or remove it"
            )
    else:
        write_json(path, {**want, "code_version": code_version()})


# --------------------------------------------------------------------------------------------
# one seed
# --------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    cfg: EvalConfig
    seed: int
    wcfg: WorldConfig
    ds: Dataset
    side: SideTables
    run_dir: Path
    progress: bool
    log: Callable[[str], None]
    timing: dict[str, float] = field(default_factory=dict)
    _samples: dict[str, Sample] = field(default_factory=dict)
    _models: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        d = self.run_dir / "models"
        d.mkdir(exist_ok=True)
        return d

    def sample(self, split: str) -> Sample:
        if split not in self._samples:
            t0 = time.perf_counter()
            c = self.cfg
            if split == "train":
                s = read_sample(self.ds, "train", self.side, c.train_impressions, self.seed,
                                "session_id", bc_negatives=c.bc_negatives)  # fmt: skip
            elif split == "valid":
                s = read_sample(self.ds, "valid", self.side, c.valid_impressions, self.seed,
                                "user_id", bc_negatives=c.bc_negatives)  # fmt: skip
            else:
                s = read_sample(self.ds, "test", self.side, c.test_impressions, self.seed,
                                "user_id")  # fmt: skip
            self._samples[split] = s
            sec = time.perf_counter() - t0
            self.timing[f"data_{split}"] = sec
            self.log(f"{split} sample: {s.n:,} impressions ({sec:.1f} s)")
        return self._samples[split]

    def new_model(self, name: str) -> nn.Module:
        arch = ALL_MODELS[name][0]
        return seeded_build_model(arch, DEFAULT_SPEC.sizes(), seed=self.seed,
                                  embed_dim=self.cfg.embed_dim)  # fmt: skip

    def model(self, name: str) -> nn.Module:
        if name not in self._models:
            m = self.new_model(name)
            m.load_state_dict(torch.load(self.model_dir / f"{name}.pt", weights_only=True))
            self._models[name] = m.eval()
        return self._models[name]


def _objective(s: Sample, kind: str, bc: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if bc:
        assert s.bc_x is not None and s.bc_y is not None
        return s.bc_x, s.bc_y, s.bc_w
    w = mmrf_weights(feedback_dict(s.feedback)) if kind == "weighted" else None
    return s.x, s.click.astype(np.float32), w


def _valid_loss(model: nn.Module, x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
    p = np.clip(predict(model, x).astype(np.float64), 1e-7, 1 - 1e-7)
    ll = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(ll.mean() if w is None else np.dot(w, ll) / len(ll))


def _offline_metrics(model: nn.Module, test: Sample) -> dict[str, Any]:
    p = predict(model, test.x).astype(np.float64)
    fb = feedback_dict(test.feedback)
    out: dict[str, Any] = {"n_test": test.n, "auc": auc(fb["click"], p)}
    out["gauc"], out["gauc_users"] = gauc(test.user, fb["click"], p)
    for aspect in ("like", "long_view"):
        y = fb[aspect]
        out[f"auc_{aspect}"] = auc(y, p) if 0 < y.sum() < len(y) else math.nan
    return out


def _train_one(ctx: _Ctx, name: str) -> dict[str, Any]:
    """Train (or load) one model; returns its metrics JSON."""
    json_path, pt_path = ctx.model_dir / f"{name}.json", ctx.model_dir / f"{name}.pt"
    if json_path.exists() and pt_path.exists():
        info = read_json(json_path)
        info["resumed"] = True
        ctx.log(f"model {name}: found, skip training (auc {info['offline']['auc']:.4f})")
        return info
    cfg = ctx.cfg
    kind = ALL_MODELS[name][1]
    bc = kind == "bc"
    x, y, w = _objective(ctx.sample("train"), kind, bc)
    xv, yv, wv = _objective(ctx.sample("valid"), kind, bc)
    model = ctx.new_model(name)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for epoch in range(cfg.max_epochs):
        res = train_pointwise(
            model, x, y, weights=w, epochs=1, batch_size=cfg.batch_size, lr=cfg.lr,
            seed=ctx.seed * 1000 + epoch, progress=ctx.progress,
        )  # fmt: skip
        vl = _valid_loss(model, xv, yv, wv)
        history.append({"epoch": epoch + 1, "train_loss": res.train_loss_history[-1],
                        "valid_loss": vl, "seconds": res.seconds})  # fmt: skip
        ctx.log(f"model {name}: epoch {epoch + 1} valid loss {vl:.5f} ({res.seconds:.0f} s)")
        if best is None or vl < best[0]:
            best = (vl, epoch + 1, copy.deepcopy(model.state_dict()))
        else:
            break  # the first epoch that does not improve ends training
    assert best is not None
    model.load_state_dict(best[2])
    model.eval()
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    offline = _offline_metrics(model, ctx.sample("test"))
    info = {
        "version": ARTIFACT_VERSION,
        "model": name,
        "architecture": ALL_MODELS[name][0],
        "objective": {
            "click": "BCE(click)",
            "weighted": "BCE(click) weighted by mmrf_weights",
            "bc": "BCE(impressed) over logged candidates",
        }[kind],  # fmt: skip
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "n_train": int(x.shape[0]),
        "n_valid": int(xv.shape[0]),
        "epochs": best[1],
        "valid_loss": best[0],
        "history": history,
        "offline": offline,
        "seconds": {"train": train_s, "offline": time.perf_counter() - t1},
        "seed": ctx.seed,
        "config": cfg.fingerprint(),
        "code_version": code_version(),
        "resumed": False,
    }
    torch.save(model.state_dict(), pt_path)
    write_json(json_path, info)
    ctx._models[name] = model
    ctx.log(f"model {name}: auc {offline['auc']:.4f} gauc {offline['gauc']:.4f}")
    return info


def _stochastic(ctx: _Ctx, name: str, temperature: float) -> PointwisePolicy:
    return PointwisePolicy(Chunked(ctx.model(name)), ctx.side, temperature=temperature,
                           seed=10_000 + 97 * ctx.seed + len(name))  # fmt: skip


def _temperatures(ctx: _Ctx) -> dict[str, Any]:
    c = ctx.cfg
    want = {"models": list(c.ncis_models), "requests": c.ncis_requests,
            "grid": list(c.temperatures), "cap_min_ess_share": c.cap_min_ess_share}  # fmt: skip
    return cached(ctx.run_dir / "ncis_temperature.json", want, lambda: _choose_temperatures(ctx))


def _choose_temperatures(ctx: _Ctx) -> dict[str, Any]:
    t0 = time.perf_counter()
    req = read_requests(
        ctx.ds, "valid", ctx.side, ctx.cfg.ncis_requests, ctx.seed, NCIS_VALID_STREAM
    )
    out: dict[str, Any] = {}
    for name in ctx.cfg.ncis_models:
        scores = logged_slot_scores(_stochastic(ctx, name, 1.0), req)
        out[name] = choose_temperature(scores, req, ctx.cfg.temperatures, ctx.cfg.cap_min_ess_share)
        ctx.log(
            f"NCIS {name}: T={out[name]['temperature']} log cap {out[name]['log_cap']:.2f} "
            f"(valid, {req.n_requests} requests)"
        )
    return {"models": out, "seconds": time.perf_counter() - t0, "seed": ctx.seed}


def _shortlist_agreement(ctx: _Ctx, world: Any, day: int, users: np.ndarray) -> dict[str, Any]:
    """Share of requests where the shortlist greedy list equals the full greedy list."""
    out: dict[str, Any] = {}
    m = ctx.cfg.shortlist
    if m <= 0 or m >= world.cfg.n_candidates:
        return out
    env = Env(world)
    obs = env.begin_day(day, users[: min(len(users), 200)])
    if obs is None:
        return out
    k = world.cfg.list_size
    for name in [n for n in ("fm", "deepfm") if n in ctx.cfg.models]:
        model = Chunked(ctx.model(name))
        a = ShortlistPolicy(model, ctx.side, m).rank(obs, k)
        b = PointwisePolicy(model, ctx.side).rank(obs, k)
        same_set = np.mean([len(set(p) & set(q)) / k for p, q in zip(a, b, strict=True)])
        out[name] = {"same_list": float((a == b).all(axis=1).mean()),
                     "same_items": float(same_set), "requests": int(obs.batch_size)}  # fmt: skip
    return out


def _online(ctx: _Ctx, temps: Mapping[str, Any]) -> tuple[OnlineResult, dict[str, Any]]:
    c = ctx.cfg
    want = {"models": list(c.models), "ncis_models": list(c.ncis_models), "users": c.online_users,
            "seed_offset": c.online_seed_offset, "shortlist": c.shortlist,
            "temperatures": {n: temps["models"][n]["temperature"]
                             for n in c.ncis_models}}  # fmt: skip
    d = cached(ctx.run_dir / "online.json", want, lambda: _run_online(ctx, temps))
    return OnlineResult.from_dict(d["result"]), d["info"]


def _run_online(ctx: _Ctx, temps: Mapping[str, Any]) -> dict[str, Any]:
    cfg = ctx.cfg
    world = build_world(ctx.wcfg)
    days = split_days(ctx.ds, "test")
    users = online_population(ctx.seed, world.n_users, cfg.online_users)
    t0 = time.perf_counter()
    agreement = _shortlist_agreement(ctx, world, days[0], users)
    policies = reference_arms(world, ctx.seed)
    for name in cfg.models:
        policies[name] = ShortlistPolicy(Chunked(ctx.model(name)), ctx.side, cfg.shortlist)
    for name in cfg.ncis_models:
        temp = temps["models"][name]["temperature"]
        policies[f"{name}@T"] = _stochastic(ctx, name, temp)
    ctx.log(f"online: {len(policies)} arms, {len(users)} users, days {days}")
    result = run_online(
        world, policies, users=users, days=days, seed_offset=cfg.online_seed_offset,
        progress=ctx.progress,
    )  # fmt: skip
    info = {
        "days": days,
        "n_users": int(len(users)),
        "n_sessions": result.n_sessions,
        "seed_offset": cfg.online_seed_offset,
        "shortlist": cfg.shortlist,
        "shortlist_agreement": agreement,
        "temperatures": {n: temps["models"][n]["temperature"] for n in cfg.ncis_models},
        "seconds": time.perf_counter() - t0,
        "arm_seconds": result.meta.get("seconds", {}),
    }
    for arm, sec in info["arm_seconds"].items():
        ctx.log(f"online {arm}: {sec:.0f} s")
    return {"result": result.to_dict(), "info": info}


def _ncis(ctx: _Ctx, temps: Mapping[str, Any], online: OnlineResult) -> dict[str, Any]:
    c = ctx.cfg
    want = {"n_boot": c.n_boot, "requests": c.ncis_requests,
            "temperatures": {n: temps["models"][n] for n in c.ncis_models},
            "online_users": c.online_users}  # fmt: skip
    return cached(ctx.run_dir / "ncis.json", want, lambda: _estimate_ncis(ctx, temps, online))


def _estimate_ncis(ctx: _Ctx, temps: Mapping[str, Any], online: OnlineResult) -> dict[str, Any]:
    cfg = ctx.cfg
    t0 = time.perf_counter()
    rng = np.random.default_rng([ctx.seed, 23])
    out: dict[str, Any] = {}
    # The logging policy on its own logs, over the whole test split: target = behaviour.
    logs = logged_slates(ctx.ds, "test")
    lp = logs["log_prob"]
    est = ncis_estimate(lp - lp, logs["reward"], logs["user"], 0.0, cfg.n_boot, rng)
    on = online_clicks_per_request(online, "logging", cfg.n_boot, rng)
    out["logging"] = {"ncis": est, "online": on, "compare": compare(est, on),
                      "requests": "all test-split requests"}  # fmt: skip
    # The stochastic point-wise policies, on a user sample of the test split.
    req = read_requests(ctx.ds, "test", ctx.side, cfg.ncis_requests, ctx.seed, NCIS_TEST_STREAM)
    lb = behaviour_log_prob(req)
    for name in cfg.ncis_models:
        tm = temps["models"][name]
        scores = logged_slot_scores(_stochastic(ctx, name, 1.0), req)
        lr = slate_log_prob_from_scores(scores, req, tm["temperature"]) - lb
        reward = req.feedback[:, :, FEEDBACK.index("click")].sum(axis=1).astype(np.float64)
        est = ncis_estimate(lr, reward, req.user_id, tm["log_cap"], cfg.n_boot, rng)
        on = online_clicks_per_request(online, f"{name}@T", cfg.n_boot, rng)
        out[f"{name}@T"] = {
            "temperature": tm["temperature"],
            "cap_quantile": tm["cap_quantile"],
            "ncis": est,
            "online": on,
            "compare": compare(est, on),
            "uncapped_ess": ess(lr),
            "requests": int(req.n_requests),
        }
    res = {"policies": out, "seconds": time.perf_counter() - t0, "seed": ctx.seed}
    for k, v in out.items():
        c = v["compare"]
        ctx.log(f"NCIS {k}: {v['ncis']['value']:.4f} vs online {v['online']['value']:.4f} "
                f"bias {c['bias']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]")  # fmt: skip
    return res


def run_seed(
    cfg: EvalConfig,
    seed: int,
    run_dir: str | Path,
    data_root: str | Path = "data",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) one seed; returns and saves ``seed_summary.json`` in ``run_dir``.

    Every piece found finished in ``run_dir`` (model checkpoints with their metrics JSON,
    ``ncis_temperature.json``, ``online.json``, ``ncis.json``) is loaded, not recomputed.
    """
    torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    wcfg = world_config(cfg, seed)
    check_run_dir(run_dir, cfg, wcfg)
    say = log or (lambda s: None)

    def logf(msg: str) -> None:
        say(f"[seed {seed}] {msg}")

    t_all = time.perf_counter()
    path = dataset_dir(Path(data_root), cfg.world_preset, cfg.world_overrides, seed)
    ds, gen = ensure_dataset(path, wcfg, cfg.world_preset,
                             progress, logf)  # fmt: skip
    side = SideTables.from_tables(ds.users(), ds.items())
    ctx = _Ctx(cfg, seed, wcfg, ds, side, run_dir, progress, logf)
    models = {name: _train_one(ctx, name) for name in cfg.models}
    temps = _temperatures(ctx)
    online, online_info = _online(ctx, temps)
    ncis_res = _ncis(ctx, temps, online)
    # Stage times persist across resumed runs: a stage keeps the time of the run that did it.
    tpath = run_dir / "timing.json"
    stage_seconds = read_json(tpath) if tpath.exists() else {}
    stage_seconds.update(ctx.timing)
    write_json(tpath, stage_seconds)
    summary = {
        "version": ARTIFACT_VERSION,
        "seed": seed,
        "config": cfg.to_dict(),
        "world": wcfg.to_dict(),
        "code_version": code_version(),
        "sim_source": SIM_SOURCE,
        "dataset": {
            "path": str(ds.root),
            "counts": ds.meta.get("counts"),
            "code_version": ds.meta.get("code_version"),
            "split_days": {s: split_days(ds, s) for s in ("train", "valid", "test")},
            "split_impressions": {s: split_impressions(ds, s) for s in ("train", "valid", "test")},
            "generated_now": gen["generated"],
            "sim_source": gen["sim_source"],
            "generate_seconds": gen["seconds"],
        },
        "models": models,
        "temperatures": temps,
        "online": {
            "info": online_info,
            "summary": online.summary("logging"),
            "clicks_per_request": {
                arm: online_clicks_per_request(
                    online, arm, cfg.n_boot, np.random.default_rng([seed, 31])
                )
                for arm in online.arms
            },  # fmt: skip
        },
        "ncis": ncis_res,
        "stage_seconds": stage_seconds,
        "timing": {"this_run": time.perf_counter() - t_all},
        "resumed_models": [n for n, m in models.items() if m.get("resumed")],
    }
    write_json(run_dir / "seed_summary.json", summary)
    logf(f"done in {summary['timing']['this_run']:.0f} s")
    return summary
