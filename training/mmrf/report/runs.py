"""One seed of the MMRF report: the dataset, every trained row (resumably), then the measures.

:func:`run_seed` trains what :mod:`training.mmrf.report.plan` lists into ``<runs>/seed<s>``
(a finished run of the same config is reused, one of another config refused), then computes
the offline table, the online A/B test and the feedback-model probe
(:mod:`training.mmrf.report.measures`), each cached in the seed's folder with its inputs
(:func:`training.harness.runfolder.cached`), and writes ``seed_summary.json``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from training.data.features import SideTables
from training.data.pipeline import code_version
from training.harness.data import SIM_SOURCE, dataset_dir, ensure_dataset, split_days
from training.harness.runfolder import cached, jsonable, read_json, write_json
from training.mmrf.report import measures
from training.mmrf.report.plan import (
    ONLINE_ARMS,
    POINTWISE_MODELS,
    RL_ROWS,
    MMRFReportConfig,
    lambda_run,
)
from training.sim.config import ConfigError

Log = Callable[[str], None]


def _finished(run_dir: Path, cfg: Any) -> dict[str, Any] | None:
    """The ``train.json`` of a finished run of ``cfg`` in ``run_dir``; None when unfinished;
    ConfigError when it holds a run of another config."""
    done = run_dir / "train.json"
    if not done.exists():
        return None
    info = read_json(done)
    if info.get("config") != jsonable(dataclasses.asdict(cfg)):
        raise ConfigError(f"{run_dir} holds a run of another config; choose another --runs "
                          "folder or remove it")  # fmt: skip
    return info


def train_rl(ds_root: Path, run_dir: Path, cfg: Any, log: Log) -> dict[str, Any]:
    """A ``ranker mmrf-train`` run (MMRF, an ablation or a baseline) unless finished; its
    ``train.json`` (offline figures of the served score on the valid split)."""
    from training.mmrf.train import run

    info = _finished(run_dir, cfg)
    if info is not None:
        log(f"{run_dir.name}: finished, reused")
        return info
    log(f"{run_dir.name}: train ({cfg.max_instances:,} instances)")
    return run(ds_root, run_dir, cfg, resume=(run_dir / "checkpoint.pt").exists(),
               progress=False, eval_split="valid")  # fmt: skip


def choose_lambda(runs: dict[float, dict[str, Any]]) -> float:
    """The lambda whose run's served score correlates best with watch time on the valid split
    (``train.json`` ``eval.main_corr_watch_time``; ties: the smaller lambda)."""
    if not runs:
        raise ValueError("choose_lambda: no runs")

    def key(lam: float) -> tuple[float, float]:
        v = runs[lam]["eval"]["main_corr_watch_time"]
        return (v if v == v else -2.0, -lam)  # NaN last

    return max(runs, key=key)


def train_rl_rows(cfg: MMRFReportConfig, seed: int, ds_root: Path, folder: Path,
                  log: Log) -> tuple[dict[str, Path], dict[str, Any]]:  # fmt: skip
    """Every multi-agent row; returns row -> run folder, and the lambda choice."""
    from training.mmrf.train import build_config

    def conf(variant: str, lam: float | None = None) -> Any:
        over = [f"{k}={v}" for k, v in cfg.rl_overrides(seed, lam).items()]
        return build_config(variant, over)

    lam_runs = {}
    for lam in cfg.lambdas:
        lam_runs[float(lam)] = train_rl(ds_root, folder / lambda_run(lam), conf("mmrf", lam), log)
    best = choose_lambda(lam_runs)
    dirs = {"mmrf": folder / lambda_run(best)}
    for v in RL_ROWS[1:]:
        d = folder / v
        train_rl(ds_root, d, conf(v, best if v == "mmrf-co" else None), log)
        dirs[v] = d
    choice = {"chosen": best, "on": "valid: served-score correlation with watch time",
              "per_lambda": {str(k): v["eval"]["main_corr_watch_time"]
                             for k, v in lam_runs.items()}}  # fmt: skip
    return dirs, choice


def train_pointwise_rows(cfg: MMRFReportConfig, seed: int, wcfg: Any, ds: Any, side: Any,
                         folder: Path, progress: bool, log: Log) -> Any:  # fmt: skip
    """BC, weighted Wide&Deep and weighted DeepFM through the baselines report's stages (the
    epoch with the best valid loss kept); the stages' context, holding the models."""
    from training.eval.baselines_run import check_run_dir, eval_preset
    from training.eval.baselines_stages import SeedContext, train_model

    ecfg = eval_preset(cfg.pointwise_preset).with_overrides({"models": ",".join(POINTWISE_MODELS),
                                                              "ncis_models": "fm"})  # fmt: skip
    ecfg = dataclasses.replace(ecfg, world_preset=cfg.world_preset,
                               world_overrides=cfg.world_overrides)  # fmt: skip
    check_run_dir(folder, ecfg, wcfg)
    ctx = SeedContext(ecfg, seed, wcfg, ds, side, folder, progress, log)
    for m in POINTWISE_MODELS:
        train_model(ctx, m)
    return ctx


