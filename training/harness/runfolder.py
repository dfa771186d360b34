"""Files of runs and reports: atomic writes, cached stages, output folders that are not clobbered.

- :func:`write_json`, :func:`write_text`, :func:`save_npz`: write to a temporary name in the
  same folder, then ``os.replace`` (a reader never sees half a file; a crash leaves the old one).
- :func:`cached`: "compute unless a finished result with the same inputs exists": the one
  helper behind every resumable stage of a report (online tests, ceilings, costs).
- :func:`output_folder`: a command's ``--out``. An existing, non-empty folder is refused unless
  ``resume`` (continue it) or ``overwrite`` (empty it first, keeping hand-written files); a
  folder the command created is removed again when the command fails, so a failure leaves no
  empty or partial folder behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars and arrays, paths."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def jsonable(o: Any) -> Any:
    """``o`` as it reads back from JSON (tuples as lists, int keys as strings)."""
    return json.loads(json.dumps(o, default=json_default))


def _tmp(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, default=json_default))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    path = Path(path)
    tmp = _tmp(path, ".npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def cached(path: str | Path, want: Mapping[str, Any], compute: Callable[[], dict]) -> dict:
    """The result at ``path`` when it was computed from the same inputs ``want``; otherwise
    ``compute()``, saved with ``want`` beside it (atomically) and returned."""
    path = Path(path)
    key = jsonable(dict(want))
    if path.exists():
        have = read_json(path)
        if have.get("want") == key:
            return have
    out = dict(compute())
    out["want"] = key
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, out)
    return jsonable(out)


def _non_empty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


@contextlib.contextmanager
def output_folder(
    path: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    keep: Sequence[str] = (),
    resumable: Callable[[Path], bool] | None = None,
    what: str = "output folder",
) -> Iterator[Path]:
    """Claim ``path`` for a command's output (see the module docstring).

    ``keep``: names inside the folder that ``overwrite`` leaves in place (hand-written files).
    ``resumable(path)``: whether a failed command left work that ``--resume`` continues (a
    checkpoint, finished runs); such a folder is kept on failure, any other it created is
    removed.
    Raises :class:`FileExistsError` (the CLI's one-line error) for an existing folder without
    ``resume`` or ``overwrite``; both at once are refused too.
    """
    path = Path(path)
    if resume and overwrite:
        raise FileExistsError(f"{path}: --resume and --overwrite exclude each other")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a {what}")
    existed = _non_empty(path)
    if existed and not (resume or overwrite):
        raise FileExistsError(
            f"{path} exists; pass --resume to continue it or --overwrite to replace it"
        )
    if existed and overwrite:
        for child in path.iterdir():
            if child.name in keep:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        keep_work = resumable is not None and path.exists() and resumable(path)
        if (created and not keep_work) or (path.exists() and not any(path.iterdir())):
            shutil.rmtree(path, ignore_errors=True)
        raise


def timestamped(log: Callable[[str], None] | None) -> Callable[[str], None]:
    """``log`` with the wall-clock time before each line (None: silent)."""
    import time

    def say(msg: str) -> None:
        if log is not None:
            log(f"{time.strftime('%H:%M:%S')} {msg}")

    return say
