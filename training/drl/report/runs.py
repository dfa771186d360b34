"""Running the plan: one seed's runs (DRL-Rec, HRL-Rec, point-wise) and their test-sample
evaluation, then the stages that read them (:mod:`training.drl.report.measures`: online tests,
click ceiling, slate truth); every stage resumable."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.data.features import Requests, SideTables, build_requests
from training.data.pipeline import Dataset, iter_session_batches
from training.drl.report.measures import ceiling, online_test, slate_truth
from training.drl.report.plan import (
    HORIZON_GAMMAS,
    ReportConfig,
    RunSpec,
    selected,
    variant_overrides,
    world_config,
)
from training.eval.metrics import auc
from training.harness.command import NotRunnable
from training.harness.data import TEST_STREAM, dataset_dir, ensure_dataset, read_test_sample
from training.harness.runfolder import jsonable, read_json, save_npz, write_json
from training.sim.config import ConfigError


def train_prefix(
    ds: Dataset, side: SideTables, n: int, sessions_per_chunk: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(x (N, 22), click (N,))``: the impressions DRL-Rec's stream would train on.

    DRL-Rec reads the training split in chunks of ``sessions_per_chunk`` whole sessions, in log
    order, and shuffles each chunk's instances; a budget of ``n`` instances ends inside some
    chunk. Here: whole chunks while the budget lasts, then a random subset (``seed``) of the
    last chunk; ``n`` 0 takes the whole split.
    """
    rng = np.random.default_rng([seed, 5])
    xs, ys = [], []
    have = 0
    for table in iter_session_batches(ds.paths("train"), sessions_per_batch=sessions_per_chunk):
        req = build_requests(table, side)
        x, y = req.imp_ids, req.label("click").astype(np.float32)
        need = n - have if n else x.shape[0]
        if need < x.shape[0]:
            keep = np.sort(rng.choice(x.shape[0], size=need, replace=False))
            x, y = x[keep], y[keep]
        xs.append(x)
        ys.append(y)
        have += x.shape[0]
        if n and have >= n:
            break
    return np.concatenate(xs), np.concatenate(ys)


# --------------------------------------------------------------------------------------------
# one seed
# --------------------------------------------------------------------------------------------


@dataclass
class SeedData:
    """What the runs of one seed share: datasets, side tables, test samples."""

    cfg: ReportConfig
    seed: int
    root: Path
    data_root: Path
    progress: bool
    log: Callable[[str], None]
    _data: dict[str, tuple[Dataset, SideTables, dict[str, Any]]] = field(default_factory=dict)
    _test: dict[str, Requests] = field(default_factory=dict)

    @property
    def eval_key(self) -> dict[str, Any]:
        """What a run's evaluation depends on besides its training (a change re-evaluates)."""
        return {"test_impressions": self.cfg.test_impressions, "stream": TEST_STREAM}

    def dataset(self, variant: str) -> tuple[Dataset, SideTables, dict[str, Any]]:
        if variant not in self._data:
            wcfg = world_config(self.cfg, self.seed, variant)
            path = dataset_dir(self.data_root, self.cfg.world_preset,
                               variant_overrides(self.cfg, variant), self.seed)  # fmt: skip
            ds, gen = ensure_dataset(path, wcfg, self.cfg.world_preset, self.progress, self.log)
            side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)
            self._data[variant] = (ds, side, gen)
        return self._data[variant]

    def test(self, variant: str) -> Requests:
        """The test sample of a world variant; its labels and users are saved once."""
        if variant not in self._test:
            ds, side, _ = self.dataset(variant)
            t0 = time.perf_counter()
            req = read_test_sample(ds, side, self.cfg.test_impressions, self.seed)
            self._test[variant] = req
            save_npz(self.root / f"test_{variant}.npz", click=req.label("click").astype(np.int8),
                      user=req.user_id[req.imp_req])  # fmt: skip
            self.log(f"test sample ({variant}): {req.n_impressions:,} impressions "
                     f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
        return self._test[variant]


def same_config(
    have: Mapping[str, Any] | None, want: Mapping[str, Any], defaults: Mapping[str, Any]
) -> bool:
    """Whether a saved config ``have`` is ``want``. A key that ``have`` lacks (a field added to
    the config class after the run) matches when ``want`` holds its default ``defaults[key]``."""
    if have is None:
        return False
    h, w, d = jsonable(dict(have)), jsonable(dict(want)), jsonable(dict(defaults))
    return all(h[k] == v if k in h else (k in d and d[k] == v) for k, v in w.items())


def _defaults(cfg: Any) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cfg)} if dataclasses.is_dataclass(cfg) else {}


def _finished(run_dir: Path, want: Any) -> dict[str, Any] | None:
    """The run's ``train.json`` when its training of config ``want`` (a config dataclass or a
    dict) finished (None when not); raises on a folder of another config."""
    defaults = _defaults(want)
    want_d = dataclasses.asdict(want) if dataclasses.is_dataclass(want) else dict(want)
    path = run_dir / "train.json"
    if not path.exists():
        ck = run_dir / "checkpoint.pt"
        if ck.exists():
            have = torch.load(ck, map_location="cpu", weights_only=False).get("cfg")
            if not same_config(have, want_d, defaults):
                raise ConfigError(f"{ck} is a checkpoint of another config; remove {run_dir}")
        return None
    info = read_json(path)
    if not same_config(info.get("config"), want_d, defaults):
        raise ConfigError(f"{run_dir} holds a run of another config; remove it or choose --runs")
    return info


