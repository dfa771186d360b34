"""Impression logs on disk: a dataset folder, sharded Parquet writing, streaming reading, splits.

A dataset is a folder::

    <name>/dataset.json        what produced it (source, config, seed, code version), counts,
                               the chronological split (shards per split) and the feature
                               spec the dataset is read with (``feature_spec``: the dict of
                               contract.features.FeatureSpec.to_dict(); a dataset without
                               the key reads as DEFAULT_SPEC)
    <name>/users.parquet       the users side table   (contract.schema.USER_TABLE_SCHEMA, or
                               ``user_id`` + the spec's user fields' source columns)
    <name>/items.parquet       the items side table   (contract.schema.ITEM_TABLE_SCHEMA, or
                               ``item_id``, ``author_raw``, ``tag`` + the spec's item
                               fields' source columns)
    <name>/log/part-NNNNN.parquet   impression log shards (contract.schema.LOG_SCHEMA),
                               rows grouped by session, sessions in time order; a shard never
                               holds two days, so a split is a list of shards.

What the readers assume of the shards (and :func:`training.data.validate.validate_dataset`
checks, before any trainer starts): the rows of a session are contiguous and lie in one
shard (:func:`iter_session_batches` cuts sessions where the session id changes and ends every
session at its shard's end: a session that comes back later, or continues in the next shard,
would be read as two, each restarting its depth and click counters); a session is one user's
and its rows are in time order; a request's rows are together (one ``(session_id,
request_index)`` and one request id) and requests follow in increasing ``request_index``, the
order :func:`training.data.features.build_requests` counts the session's history in; the
shown positions of a request are distinct, and ``0..n-1`` unless dataset.json declares
``"slots": "as_logged"`` (the featurisation reads the logged position either way).

Writing is atomic at two levels: each shard is written to a temporary name and renamed, and
the whole dataset is built in ``<name>.partial-<pid>`` and renamed to ``<name>`` only when it
is complete. A crash leaves no half-written dataset under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contract.features import (
    DEFAULT_SPEC,
    FeatureSpec,
    check_standard_layout,
    side_table_columns,
)
from contract.schema import (
    FEEDBACK,
    ITEM_TABLE_SCHEMA,
    LOG_SCHEMA,
    USER_TABLE_SCHEMA,
    LogValidationError,
    check_columns,
    validate_log_table,
)

DATASET_FILE = "dataset.json"
SPLITS = ("train", "valid", "test")


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete or inconsistent."""


def code_version() -> str:
    """The git commit of the code (with ``-dirty`` if modified), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_table_atomic(table: pa.Table, path: Path, row_group_size: int = 1 << 20) -> None:
    """Write a Parquet file under a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass
