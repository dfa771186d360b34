"""The shape both report commands share (``ranker report``, ``ranker drl-report``).

:func:`report_folders` places the runs and datasets (under ``--out`` unless named);
:func:`run_report_command` claims ``--out`` (:func:`training.harness.runfolder.output_folder`),
runs the plan, writes the report and then fails on an undeclared sanity check
(:class:`training.harness.claims.SanityError`), so a report that cannot be trusted still
exists to be read but the command's exit status says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from training.harness.claims import SanityError
from training.harness.runfolder import output_folder, timestamped

T = TypeVar("T")

Log = Callable[[str], None]


class NotRunnable(FileNotFoundError):
    """What a command was asked to do cannot be done: the runs it reads are not finished (the
    CLI's one-line error, exit status 2; the folder the command created is removed)."""


@dataclass(frozen=True)
class ReportFolders:
    """Where a report command writes: the report (``out``), the runs and the datasets."""

    out: Path
    runs: Path
    data: Path


def report_folders(
    out: str | Path, runs_dir: str | Path | None, data_root: str | Path | None
) -> ReportFolders:
    """``out``, and the runs (default ``<out>/runs``) and datasets (default ``<out>/datasets``)
    folders: everything under ``out`` unless a folder is named."""
    o = Path(out)
    return ReportFolders(o, Path(runs_dir) if runs_dir else o / "runs",
                         Path(data_root) if data_root else o / "datasets")  # fmt: skip


def holds_work(*globs: tuple[Path, str]) -> Callable[[Path], bool]:
    """A ``resumable`` test for :func:`run_report_command`: whether a ``(folder, pattern)`` glob
    matches a file inside the output folder, i.e. it holds finished work (a generated dataset, a
    trained model, a checkpoint) that ``--resume`` continues. Bookkeeping alone (a run folder's
    config) is not work, and work in named folders outside it is not lost with it."""

    def test(out: Path) -> bool:
        top = out.resolve()
        return any(m.resolve().is_relative_to(top) for folder, pattern in globs
                   for m in folder.glob(pattern))  # fmt: skip

    return test


def run_report_command(
    out: Path,
    run: Callable[[Log], T],
    build: Callable[[T, float], tuple[Path, Sequence[Mapping[str, Any]]]],
    *,
    resume: bool,
    overwrite: bool,
    resumable: Callable[[Path], bool],
    log: Log | None,
    keep: Sequence[str] = (),
) -> Path:
    """Inside the claimed ``out``: ``run(log)`` (the plan, with a timestamped log), then
    ``build(result, wall seconds)`` -> (report path, failed undeclared checks). Returns the
    report's path.

    Raises :class:`FileExistsError` for an ``out`` that exists without ``resume`` /
    ``overwrite``; :class:`SanityError` after the report is written when a check failed. A
    failure inside leaves no folder the command created, unless ``resumable`` says it holds
    work that ``--resume`` continues.
    """
    stamped = timestamped(log)
    with output_folder(out, resume=resume, overwrite=overwrite, keep=keep, resumable=resumable,
                       what="report folder"):  # fmt: skip
        t0 = time.perf_counter()
        result = run(stamped)
        wall = time.perf_counter() - t0
        path, failed = build(result, wall)
    stamped(f"report: {path} ({wall:.0f} s)")
    if failed:
        raise SanityError(failed, str(path))
    return path
