"""From training runs to a model bundle: ``ranker export`` and ``ranker default-bundle``.

:func:`export_runs` reads a DRL-Rec run folder (``checkpoint.pt``, ``train.json``) and a
feedback-weighted Wide&Deep (``wide_deep_weighted.pt`` + ``.json``, as the baselines report
writes them or :func:`train_weighted_wide_deep` below) and writes one bundle with three
servable models: ``drl_student``, ``drl_teacher`` and ``wide_deep_weighted`` (the non-RL
baseline arm), and, given an MMRF run folder (``python -m training.mmrf.train``), a fourth:
``mmrf_watchtime``, the main agent's actor (kind ``actor``) with the run's reward scale.
Every model is sized by the feature spec it was trained with (recorded in its checkpoint or
info JSON), and the bundle carries that spec: the runs' and the dataset's must agree.
:func:`build_default_bundle` is the one documented command behind
``models/default``: the default world, DRL-Rec at a fixed budget, the weighted Wide&Deep,
export; each stage is skipped when its finished output is already there, and every stage is
seeded, so a rebuild on the same versions gives the same graphs and the same hashes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from contract.bundle import BundleError
from contract.features import DEFAULT_SPEC, FeatureSpec, spec_differences
from contract.schema import FEEDBACK
from training.baselines.pointwise import WideDeep, predict, seeded_build_model, train_pointwise
from training.data.features import SideTables, build_requests
from training.data.pipeline import Dataset, DatasetError
from training.drl.networks import flops_per_request
from training.drl.train import DRLConfig, DRLRec, checkpoint_spec
from training.export import ExportModel, actor_export, pointwise_export, q_export, real_batch
from training.export import export_bundle as _export_bundle
from training.mmrf.networks import MultiAgentActorCritic, actor_flops_per_request
from training.mmrf.train import MMRFConfig

__all__ = [
    "MMRF_MODEL",
    "DefaultBundleConfig",
    "build_default_bundle",
    "export_runs",
    "load_drl_run",
    "load_mmrf_run",
    "load_wide_deep",
    "mmrf_export",
    "train_weighted_wide_deep",
    "wide_deep_spec",
]


def _finished_run(run: Path, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(checkpoint, train.json summary)`` of a finished ``kind`` run folder; raises
    FileNotFoundError naming the missing file."""
    ck, summ = run / "checkpoint.pt", run / "train.json"
    for f in (ck, summ):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing; is {run} a finished {kind} run folder?")
    return torch.load(ck, map_location="cpu", weights_only=False), json.loads(summ.read_text())


def load_drl_run(run: str | Path) -> tuple[DRLConfig, DRLRec, dict[str, Any]]:
    """The config, trained teacher + student and summary of a ``ranker drl-train`` folder.

    The networks are sized by the feature spec the run was trained with (the checkpoint's,
    ``DEFAULT_SPEC`` for a run from before specs were saved): ``model.spec``. Raises
    FileNotFoundError when the folder has no finished run (``checkpoint.pt`` and
    ``train.json``)."""
    sd, summary = _finished_run(Path(run), "drl-train")
    cfg_d = dict(sd["cfg"])
    cfg_d["mlp"] = tuple(cfg_d["mlp"])
    cfg_d["loss_weights"] = tuple(cfg_d["loss_weights"])
    cfg = DRLConfig(**cfg_d)
    model = DRLRec(cfg, checkpoint_spec(sd))
    model.load_state_dict(sd["model"])
    return cfg, model.eval(), summary


#: The bundle model (and service arm) name of MMRF's WatchTime actor.
MMRF_MODEL = "mmrf_watchtime"


def load_mmrf_run(run: str | Path) -> tuple[MMRFConfig, MultiAgentActorCritic, dict[str, Any]]:
    """The config, trained agents (eval mode, on the CPU) and summary of an MMRF run folder
    (``python -m training.mmrf.train``); the summary's ``reward_scale`` and ``feature_spec``
    (the spec that sized the networks) are the checkpoint's.

    Raises FileNotFoundError when the folder has no finished run (``checkpoint.pt`` and
    ``train.json``), BundleError for a run of a baseline (Pareto, TSCAC, MASSA: other
    networks than the actor graphs export)."""
    sd, summary = _finished_run(Path(run), "MMRF")
    cfg_d: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                             for k, v in sd["cfg"].items()}  # fmt: skip
    cfg = MMRFConfig(**cfg_d)
    if cfg.algorithm != "mmrf":
        raise BundleError(f"{run} is a {cfg.algorithm} baseline run; only MMRF runs (and its "
                          "ablations) export as mmrf_watchtime")  # fmt: skip
    spec = checkpoint_spec(sd)
    net = MultiAgentActorCritic(cfg.net(spec))
    net.load_state_dict(sd["net"])
    summary["reward_scale"] = dict(sd["reward_scale"])
    summary["feature_spec"] = spec.to_dict()
    return cfg, net.eval(), summary


