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

"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.baselines.pointwise import uses_batch_norm
from training.data.features import SideTables
from training.data.pipeline import code_version
from training.eval.baselines_stages import (
    ALL_MODELS,
    ARTIFACT_VERSION,
    SeedContext,
    choose_temperatures,
    ncis_vs_online,
    online_test,
    train_model,
)
from training.eval.slates import online_clicks_per_request
from training.harness.config import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_OPEN_BOTTOM,
    Rule,
    apply_overrides,
    pick,
    validate,
    world_pairs,
)
from training.harness.data import (
    SIM_SOURCE,
    dataset_dir,
    ensure_dataset,
    split_days,
    split_impressions,
    world_fingerprint,
)
from training.harness.runfolder import jsonable, read_json, write_json
from training.sim.config import ConfigError, WorldConfig, preset

__all__ = [
    "ALL_MODELS",
    "EVAL_PRESETS",
    "EvalConfig",
    "check_run_dir",
    "eval_preset",
    "run_seed",
    "world_config",
]


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


#: What the numeric fields of :class:`EvalConfig` accept (checked at construction).
EVAL_RULES: dict[str, Rule] = {
    **dict.fromkeys(("train_impressions", "valid_impressions", "test_impressions",
                     "online_users", "shortlist", "ncis_requests", "bc_negatives"),
                    NON_NEGATIVE),
    **dict.fromkeys(("max_epochs", "batch_size", "embed_dim", "n_boot", "threads"), AT_LEAST_1),
    "cap_min_ess_share": UNIT_OPEN_BOTTOM,
    "temperatures": POSITIVE,
    "lr": POSITIVE,
}  # fmt: skip


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
        if not self.temperatures:
            raise ConfigError("eval config temperatures=(): need at least one")
        validate(self, "eval config", EVAL_RULES)
        bn = [m for m in self.models if uses_batch_norm(ALL_MODELS[m][0])]
        if bn and self.batch_size < 2:
            raise ConfigError(f"eval config batch_size={self.batch_size}: {', '.join(bn)} use "
                              "batch norm and train on batches of at least 2 rows")  # fmt: skip

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

    def with_world(self, overrides: Mapping[str, str]) -> EvalConfig:
        """A copy whose worlds take ``overrides`` (``--set`` of the command), checked now."""
        return dataclasses.replace(self, world_overrides=world_pairs(self.world_preset, overrides))


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
    side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)
    ctx = SeedContext(cfg, seed, wcfg, ds, side, run_dir, progress, logf)
    models = {name: train_model(ctx, name) for name in cfg.models}
    temps = choose_temperatures(ctx)
    online, online_info = online_test(ctx, temps)
    ncis_res = ncis_vs_online(ctx, temps, online)
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
