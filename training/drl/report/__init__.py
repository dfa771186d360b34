"""The DRL-Rec report: the paper's Tables 2-4, Fig. 4 and a negative control, on simulated worlds.

    ranker drl-report --preset default --seeds 0 1 2 --out reports/drl
    ranker drl-report --preset tiny --seeds 0 1 2 --out reports/drl-tiny   # a smoke run

What it runs (:func:`build_plan`), per seed ``s`` (world seed ``s``, ``DRLConfig(seed=s)``):

- ``drl``: the full DRL-Rec; its teacher and its student are Table 2's "teacher" and "DRL-Rec".
- the seven Table 4 ablations (``no_explore_filter``, ``no_confidence``, ``no_kl``,
  ``no_hint``, ``no_gru``, ``no_self_attention``, ``gamma0``);
- the Fig. 4 sweeps: compression 0.875..0.25, filtered items 1/3/5/10 and input exploration
  candidates 100/500/1000 (the point equal to the base config is ``drl`` itself). They cost as
  much as everything else together, so by default they run on the first seed only
  (``sweep_seeds``) and the report says so;
- ``hrl``: HRL-Rec's item recommender trained by DDPG (:func:`training.drl.hrl.run_hrl`);
- the point-wise baselines of Table 2 (FM, Wide&Deep, NFM, AFM, DeepFM, AutoInt, AFN), one epoch
  over the same training budget: the same number of impressions, from the same stream
  (:func:`train_prefix`);
- the negative control: the full DRL-Rec with gamma 0.4 and with gamma 0, trained on the world
  with its long-term mechanisms switched off (:func:`training.sim.config.long_term_off`) and
  compared *online* (clicks per user, paired interval) on that world's test days;
- online (Table 3): the student, the teacher, the gamma-0 student and the logging policy as arms
  of a simulated A/B test on the test days (:func:`training.eval.online.run_online`, common
  random numbers, a random user subset);
- serving cost (once, first seed's nets): ``benchmarks/drl_cost.py``'s ``measure`` (parameters,
  bytes, multiply-adds, measured ms per request for a list of 10 from 200 candidates).

Every run has a fixed training budget (``max_instances`` real instances, times ``--scale``) and
its own folder ``<runs>/<preset>/seed<s>/<name>/`` (``--runs``, default ``<out>/runs``), with
``checkpoint.pt``, ``train.json`` (the test evaluation added) and ``scores.npz``. A folder
whose ``train.json`` holds an evaluation of the same config is finished and skipped; a run
cut short resumes from its checkpoint. ``--only`` restricts what is *run*; the report shows
every finished run it finds.

Offline evaluation: click AUC of each model's score on the same user sample of the test split
(whole sessions of a hashed random share of users, ``test_impressions`` impressions): the Q value
of the logged impression for DRL-Rec's nets, the actor's ranking score for HRL-Rec, the predicted
click logit for point-wise models. Nothing is chosen on the test split: every config is fixed
before the run; no early stopping.

Aggregation: a cell is the mean over seeds, ``± std`` the sample standard deviation. A paired
difference of two models' AUCs on a seed comes with a user-cluster bootstrap 95% interval on
that seed's test sample; over seeds the half-widths pool as ``h = sqrt(sum_s h_s^2) / S``.
Claims (:func:`direction_status` etc.) are marked *reproduced* when the mean over seeds lies in
the paper's direction **and** every seed agrees; otherwise *not reproduced*. Cost ratios are
reproduced within :data:`RATIO_TOLERANCE` (relative) of the paper's.

``<out>/analysis.md``, when present, is copied into the report under "Analysis": the place for
hand-written findings about claims that did not reproduce (the builder never overwrites it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from training.drl.report.aggregate import aggregate
from training.drl.report.claims import best_at, compression_shape
from training.drl.report.measures import run_cost
from training.drl.report.plan import (
    ABLATIONS,
    GROUPS,
    PAPER,
    POINTWISE,
    REPORT_PRESETS,
    ReportConfig,
    RunSpec,
    build_plan,
    report_preset,
    selected,
    sweep_run_name,
)
from training.drl.report.render import build_report
from training.drl.report.runs import run_seed, same_config, train_prefix
from training.harness.claims import direction_status, ratio_status
from training.harness.command import (
    NotRunnable,
    holds_work,
    report_folders,
    run_report_command,
)
from training.harness.config import check_device, check_seeds
from training.harness.stats import pooled, relaimpr_columns
from training.sim.config import ConfigError

__all__ = [
    "ABLATIONS",
    "PAPER",
    "POINTWISE",
    "REPORT_PRESETS",
    "ReportConfig",
    "RunSpec",
    "aggregate",
    "best_at",
    "build_plan",
    "build_report",
    "compression_shape",
    "direction_status",
    "pooled",
    "ratio_status",
    "relaimpr_columns",
    "report_preset",
    "run_drl_report",
    "same_config",
    "sweep_run_name",
    "train_prefix",
]

# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def run_drl_report(
    preset_name: str,
    seeds: Sequence[int],
    out: str | Path,
    *,
    runs_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    scale: float | None = None,
    only: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    world_overrides: Mapping[str, str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
    command: str | None = None,
) -> Path:
    """Run (or resume) the plan for every seed, then write the report; returns report.md.

    Everything lands under ``out`` unless asked otherwise: runs in ``runs_dir`` (default
    ``<out>/runs``) as ``<runs_dir>/<preset>/seed<s>/<name>/``, generated datasets in
    ``data_root`` (default ``<out>/datasets``). An existing ``out`` is refused unless
    ``resume`` (reuse its finished runs, rewrite the report) or ``overwrite`` (start afresh;
    ``analysis.md`` is kept). ``only`` limits what is run (run names or :data:`GROUPS`); the
    report covers every finished run found. ``overrides``: report config (``--budget``);
    ``world_overrides``: the worlds (``--set``). Raises :class:`SanityError` after writing
    the report when a sanity check fails that the config does not declare as expected, and
    :class:`NotRunnable` (nothing written) when ``only`` asks for a stage whose runs are not
    finished.
    """
    cfg = report_preset(preset_name).with_overrides(dict(overrides or {}))
    if world_overrides:
        cfg = cfg.with_world(world_overrides)
    if scale is not None:
        cfg = cfg.with_overrides({"scale": scale})
    seeds = check_seeds(seeds)
    plan = build_plan(cfg, seeds)
    known = {r.name for runs in plan.values() for r in runs} | set(GROUPS)
    only = [o for item in (only or []) for o in str(item).split(",") if o]
    bad = sorted(set(only) - known)
    if bad:
        raise ConfigError(f"--only: unknown names {bad} (runs and groups: {sorted(known)})")
    check_device(cfg.device)
    f = report_folders(out, runs_dir, data_root)
    root = f.runs / preset_name

    def run(log: Callable[[str], None]) -> None:
        torch.set_num_threads(cfg.threads)
        for s in seeds:
            run_seed(cfg, s, plan[s], root / f"seed{s}", f.data, only=only, progress=progress,
                     log=log)  # fmt: skip
        first = root / f"seed{seeds[0]}" / "drl"
        cost = run_cost(cfg, first, root / "cost.json", log) if selected(only, "cost") else {}
        if cost is None and only:
            raise NotRunnable(f"--only cost: the first seed's drl run is not finished ({first}); "
                              "run it first (--only main)")  # fmt: skip

    def build(_: None, wall: float) -> tuple[Path, list]:
        return build_report(cfg, seeds, root, f.out, preset_name, wall_seconds=wall,
                            command=command)  # fmt: skip

    return run_report_command(
        f.out, run, build, resume=resume, overwrite=overwrite, log=log, keep=("analysis.md",),
        resumable=holds_work((f.data, "*/dataset.json"), (root, "seed*/*/checkpoint.pt"),
                             (root, "seed*/*/model.pt")),
    )  # fmt: skip