def load_wide_deep(path: str | Path) -> tuple[WideDeep, dict[str, Any]]:
    """A Wide&Deep state dict (``.pt``) and its info JSON (same stem), as the baselines report
    writes them, sized by the info's ``feature_spec`` (``DEFAULT_SPEC`` for one written before
    specs were saved; :func:`wide_deep_spec`). Raises FileNotFoundError naming the missing
    file."""
    path = Path(path)
    info_path = path.with_suffix(".json")
    for f in (path, info_path):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing (a Wide&Deep .pt and its .json)")
    info = json.loads(info_path.read_text())
    model = seeded_build_model("wide_deep", wide_deep_spec(info).sizes(), seed=0,
                               embed_dim=int(info.get("embed_dim", 16)))  # fmt: skip
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    assert isinstance(model, WideDeep)
    return model.eval(), info


def wide_deep_spec(info: dict[str, Any]) -> FeatureSpec:
    """The feature spec a Wide&Deep's info JSON records (``DEFAULT_SPEC`` without one)."""
    d = info.get("feature_spec")
    return DEFAULT_SPEC if d is None else FeatureSpec.from_dict(d)


def _same_spec(a: FeatureSpec, b: FeatureSpec, what_a: str, what_b: str) -> None:
    """Raise DatasetError (a ValueError: the CLI's one-line error) naming both sides when
    two feature specs differ."""
    if a != b:
        diff = spec_differences(a, b)
        raise DatasetError(
            f"{what_a} was trained with another feature spec than {what_b} "
            f"({a.n_fields} and {b.n_fields} fields; they differ in {diff[:5]})"
        )


def _weighted_xyw(ds: Dataset, side: SideTables, split: str, n: int, seed: int):
    from training.eval.samples import mmrf_weights, read_sample

    key = "session_id" if split == "train" else "user_id"
    s = read_sample(ds, split, side, n, seed, key)
    fb = {name: s.feedback[:, j] for j, name in enumerate(FEEDBACK)}
    return s.x, s.click.astype(np.float32), mmrf_weights(fb), s.user