class ShardWriter:
    """Buffers log tables and writes shards of about ``shard_rows`` rows.

    ``write`` takes tables whose rows are already grouped by session; a shard is only cut
    between calls, so callers pass whole sessions. ``end_day`` flushes so no shard spans two
    days.
    """

    log_dir: Path
    shard_rows: int = 2_000_000
    validate: bool = True
    shards: list[dict[str, Any]] = field(default_factory=list)
    _buf: list[pa.Table] = field(default_factory=list)
    _rows: int = 0
    _day: int | None = None

    def __post_init__(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def write(self, table: pa.Table, day: int) -> None:
        if self._day is not None and day != self._day:
            self.flush()
        self._day = day
        self._buf.append(table)
        self._rows += table.num_rows
        if self._rows >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        table = pa.concat_tables(self._buf).cast(LOG_SCHEMA)
        name = f"part-{len(self.shards):05d}.parquet"
        if self.validate:
            validate_log_table(table, name)
        write_table_atomic(table, self.log_dir / name)
        ts = table.column("timestamp")
        self.shards.append(
            {
                "file": f"log/{name}",
                "day": self._day,
                "rows": table.num_rows,
                "impressions": int(pc.sum(pc.greater_equal(table.column("position"), 0)).as_py()),
                "sessions": len(pc.unique(table.column("session_id"))),
                "t_min": pc.min(ts).as_py(),
                "t_max": pc.max(ts).as_py(),
            }
        )
        self._buf, self._rows = [], 0


class DatasetBuilder:
    """Builds a dataset folder atomically; use as a context manager.

    On success the partial folder is renamed to ``out``; on an exception it is removed.
    """

    def __init__(self, out: str | Path, overwrite: bool = False, shard_rows: int = 2_000_000):
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise DatasetError(f"{self.out} exists (pass --overwrite to replace it)")
        self.tmp = self.out.with_name(f"{self.out.name}.partial-{os.getpid()}")
        self.overwrite = overwrite
        self.shard_rows = shard_rows
        self.writer: ShardWriter | None = None
        self.spec: FeatureSpec = DEFAULT_SPEC

    def __enter__(self) -> DatasetBuilder:
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.writer = ShardWriter(self.tmp / "log", shard_rows=self.shard_rows)
        return self

    def write_side_tables(
        self, users: pa.Table, items: pa.Table, spec: FeatureSpec = DEFAULT_SPEC
    ) -> None:
        """Write the side tables, keeping the columns ``spec`` reads, and record ``spec`` as
        the dataset's (:meth:`finish` writes it to ``dataset.json``).

        With :data:`DEFAULT_SPEC` the tables must match the contract's schemas; with another
        spec, ``user_id``, ``item_id``, ``author_raw`` and ``tag`` must be int64 and every
        field's ``source`` column present (any type its field's kind reads). Raises
        ValueError naming the table and column, or the spec's offending field.
        """
        check_standard_layout(spec)
        if spec == DEFAULT_SPEC:
            check_columns(users.schema, USER_TABLE_SCHEMA, "users.parquet")
            check_columns(items.schema, ITEM_TABLE_SCHEMA, "items.parquet")
        user_cols, item_cols = side_table_columns(spec)
        for table, cols, name in ((users, user_cols, "users"), (items, item_cols, "items")):
            keys = [c for c in cols if c in ("user_id", "item_id", "author_raw", "tag")]
            key_schema = pa.schema([pa.field(c, pa.int64()) for c in keys])
            check_columns(table.schema, key_schema, f"{name}.parquet")
            missing = [c for c in cols if c not in table.column_names]
            if missing:
                raise ValueError(f"{name}.parquet: columns {missing} are read by the spec")
        self.spec = spec
        write_table_atomic(users.select(list(user_cols)), self.tmp / "users.parquet")
        write_table_atomic(items.select(list(item_cols)), self.tmp / "items.parquet")

    def finish(self, meta: dict[str, Any], valid_days: int = 1, test_days: int = 1) -> dict:
        assert self.writer is not None
        self.writer.flush()
        shards = self.writer.shards
        meta = dict(meta)
        meta["shards"] = shards
        meta["split"] = chronological_split(shards, valid_days, test_days)
        meta["counts"] = {
            "rows": sum(s["rows"] for s in shards),
            "impressions": sum(s["impressions"] for s in shards),
            "sessions": sum(s["sessions"] for s in shards),
        }
        meta.setdefault("code_version", code_version())
        meta.setdefault("feature_spec", self.spec.to_dict())
        (self.tmp / DATASET_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return meta

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if not (self.tmp / DATASET_FILE).exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise DatasetError("dataset builder closed without finish(); nothing was written")
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)


def session_pieces(table: pa.Table, rows: int) -> list[pa.Table]:
    """Slices of about ``rows`` rows of a table grouped by session, cut only between sessions
    (a session longer than ``rows`` is one slice): what :meth:`ShardWriter.write` takes."""
    sid = table.column("session_id").to_numpy()
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    out, lo = [], 0
    while lo < table.num_rows:
        j = np.searchsorted(starts, lo + rows)
        hi = int(starts[j]) if j < len(starts) else table.num_rows
        hi = max(hi, lo + 1)
        out.append(table.slice(lo, hi - lo))
        lo = hi
    return out


def chronological_split(
    shards: list[dict[str, Any]], valid_days: int = 1, test_days: int = 1
) -> dict[str, list[str]]:
    """Split shards by day: the last ``test_days`` days are test, the ones before valid."""
    days = sorted({s["day"] for s in shards})
    if len(days) < valid_days + test_days + 1:
        raise DatasetError(
            f"{len(days)} days of data cannot give {valid_days} valid + {test_days} test days "
            "and a training day"
        )
    test = set(days[len(days) - test_days :]) if test_days else set()
    valid = set(days[len(days) - test_days - valid_days : len(days) - test_days])
    out: dict[str, list[str]] = {k: [] for k in SPLITS}
    for s in shards:
        key = "test" if s["day"] in test else "valid" if s["day"] in valid else "train"
        out[key].append(s["file"])
    return out


@dataclass(frozen=True)
class Dataset:
    """A dataset folder opened for reading."""

    root: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path) -> Dataset:
        root = Path(root)
        meta_path = root / DATASET_FILE
        if not meta_path.exists():
            raise DatasetError(f"{root}: no {DATASET_FILE} (not a dataset, or not finished)")
        meta = json.loads(meta_path.read_text())
        for s in meta.get("shards", []):
            if not (root / s["file"]).exists():
                raise DatasetError(f"{root}: shard {s['file']} listed in {DATASET_FILE} is missing")
        return cls(root, meta)

    @cached_property
    def spec(self) -> FeatureSpec:
        """The feature spec the dataset was built with (``dataset.json`` key
        ``feature_spec``); :data:`contract.features.DEFAULT_SPEC` for a dataset without the
        key (written before the key existed). Raises DatasetError naming ``dataset.json``
        when the dict is malformed or its layout is not one the trainers read
        (:func:`contract.features.check_standard_layout`)."""
        d = self.meta.get("feature_spec")
        if d is None:
            return DEFAULT_SPEC
        try:
            spec = FeatureSpec.from_dict(d)
            check_standard_layout(spec)
        except (ValueError, TypeError, AttributeError) as e:
            raise DatasetError(f"{self.root / DATASET_FILE}: feature_spec: {e}") from None
        return spec

    @property
    def aspects(self) -> tuple[str, ...]:
        """The feedback aspects the log has (``dataset.json`` key ``aspects``, in
        :data:`contract.schema.FEEDBACK` order; all of them for a dataset without the key).
        The others are null in the log, never 0: train and evaluate on these only."""
        declared = self.meta.get("aspects", FEEDBACK)
        return tuple(a for a in FEEDBACK if a in declared)

    def require_aspects(self, needed: Iterable[str], what: str) -> None:
        """Raise DatasetError when ``what`` needs an aspect the log does not have."""
        missing = [a for a in FEEDBACK if a in set(needed) and a not in self.aspects]
        if missing:
            raise DatasetError(
                f"{self.root}: {what} needs the feedback aspects {missing}, which the log does "
                f"not have (dataset.json aspects: {list(self.aspects)})"
            )

    def paths(self, split: str | None = None) -> list[Path]:
        if split is None:
            return [self.root / s["file"] for s in self.meta["shards"]]
        if split not in SPLITS:
            raise DatasetError(f"split {split!r}: expected one of {SPLITS}")
        return [self.root / f for f in self.meta["split"][split]]

    def users(self) -> pa.Table:
        return pq.read_table(self.root / "users.parquet")

    def items(self) -> pa.Table:
        return pq.read_table(self.root / "items.parquet")

    def read(self, split: str | None = None, columns: list[str] | None = None) -> pa.Table:
        """The whole split in memory (for small data and evaluation; stream for training)."""
        paths = self.paths(split)
        if not paths:
            return (
                LOG_SCHEMA.empty_table()
                if columns is None
                else LOG_SCHEMA.empty_table().select(columns)
            )
        return pa.concat_tables(pq.read_table(p, columns=columns) for p in paths)