def _record_eval(
    ctx: SeedData,
    spec: RunSpec,
    run_dir: Path,
    info: dict[str, Any],
    req: Requests,
    scores: Mapping[str, np.ndarray],
    t0: float,
) -> dict[str, Any]:
    """Add the test-sample evaluation to a run's ``info`` (click AUC of each score:
    ``auc_<name>``, or ``auc`` for a single ``score``), save the scores beside it and write
    ``train.json``; returns ``info["eval"]``."""
    y = req.label("click")
    aucs = {("auc" if k == "score" else f"auc_{k}"): auc(y, v) for k, v in scores.items()}
    info["eval"] = {"impressions": req.n_impressions, **aucs}
    info["eval_split"] = "test-sample"
    info["eval_sample"] = ctx.eval_key
    info["eval_seconds"] = round(time.perf_counter() - t0, 2)
    info["spec"] = dataclasses.asdict(spec)
    save_npz(run_dir / "scores.npz", **scores)
    write_json(run_dir / "train.json", info)
    return info["eval"]


def _run_rl(
    ctx: SeedData,
    spec: RunSpec,
    run_dir: Path,
    cfg: Any,
    train: Callable[..., Any],
    score: Callable[[Path, SideTables, Requests], dict[str, np.ndarray]],
) -> dict[str, Any]:
    """A DRL-Rec or HRL-Rec run: trained by ``train`` (:func:`training.drl.train.run` or
    :func:`training.drl.hrl.run_hrl`) unless finished, then evaluated on the test sample
    (``score(run_dir, side, req)``: each network's score per impression, by name)."""
    info = _finished(run_dir, cfg)
    if info is not None and info.get("eval_sample") == ctx.eval_key:
        return {**info, "skipped": True}
    ds, side, _ = ctx.dataset(spec.world)
    if info is None:
        ctx.log(f"{spec.name}: train ({cfg.max_instances:,} instances)")
        train(ds.root, run_dir, cfg, device=ctx.cfg.device, resume=True, progress=ctx.progress,
              eval_split=None)  # fmt: skip
        info = read_json(run_dir / "train.json")
    req = ctx.test(spec.world)
    t0 = time.perf_counter()
    e = _record_eval(ctx, spec, run_dir, info, req, score(run_dir, side, req), t0)
    aucs = " ".join(f"{k[4:]} {v:.4f}" for k, v in e.items() if k.startswith("auc_"))
    ctx.log(f"{spec.name}: AUC {aucs} (train {info['seconds']:.0f} s, "
            f"eval {info['eval_seconds']:.0f} s)")  # fmt: skip
    return {**info, "skipped": False}