def train_weighted_wide_deep(
    data: str | Path,
    out: str | Path,
    *,
    train_impressions: int = 300_000,
    valid_impressions: int = 60_000,
    max_epochs: int = 3,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the feedback-weighted Wide&Deep of the evaluation harness (BCE on clicks, each
    impression weighted by ``mmrf_weights``), keep the epoch with the best weighted validation
    loss, and write ``out`` (``.pt``) and its ``.json``. Returns the info dict."""
    from training.eval.metrics import auc

    out = Path(out)
    ds = Dataset.open(data)
    side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)
    x, y, w, _ = _weighted_xyw(ds, side, "train", train_impressions, seed)
    xv, yv, wv, _ = _weighted_xyw(ds, side, "valid", valid_impressions, seed)
    model = seeded_build_model("wide_deep", ds.spec.sizes(), seed=seed)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    history = []
    for epoch in range(max_epochs):
        res = train_pointwise(model, x, y, weights=w, epochs=1, batch_size=1024, lr=2e-3,
                              seed=seed * 1000 + epoch, progress=progress)  # fmt: skip
        p = np.clip(predict(model, xv).astype(np.float64), 1e-7, 1 - 1e-7)
        vl = float(np.dot(wv, -(yv * np.log(p) + (1 - yv) * np.log1p(-p))) / len(p))
        history.append({"epoch": epoch + 1, "valid_loss": vl, "seconds": res.seconds})
        if best is None or vl < best[0]:
            best = (vl, epoch + 1, copy.deepcopy(model.state_dict()))
        else:
            break
    assert best is not None
    model.load_state_dict(best[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    xt, yt, _, _ = _weighted_xyw(ds, side, "test", valid_impressions, seed)
    info = {
        "model": "wide_deep_weighted",
        "architecture": "wide_deep",
        "objective": "BCE(click) weighted by mmrf_weights",
        "embed_dim": 16,
        "train_impressions": int(len(y)),
        "best_epoch": best[1],
        "history": history,
        "offline": {"auc": float(auc(yt, predict(model.eval(), xt))), "n_test": int(len(yt))},
        "seed": seed,
        "feature_spec": ds.spec.to_dict(),
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return info


def export_runs(
    drl_run: str | Path,
    baseline: str | Path | None,
    data: str | Path,
    out: str | Path,
    *,
    mmrf: str | Path | None = None,
    name: str = "bundle",
    overwrite: bool = False,
    real_requests: int = 256,
) -> dict[str, Any]:
    """Export a DRL-Rec run's student and teacher, (optionally) a weighted Wide&Deep and
    (optionally) an MMRF run's WatchTime actor as :data:`MMRF_MODEL` into the bundle ``out``,
    verified on real requests of ``data``'s test split. The bundle carries the runs' feature
    spec (and ``data``'s side tables, featurised by it at load). Returns the manifest. Raises
    FileExistsError, FileNotFoundError, ParityError, or ValueError when a run was trained
    with another feature spec than ``data``'s (nothing written)."""
    cfg, model, summary = load_drl_run(drl_run)
    ds = Dataset.open(data)
    spec = model.spec
    _same_spec(spec, ds.spec, f"the DRL-Rec run {drl_run}", f"the dataset {data}")
    side = SideTables.from_tables(ds.users(), ds.items(), spec)
    test = ds.read("test")
    first = pa.array(np.unique(test.column("session_id").to_numpy())[:200])
    req = build_requests(test.filter(pc.is_in(test.column("session_id"), value_set=first)), side)
    real = real_batch(req, cfg.memory, real_requests, seed=0)
    ev = summary.get("eval", {})
    common = {"training": {"run": str(drl_run), "config": asdict(cfg),
                           "steps": summary.get("steps"),
                           "instances": summary.get("instances")}}  # fmt: skip
    models = [
        q_export("drl_student", model.student, spec, **common,
                 metrics={"auc_test": ev.get("auc_student")},
                 flops_per_request=flops_per_request(cfg.student_net())),
        q_export("drl_teacher", model.teacher, spec, **common,
                 metrics={"auc_test": ev.get("auc_teacher")},
                 flops_per_request=flops_per_request(cfg.teacher_net())),
    ]  # fmt: skip
    if baseline is not None:
        wd, info = load_wide_deep(baseline)
        _same_spec(wide_deep_spec(info), spec, f"the Wide&Deep {baseline}", f"the dataset {data}")
        models.append(pointwise_export(
            "wide_deep_weighted", wd, spec,
            training={"file": str(baseline),
                      **{k: v for k, v in info.items() if k not in ("offline", "feature_spec")}},
            metrics={"auc_test": info.get("offline", {}).get("auc")},
        ))  # fmt: skip
    if mmrf is not None:
        models.append(mmrf_export(mmrf, spec))
    dataset = {"path": str(data), "code_version": ds.meta.get("code_version"),
               "preset": ds.meta.get("preset"), "counts": ds.meta.get("counts"),
               "split": {k: len(v) for k, v in ds.meta.get("split", {}).items()}}  # fmt: skip
    return _export_bundle(out, models, spec, ds.users(), ds.items(), name=name,
                          dataset=dataset, real=real, overwrite=overwrite)  # fmt: skip


def mmrf_export(run: str | Path, spec: FeatureSpec | None = None) -> ExportModel:
    """An MMRF run folder's main actor as the bundle model :data:`MMRF_MODEL` (kind
    ``actor``): the run's reward scale in its manifest entry, the config and step counts as
    its training record, the main agent's offline figures of ``train.json`` as its metrics.
    Raises ValueError when ``spec`` (the bundle's) is given and the run's differs."""
    cfg, net, summary = load_mmrf_run(run)
    run_spec = FeatureSpec.from_dict(summary["feature_spec"])
    if spec is not None:
        _same_spec(run_spec, spec, f"the MMRF run {run}", "the DRL-Rec run")
    ev = summary.get("eval", {})
    return actor_export(
        MMRF_MODEL, net, run_spec, summary["reward_scale"],
        flops_per_request=actor_flops_per_request(net.cfg),
        training={"run": str(run), "method": "mmrf", "config": asdict(cfg),
                  "steps": summary.get("steps"), "instances": summary.get("instances"),
                  "agent": "watch_time (main)"},
        metrics={"eval_split": summary.get("eval_split"),
                 **{k: v for k, v in ev.items() if k.startswith("main_")}},
    )  # fmt: skip


@dataclass(frozen=True)
class DefaultBundleConfig:
    """The fixed recipe of ``models/default`` (change it and the bundle's hashes change)."""

    world_preset: str = "default"
    drl_overrides: tuple[tuple[str, Any], ...] = (("n_explore", 100), ("max_instances", 50_000))
    """DRL-Rec at the report's per-run budget (50k instances, 100 exploration candidates)."""
    wd_train_impressions: int = 300_000
    wd_valid_impressions: int = 60_000
    mmrf_overrides: tuple[tuple[str, Any], ...] | None = (("max_instances", 50_000),)
    """MMRF (``mmrf_watchtime``) at the MMRF report's per-run budget, the default config
    otherwise (``uncertainty_lambda`` 1); ``None``: no MMRF arm."""
    seed: int = 0


def build_default_bundle(
    out: str | Path = "models/default",
    *,
    data: str | Path = "data/default",
    work: str | Path = "runs/default-bundle",
    overwrite: bool = False,
    progress: bool = True,
    cfg: DefaultBundleConfig = DefaultBundleConfig(),
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Simulate the world if ``data`` is missing, train DRL-Rec, the weighted Wide&Deep and
    MMRF into ``work`` (a finished stage is reused), and export to ``out``. Torch runs on one
    thread so the result does not depend on the machine's core count."""
    from training.drl.train import run
    from training.mmrf.train import MMRFConfig
    from training.mmrf.train import run as run_mmrf
    from training.sim.config import preset
    from training.sim.generate import generate_dataset

    if Path(out).exists() and not overwrite:  # before minutes of training, not after
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    torch.set_num_threads(1)
    data, work = Path(data), Path(work)
    if not (data / "dataset.json").is_file():
        log(f"simulating the {cfg.world_preset} world into {data} ...")
        generate_dataset(preset(cfg.world_preset), data, progress=progress,
                         preset_name=cfg.world_preset)  # fmt: skip
    drl_dir = work / "drl"
    drl_cfg = DRLConfig(seed=cfg.seed).with_overrides(**dict(cfg.drl_overrides))
    if not _finished_stage(drl_dir, drl_cfg):
        log(f"training DRL-Rec into {drl_dir} ...")
        run(data, drl_dir, drl_cfg, progress=progress)
    mmrf_dir = None
    if cfg.mmrf_overrides is not None:
        mmrf_dir = work / "mmrf"
        mmrf_cfg = MMRFConfig(seed=cfg.seed).with_overrides(**dict(cfg.mmrf_overrides))
        if not _finished_stage(mmrf_dir, mmrf_cfg):
            log(f"training MMRF into {mmrf_dir} ...")
            run_mmrf(data, mmrf_dir, mmrf_cfg, progress=progress)
    wd_path = work / "wide_deep_weighted.pt"
    if not (wd_path.is_file() and wd_path.with_suffix(".json").is_file()):
        log(f"training the weighted Wide&Deep into {wd_path} ...")
        train_weighted_wide_deep(data, wd_path, train_impressions=cfg.wd_train_impressions,
                                 valid_impressions=cfg.wd_valid_impressions, seed=cfg.seed,
                                 progress=progress)  # fmt: skip
    log(f"exporting to {out} ...")
    return export_runs(drl_dir, wd_path, data, out, mmrf=mmrf_dir, name="default",
                       overwrite=overwrite)  # fmt: skip


def _finished_stage(run_dir: Path, cfg: Any) -> bool:
    """Whether ``run_dir`` holds a finished, evaluated run of ``cfg``; when not, whatever is
    there is removed (the stage trains afresh)."""
    done = run_dir / "train.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if "eval" in info and info["config"] == json.loads(json.dumps(asdict(cfg))):
            return True
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    return False