def shard_for_rank(paths: list[Path], rank: int, world_size: int) -> list[Path]:
    """The shards one data-parallel worker reads: every ``world_size``-th from ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    return paths[rank::world_size]


def iter_session_batches(
    paths: Iterable[str | Path],
    sessions_per_batch: int = 1024,
    columns: list[str] | None = None,
    read_rows: int = 1 << 18,
    validate: bool = False,
) -> Iterator[pa.Table]:
    """Stream tables of whole sessions from log shards, never loading a whole shard.

    Shards are read ``read_rows`` rows at a time; a session cut by a read boundary is carried
    to the next chunk, so every yielded table holds complete sessions (about
    ``sessions_per_batch`` of them; the last may hold fewer). Row order is kept.

    Assumes each session's rows are contiguous in one shard (module docstring; checked by
    :func:`training.data.validate.validate_dataset`, not here): otherwise a session is
    yielded in pieces.
    """
    if sessions_per_batch < 1:
        raise ValueError(f"sessions_per_batch={sessions_per_batch} must be >= 1")
    cols = (
        None
        if columns is None
        else sorted(set(columns) | {"session_id"}, key=LOG_SCHEMA.names.index)
    )
    carry: pa.Table | None = None
    for path in paths:
        try:
            pf = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise LogValidationError(f"{path}: not a readable Parquet file ({e})") from None
        if validate:
            check_columns(pf.schema_arrow, LOG_SCHEMA, str(path))
        for rb in pf.iter_batches(batch_size=read_rows, columns=cols):
            chunk = pa.Table.from_batches([rb])
            if carry is not None and carry.num_rows:
                chunk = pa.concat_tables([carry, chunk])
            sid = chunk.column("session_id").to_numpy()
            starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
            # The last session may continue in the next read: keep it back.
            complete = starts[:-1] if len(starts) else starts
            last_start = int(starts[-1]) if len(starts) else 0
            i = 0
            while len(complete) - i >= sessions_per_batch:
                lo = int(complete[i])
                hi = int(starts[i + sessions_per_batch])
                yield chunk.slice(lo, hi - lo)
                i += sessions_per_batch
            lo = int(complete[i]) if i < len(complete) else last_start
            carry = chunk.slice(lo)
        # Sessions never cross shards (they never cross days), so flush at a shard's end.
        if carry is not None and carry.num_rows:
            sid = carry.column("session_id").to_numpy()
            starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
            for j in range(0, len(starts), sessions_per_batch):
                lo = int(starts[j])
                hi = (
                    int(starts[j + sessions_per_batch])
                    if j + sessions_per_batch < len(starts)
                    else carry.num_rows
                )
                yield carry.slice(lo, hi - lo)
        carry = None