def train_ltr_row(cfg: MMRFReportConfig, seed: int, ds: Any, side: Any, folder: Path,
                  log: Log) -> Any:  # fmt: skip
    """The LightGBM lambdarank control (early stopping on valid NDCG) unless finished."""
    from training.baselines.ltr import LTRConfig, LTRModel, read_groups, train_ltr

    lcfg = LTRConfig(seed=int(seed), num_rounds=cfg.ltr_rounds, threads=cfg.threads)
    want = jsonable(dataclasses.asdict(lcfg))
    if (folder / "ltr.json").exists() and (folder / "want.json").exists():
        if read_json(folder / "want.json") != want:
            raise ConfigError(f"{folder} holds an LTR run of another config")
        log("ltr: finished, reused")
        return LTRModel.load(folder)
    log("ltr: train")
    k = int(ds.meta.get("list_size", 10))
    model = train_ltr(read_groups(ds, "train", side, lcfg.train_impressions, seed),
                      read_groups(ds, "valid", side, lcfg.valid_impressions, seed), lcfg, k,
                      ds.spec)  # fmt: skip
    model.save(folder)
    write_json(folder / "want.json", want)
    return model


def train_drl_row(cfg: MMRFReportConfig, seed: int, ds_root: Path, folder: Path, log: Log) -> Any:
    """The DRL-Rec student (the DRL report preset's config) unless finished; the model."""
    from training.bundles import load_drl_run
    from training.drl.report.plan import report_preset as drl_preset
    from training.drl.train import run

    extra = {"max_instances": cfg.drl_instances} if cfg.drl_instances else {}
    dcfg = drl_preset(cfg.drl_preset).drl_config(seed, **extra)
    if _finished(folder, dcfg) is None:
        log(f"drl: train ({dcfg.max_instances:,} instances)")
        run(ds_root, folder, dcfg, resume=(folder / "checkpoint.pt").exists(), progress=False,
            eval_split=None)  # fmt: skip
    else:
        log("drl: finished, reused")
    return load_drl_run(folder)[1]


def export_mmrf_bundle(ds_root: Path, drl_dir: Path, mmrf_dir: Path, folder: Path,
                       log: Log) -> Path:  # fmt: skip
    """The chosen MMRF run's actor exported as ``mmrf_watchtime`` (``ranker export --mmrf``'s
    path, parity-checked; the DRL-Rec student rides along, as export needs a DRL run) unless a
    bundle of the same runs is there; its folder."""
    from training.bundles import export_runs

    want = {"drl": str(drl_dir), "mmrf": str(mmrf_dir)}
    key = folder.parent / "bundle_runs.json"
    if (folder / "manifest.json").exists() and key.exists() and read_json(key) == want:
        log("bundle: exported, reused")
        return folder
    log("bundle: export mmrf_watchtime")
    export_runs(drl_dir, None, ds_root, folder, mmrf=mmrf_dir, name="mmrf-report", overwrite=True)
    write_json(key, want)
    return folder