def _run_drl(ctx: SeedData, spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    from training.bundles import load_drl_run
    from training.drl.train import impression_q, run

    cfg = ctx.cfg.drl_config(ctx.seed, **dict(spec.drl))

    def score(run_dir: Path, side: SideTables, req: Requests) -> dict[str, np.ndarray]:
        _, model, _ = load_drl_run(run_dir)
        return {who: impression_q(getattr(model, who), req, cfg.memory)
                for who in ("teacher", "student")}  # fmt: skip

    return _run_rl(ctx, spec, run_dir, cfg, run, score)


def _run_hrl(ctx: SeedData, spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    from training.drl.hrl import HRLTrainer, impression_scores, run_hrl

    cfg = ctx.cfg.hrl_config(ctx.seed)

    def score(run_dir: Path, side: SideTables, req: Requests) -> dict[str, np.ndarray]:
        tr = HRLTrainer(cfg, side, device=ctx.cfg.device)
        tr.load(run_dir / "checkpoint.pt")
        actor, critic = impression_scores(tr.net, req, cfg.memory)
        return {"actor": actor, "critic": critic}

    return _run_rl(ctx, spec, run_dir, cfg, run_hrl, score)


def _pointwise_config(ctx: SeedData, arch: str) -> dict[str, Any]:
    c = ctx.cfg
    d = c.drl_config(ctx.seed)
    return {"arch": arch, "instances": c.budget, "epochs": 1, "batch_size": c.pointwise_batch_size,
            "lr": c.pointwise_lr, "embed_dim": c.pointwise_embed_dim, "seed": ctx.seed,
            "sessions_per_chunk": d.sessions_per_chunk}  # fmt: skip


def _run_pointwise(ctx: SeedData, spec: RunSpec, run_dir: Path, cache: dict[str, Any]) -> dict:
    from training.baselines.pointwise import predict, seeded_build_model, train_pointwise

    want = _pointwise_config(ctx, spec.arch)
    info = _finished(run_dir, want)
    if info is not None and info.get("eval_sample") == ctx.eval_key:
        return {**info, "skipped": True}
    ds, side, _ = ctx.dataset(spec.world)
    if "train" not in cache:
        cache["train"] = train_prefix(ds, side, ctx.cfg.budget, want["sessions_per_chunk"],
                                      ctx.seed)  # fmt: skip
    x, y = cache["train"]
    run_dir.mkdir(parents=True, exist_ok=True)
    model = seeded_build_model(spec.arch, side.spec.sizes(), seed=ctx.seed,
                               embed_dim=want["embed_dim"])  # fmt: skip
    res = train_pointwise(model, x, y, epochs=1, batch_size=want["batch_size"], lr=want["lr"],
                          seed=ctx.seed, device=ctx.cfg.device, progress=ctx.progress)  # fmt: skip
    model = model.cpu().eval()
    torch.save(model.state_dict(), run_dir / "model.pt")
    req = ctx.test(spec.world)
    t0 = time.perf_counter()
    score = predict(model, req.imp_ids)
    info = {
        "kind": "pointwise",
        "config": want,
        "instances": int(x.shape[0]),
        "seconds": round(res.seconds, 2),
        "instances_per_s": round(x.shape[0] / max(res.seconds, 1e-9), 1),
        "train_loss_history": res.train_loss_history,
        "n_params": int(sum(p.numel() for p in model.parameters())),
    }
    e = _record_eval(ctx, spec, run_dir, info, req, {"score": score}, t0)
    ctx.log(f"{spec.name}: AUC {e['auc']:.4f} ({res.seconds:.0f} s, "
            f"{x.shape[0]:,} impressions)")  # fmt: skip
    return {**info, "skipped": False}


def run_seed(
    cfg: ReportConfig,
    seed: int,
    runs: list[RunSpec],
    root: Path,
    data_root: Path,
    only: Sequence[str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or skip, when finished) the seed's runs and online tests; returns what ran.

    Raises :class:`NotRunnable` when ``only`` names a stage whose runs are not finished (the
    full plan, ``only`` empty, runs them first)."""
    root.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        log(f"[seed {seed}] {msg}")

    ctx = SeedData(cfg, seed, root, data_root, progress, say)
    done: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    for spec in runs:
        if not selected(only, spec.name, spec.group):
            continue
        run_dir = root / spec.name
        if spec.kind == "drl":
            info = _run_drl(ctx, spec, run_dir)
        elif spec.kind == "hrl":
            info = _run_hrl(ctx, spec, run_dir)
        else:
            info = _run_pointwise(ctx, spec, run_dir, cache)
        if info["skipped"]:
            say(f"{spec.name}: finished earlier, skipped")
        done[spec.name] = info["skipped"]
    missing: list[str] = []

    def need(what: str, result: Any) -> None:
        if result is None:
            missing.append(what)

    if selected(only, "online"):
        arms = {"teacher": ("drl", "teacher"), "student": ("drl", "student"),
                "student_gamma0": ("gamma0", "student")}  # fmt: skip
        need("online", online_test(ctx, "base", arms, root / "online.json",
                                   optional=["student_gamma0"]))  # fmt: skip
    if selected(only, "control"):
        arms = {"student_gamma0.4": ("control_gamma0.4", "student"),
                "student_gamma0": ("control_gamma0", "student"),
                "teacher_gamma0.4": ("control_gamma0.4", "teacher"),
                "teacher_gamma0": ("control_gamma0", "teacher")}  # fmt: skip
        need("control", online_test(ctx, "long_term_off", arms, root / "control_online.json"))
    if selected(only, "main", "ceiling"):
        ceiling(ctx, root / "ceiling.json")
    if selected(only, "online"):
        need("slate truth", slate_truth(ctx, root / "slate_truth.json"))
    if selected(only, "horizon"):
        req = {f"{who}_request{g:g}": (f"request_gamma{g:g}", who)
               for who in ("student", "teacher") for g in HORIZON_GAMMAS}  # fmt: skip
        arms = {"student_slot": ("drl", "student"), "student_slot_gamma0": ("gamma0", "student"),
                **req}  # fmt: skip
        need("horizon", online_test(ctx, "base", arms, root / "horizon_online.json",
                                    optional=["student_slot", "student_slot_gamma0"]))  # fmt: skip
        arms = {a: (f"control_{run}", who) for a, (run, who) in req.items()}
        need("horizon control", online_test(ctx, "long_term_off", arms,
                                            root / "horizon_control_online.json"))  # fmt: skip
    meta = {}
    for variant, (ds, _, gen) in ctx._data.items():
        meta[variant] = {"path": str(ds.root), "counts": ds.meta.get("counts"),
                         "generated_now": gen.get("generated"),
                         "generate_seconds": gen.get("seconds")}  # fmt: skip
    if meta:
        path = root / "datasets.json"
        old = read_json(path) if path.exists() else {}
        write_json(path, {**old, **meta})
    if only and missing:
        raise NotRunnable(
            f"--only {' '.join(only)}: seed {seed}: {', '.join(dict.fromkeys(missing))} cannot "
            f"run: the runs it reads are not finished under {root} (run them first, e.g. "
            "without --only)"
        )
    return done
