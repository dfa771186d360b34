"""The stages of one baselines seed (:func:`training.eval.baselines_run.run_seed` runs them in
order): train and evaluate each model (:func:`train_model`), choose the NCIS temperatures
(:func:`choose_temperatures`), the online A/B test (:func:`online_test`) and NCIS against it
(:func:`ncis_vs_online`). Each saves its result in the seed's run folder and loads it when a
finished result with the same inputs is there.

Slate probabilities (METHODS.md asks to document them): the logging policy is a sequential
sampler, so its slate probability is exactly the product of the logged per-slot propensities.
The stochastic point-wise policies are sequential samplers too: at slot ``t`` the probability
of the logged item is ``softmax(score / T)`` over the candidates not in the logged slots
``< t``, with the list features computed from the logged prefix; the slate probability is the
product over slots (:func:`slate_log_prob_from_scores`, equal to
:func:`training.eval.policies.slate_log_prob_pointwise`). Ratios are formed in log space.

Units: NCIS here estimates expected clicks per *request* (one logged slate), and the online
value it is compared with is clicks per request of the online run (total clicks / total
requests of the arm), with a user-cluster bootstrap interv
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

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
from training.harness.data import online_population, split_days
from training.harness.runfolder import cached, read_json, write_json
from training.sim.config import WorldConfig
from training.sim.env import Env
from training.sim.world import build_world

if TYPE_CHECKING:
    from training.eval.baselines_run import EvalConfig

__all__ = [
    "ALL_MODELS",
    "ARTIFACT_VERSION",
    "SeedContext",
    "choose_temperatures",
    "ncis_vs_online",
    "online_test",
    "train_model",
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


@dataclass
class SeedContext:
    """What the stages of one seed share: config, world, dataset, side tables, run folder,
    the samples and models read or trained so far."""

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
        return seeded_build_model(arch, self.side.spec.sizes(), seed=self.seed,
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


def train_model(ctx: SeedContext, name: str) -> dict[str, Any]:
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


def _stochastic(ctx: SeedContext, name: str, temperature: float) -> PointwisePolicy:
    return PointwisePolicy(Chunked(ctx.model(name)), ctx.side, temperature=temperature,
                           seed=10_000 + 97 * ctx.seed + len(name))  # fmt: skip


def choose_temperatures(ctx: SeedContext) -> dict[str, Any]:
    c = ctx.cfg
    want = {"models": list(c.ncis_models), "requests": c.ncis_requests,
            "grid": list(c.temperatures), "cap_min_ess_share": c.cap_min_ess_share}  # fmt: skip
    return cached(ctx.run_dir / "ncis_temperature.json", want, lambda: _compute_temperatures(ctx))


def _compute_temperatures(ctx: SeedContext) -> dict[str, Any]:
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


def _shortlist_agreement(
    ctx: SeedContext, world: Any, day: int, users: np.ndarray
) -> dict[str, Any]:
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


def online_test(ctx: SeedContext, temps: Mapping[str, Any]) -> tuple[OnlineResult, dict[str, Any]]:
    c = ctx.cfg
    want = {"models": list(c.models), "ncis_models": list(c.ncis_models), "users": c.online_users,
            "seed_offset": c.online_seed_offset, "shortlist": c.shortlist,
            "temperatures": {n: temps["models"][n]["temperature"]
                             for n in c.ncis_models}}  # fmt: skip
    d = cached(ctx.run_dir / "online.json", want, lambda: _run_online(ctx, temps))
    return OnlineResult.from_dict(d["result"]), d["info"]


def _run_online(ctx: SeedContext, temps: Mapping[str, Any]) -> dict[str, Any]:
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


def ncis_vs_online(
    ctx: SeedContext, temps: Mapping[str, Any], online: OnlineResult
) -> dict[str, Any]:
    c = ctx.cfg
    want = {"n_boot": c.n_boot, "requests": c.ncis_requests,
            "temperatures": {n: temps["models"][n] for n in c.ncis_models},
            "online_users": c.online_users}  # fmt: skip
    return cached(ctx.run_dir / "ncis.json", want, lambda: _estimate_ncis(ctx, temps, online))


def _estimate_ncis(
    ctx: SeedContext, temps: Mapping[str, Any], online: OnlineResult
) -> dict[str, Any]:
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