def stage_seconds(run_dir: Path, ltr: Any, gen: dict[str, Any], *measured: dict) -> dict:
    """Seconds of each stage as recorded when it ran (a resumed run keeps the times of the run
    that did the work): dataset, multi-agent training, point-wise, LTR, DRL-Rec, measures."""
    rl = sum(read_json(p)["seconds"] for p in (run_dir / "rl").glob("*/train.json"))
    pw = sum(
        v["seconds"]["train"] + v["seconds"]["offline"]
        for v in map(read_json, (run_dir / "pointwise" / "models").glob("*.json"))
    )
    out = {"dataset": float(gen.get("seconds") or 0.0), "multi_agent": float(rl),
           "pointwise": float(pw), "ltr": float(ltr.info.get("seconds", 0.0)),
           "drl": float(read_json(run_dir / "drl" / "train.json")["seconds"]),
           "measures": float(sum(m.get("seconds", 0.0) for m in measured))}  # fmt: skip
    out["total"] = sum(out.values())
    return out


def run_seed(cfg: MMRFReportConfig, seed: int, run_dir: Path, data_root: Path,
             progress: bool = False, log: Log | None = None) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) one seed; returns and writes ``run_dir/seed_summary.json``."""
    torch.set_num_threads(cfg.threads)
    say = log or (lambda s: None)

    def logf(msg: str) -> None:
        say(f"[seed {seed}] {msg}")

    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    wcfg = cfg.world(seed)
    path = dataset_dir(data_root, cfg.world_preset, cfg.world_overrides, seed)
    ds, gen = ensure_dataset(path, wcfg, cfg.world_preset, progress, logf)
    side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)
    rl_dirs, lam = train_rl_rows(cfg, seed, ds.root, run_dir / "rl", logf)
    pw = train_pointwise_rows(cfg, seed, wcfg, ds, side, run_dir / "pointwise", progress, logf)
    ltr = train_ltr_row(cfg, seed, ds, side, run_dir / "ltr", logf)
    drl = train_drl_row(cfg, seed, ds.root, run_dir / "drl", logf)
    bundle = export_mmrf_bundle(ds.root, run_dir / "drl", rl_dirs["mmrf"], run_dir / "bundle", logf)
    env = measures.SeedModels(cfg, seed, wcfg, ds, side, rl_dirs, pw, ltr, drl, bundle)
    trained = {"rl": {k: str(v) for k, v in rl_dirs.items()}, "lambda": lam}
    want = {"cfg": cfg.to_dict(), "runs": trained}
    offline = cached(run_dir / "offline.json", want, lambda: measures.offline_table(env, logf))
    online = cached(run_dir / "online.json", {**want, "arms": list(ONLINE_ARMS)},
                    lambda: measures.online_table(env, logf))  # fmt: skip
    probe = cached(run_dir / "feedback.json", want, lambda: measures.feedback_quality(env, logf))
    summary = {
        "seed": seed, "config": cfg.to_dict(), "world": wcfg.to_dict(),
        "code_version": code_version(), "sim_source": SIM_SOURCE,
        "dataset": {"path": str(ds.root), "counts": ds.meta.get("counts"),
                    "test_days": split_days(ds, "test"), "generated_now": gen["generated"],
                    "generate_seconds": gen["seconds"]},
        "choices": {"lambda": lam, "checkpoint": "the last of each run (no other is kept)",
                    "learning_rates": "MMRFConfig defaults, not tuned",
                    "pointwise_epoch": "best valid loss", "ltr_iteration": "best valid NDCG"},
        "offline": offline, "online": online, "feedback": probe,
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    summary["stage_seconds"] = stage_seconds(run_dir, ltr, gen, offline, online, probe)
    write_json(run_dir / "seed_summary.json", summary)
    logf(f"done in {summary['seconds']:.0f} s")
    return summary
