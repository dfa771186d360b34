"""The baselines report command: run every seed (resumably), then write the report.

    ranker report --preset default --seeds 0 1 2 --out reports/baselines
    ranker report --preset tiny --seeds 0 1 2 --out reports/baselines-tiny   # a smoke run

Everything lands under ``--out``: ``report.md``, the PNG plots and ``summary.json`` (the
aggregated tables), the run folders (``<out>/runs``: checkpoints, per-session online results)
and the generated worlds (``<out>/datasets``), unless ``--runs`` / ``--datasets`` name other
folders. Per seed, :func:`training.eval.baselines_run.run_seed` (the plan) does the work and
skips every piece already finished in its run folder, so a rerun after a crash (or to rebuild
the report) only does what is missing; :mod:`training.eval.baselines_claims` turns the
numbers into verdicts and :mod:`training.eval.baselines_render` writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from training.eval.baselines_render import build_report
from training.eval.baselines_run import eval_preset, run_seed
from training.harness.command import holds_work, report_folders, run_report_command
from training.harness.config import check_seeds

__all__ = ["run_report"]


def run_report(
    preset_name: str,
    seeds: Sequence[int],
    out: str | Path,
    *,
    runs_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    world_overrides: Mapping[str, str] | None = None,
    budget_overrides: Mapping[str, str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
    command: str | None = None,
) -> Path:
    """Run (or resume) every seed and write the report into ``out``; returns report.md's path.

    Runs go to ``runs_dir`` (default ``<out>/runs``), generated datasets to ``data_root``
    (default ``<out>/datasets``). An existing ``out`` is refused unless ``resume`` or
    ``overwrite``. Raises :class:`SanityError` after writing the report when a sanity check
    fails that ``cfg.expected_findings`` does not declare.
    """
    cfg = eval_preset(preset_name).with_overrides(dict(budget_overrides or {}))
    if world_overrides:
        cfg = cfg.with_world(world_overrides)
    seeds = check_seeds(seeds)
    f = report_folders(out, runs_dir, data_root)

    def run(log: Callable[[str], None]) -> list[dict[str, Any]]:
        return [run_seed(cfg, s, f.runs / f"seed{s}", f.data, progress=progress, log=log)
                for s in seeds]  # fmt: skip

    def build(summaries: list[dict[str, Any]], wall: float) -> tuple[Path, list]:
        return build_report(summaries, cfg, f.out, preset_name, wall_seconds=wall,
                            runs_dir=f.runs, command=command)  # fmt: skip

    return run_report_command(
        f.out, run, build, resume=resume, overwrite=overwrite, log=log,
        resumable=holds_work((f.data, "*/dataset.json"), (f.runs, "seed*/models/*.pt")),
    )  # fmt: skip
