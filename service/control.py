"""Admin changes for every worker: a control record in a folder the workers share.

uvicorn's workers are separate processes, each with its own serving pair (bundle +
experiment), so an admin call that changes only the worker answering it leaves the others
serving the old pair. With a control folder (``RANKER_CONTROL_DIR``; ``ranker serve
--workers N > 1`` makes a temporary one) an admin change goes like this:

1. the answering worker takes the folder's lock (``control.lock``, ``fcntl.flock``), so two
   admin calls on two workers never interleave, and first catches up with the current record;
2. it loads, verifies and warms the bundle (or checks the experiment) and swaps it in itself: a
   bad bundle is refused there (409) and nothing is published;
3. it publishes the new serving state as ``control.json`` (written to a temporary file, then
   renamed): ``generation`` (one more than the last), ``bundle_dir``, ``bundle_version``,
   ``experiment`` (the experiment's JSON, or null for the default split), and releases the lock;
4. every worker polls the record (one ``stat`` per ``control_poll_s``), applies a newer
   generation the same way and acknowledges it in ``acks/<pid>-<token>.json`` (generation,
   bundle version, error or null; the token tells apart two apps of one process, as in tests);
5. the answering worker waits (at most ``control_timeout_s``) until every live worker has
   acknowledged the generation and answers with the count.

A worker that starts (or that uvicorn restarts after a crash) serves the current record's
bundle and experiment, not its settings', so it never serves what an admin call replaced.

This module holds the folder's mechanics only (no app, no bundle): :class:`ControlFolder`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORD = "control.json"
LOCK = "control.lock"
ACKS = "acks"


@dataclass(frozen=True)
class ControlRecord:
    """The serving state every worker should have, as published by an admin call."""

    generation: int
    bundle_dir: str
    bundle_version: str
    experiment: dict[str, Any] | None
    """The experiment's JSON (``service.bucketing.experiment_to_dict``); None: the default
    split derived from the bundle's models."""

    def to_json(self) -> str:
        return json.dumps({"generation": self.generation, "bundle_dir": self.bundle_dir,
                           "bundle_version": self.bundle_version,
                           "experiment": self.experiment}, indent=1)  # fmt: skip

    @classmethod
    def from_json(cls, text: str, where: str = RECORD) -> ControlRecord:
        """Parse a record; ValueError naming ``where`` and the key when it is malformed."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: not a JSON object")
        try:
            gen, bdir, version, exp = (raw["generation"], raw["bundle_dir"],
                                       raw["bundle_version"], raw["experiment"])  # fmt: skip
        except KeyError as e:
            raise ValueError(f"{where}: missing key {e.args[0]!r}") from None
        if not isinstance(gen, int) or isinstance(gen, bool) or gen < 1:
            raise ValueError(f"{where}: generation {gen!r} is not an integer >= 1")
        if not isinstance(bdir, str) or not isinstance(version, str):
            raise ValueError(f"{where}: bundle_dir and bundle_version must be strings")
        if exp is not None and not isinstance(exp, dict):
            raise ValueError(f"{where}: experiment must be an object or null")
        return cls(gen, bdir, version, exp)


@dataclass(frozen=True)
class Ack:
    """One worker's answer to a generation: applied (``error`` None) or refused."""

    worker: str
    """``<pid>-<token>`` of the acknowledging app."""
    generation: int
    bundle_version: str
    error: str | None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ControlFolder:
    """The control folder's files: the record, its lock, the workers' acknowledgements.

    Blocking file I/O (small files; the lock may wait for another worker's bundle load): the
    app calls these methods from a thread. Raises OSError when the folder cannot be created
    or written.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        (self.path / ACKS).mkdir(parents=True, exist_ok=True)
        self.worker = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._stamp: tuple[int, int] | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's exclusive lock (blocks until the holder releases it)."""
        with open(self.path / LOCK, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def read(self) -> ControlRecord | None:
        """The current record, or None when nothing was published yet. ValueError if it is
        malformed."""
        try:
            text = (self.path / RECORD).read_text()
        except FileNotFoundError:
            return None
        return ControlRecord.from_json(text, str(self.path / RECORD))

    def changed(self) -> bool:
        """True when the record's file changed since the last call (one ``stat``); the
        first call is True when a record exists."""
        try:
            st = os.stat(self.path / RECORD)
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def publish(self, bundle_dir: str, bundle_version: str,
                experiment: dict[str, Any] | None) -> ControlRecord:  # fmt: skip
        """Write the next generation's record (call while holding :meth:`locked`)."""
        current = self.read()
        record = ControlRecord((current.generation if current else 0) + 1, bundle_dir,
                               bundle_version, experiment)  # fmt: skip
        _write_atomic(self.path / RECORD, record.to_json())
        return record

    def acknowledge(self, generation: int, bundle_version: str, error: str | None) -> None:
        """Record this worker's answer to ``generation``."""
        _write_atomic(self.path / ACKS / f"{self.worker}.json",
                      json.dumps({"generation": generation, "bundle_version": bundle_version,
                                  "error": error}))  # fmt: skip

    def acks(self, generation: int) -> list[Ack]:
        """The answers of live workers to ``generation`` (files of dead processes are
        removed; unreadable ones skipped)."""
        out = []
        for f in sorted((self.path / ACKS).glob("*.json")):
            pid_text = f.stem.split("-", 1)[0]
            if not pid_text.isdigit():
                continue
            if not _pid_alive(int(pid_text)):
                f.unlink(missing_ok=True)
                continue
            try:
                raw = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if raw.get("generation") == generation:
                out.append(Ack(f.stem, generation, str(raw.get("bundle_version")),
                               raw.get("error")))  # fmt: skip
        return out
