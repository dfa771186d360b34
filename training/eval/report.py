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

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from training.eval.baselines_render import build_report
from training.eval.baselines_run import eval_preset, run_seed
from training.harness.claims import SanityError
from training.harness.config import check_seeds
from training.harness.runfolder import output_folder, timestamped
from training.sim.config import preset

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
        pairs = tuple(sorted((str(k), str(v)) for k, v in world_overrides.items()))
        preset(cfg.world_preset).with_overrides(dict(pairs))  # bad values fail now
        cfg = dataclasses.replace(cfg, world_overrides=pairs)
    seeds = check_seeds(seeds)
    out = Path(out)
    runs = Path(runs_dir) if runs_dir else out / "runs"
    data = Path(data_root) if data_root else out / "datasets"
    stamped = timestamped(log)

    def has_runs(_: Path) -> bool:
        return any(runs.glob("seed*/config.json"))

    with output_folder(out, resume=resume, overwrite=overwrite, resumable=has_runs,
                       what="report folder"):  # fmt: skip
        t0 = time.perf_counter()
        summaries = [
            run_seed(cfg, s, runs / f"seed{s}", data, progress=progress, log=stamped) for s in seeds
        ]
        wall = time.perf_counter() - t0
        path, failed = build_report(summaries, cfg, out, preset_name, wall_seconds=wall,
                                    runs_dir=runs, command=command)  # fmt: skip
    stamped(f"report: {path} ({wall:.0f} s)")
    if failed:
        raise SanityError(failed, str(path))
    return path
