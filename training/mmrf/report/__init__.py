"""The MMRF report command (``ranker mmrf-report``): Table 1 and Table 2 analogues and the
feedback model's quality, on the shared experiment harness.

    ranker mmrf-report --preset tiny --seeds 0 1 2 --out reports/mmrf-tiny     # minutes
    ranker mmrf-report --preset default --seeds 0 1 2 --out reports/mmrf       # the benchmark

- :mod:`.plan`: the config, presets and what runs;
- :mod:`.runs`: one seed, resumably (training through ``ranker mmrf-train``'s run, the
  baselines report's point-wise stages, the LTR and DRL-Rec trainers);
- :mod:`.measures`: the offline table, the online A/B test, the feedback-model probe;
- :mod:`.claims`: aggregation, claims, sanity checks, findings (pure);
- :mod:`.render`: Markdown and plots.

Everything lands under ``--out`` (``report.md``, PNGs, ``summary.json``; runs in
``<out>/runs``, worlds in ``<out>/datasets`` unless ``--runs`` / ``--datasets`` name others),
with the harness's folder rules (:func:`training.harness.command.run_report_command`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from training.harness.command import holds_work, report_folders, run_report_command
from training.harness.config import check_seeds
from training.mmrf.report.plan import MMRFReportConfig, report_preset

__all__ = ["MMRFReportConfig", "run_mmrf_report"]


def run_mmrf_report(
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

    Raises ConfigError for a bad preset, seeds or override (before any work),
    FileExistsError for an existing ``out`` without ``resume`` / ``overwrite``, and
    :class:`training.harness.claims.SanityError` after writing the report when a sanity check
    fails that ``expected_findings`` does not declare.
    """
    from training.mmrf.report.render import build_report
    from training.mmrf.report.runs import run_seed

    cfg = report_preset(preset_name).with_overrides(dict(budget_overrides or {}))
    if world_overrides:
        cfg = cfg.with_world(world_overrides)
    seeds = check_seeds(seeds)
    f = report_folders(out, runs_dir, data_root)

    def run(log: Callable[[str], None]) -> list[dict[str, Any]]:
        return [run_seed(cfg, s, f.runs / f"seed{s}", f.data, progress=progress, log=log)
                for s in seeds]  # fmt: skip

    def build(summaries: list[dict[str, Any]], wall: float) -> tuple[Path, list]:
        return build_report(summaries, cfg, f.out, preset_name, wall, command)

    return run_report_command(
        f.out, run, build, resume=resume, overwrite=overwrite, log=log,
        resumable=holds_work((f.data, "*/dataset.json"), (f.runs, "seed*/*/*/checkpoint.pt"),
                             (f.runs, "seed*/*/checkpoint.pt")),
    )  # fmt: skip
