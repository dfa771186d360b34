"""Validation of a whole dataset folder: everything the readers and trainers assume, checked
before any work starts.

A dataset (:mod:`training.data.pipeline`) is read shard by shard, session by session, and
featurised request by request; each assumption below, if broken, makes a trainer misread the
data silently or fail late. :func:`validate_dataset` checks them all in one streamed pass and
returns every problem with the file, column, row and value; :func:`check_dataset` raises
:class:`DatasetValidationError` (a :class:`~training.data.pipeline.DatasetError`, so the CLI
exits 2 with one line) and is what ``ranker validate`` and every trainer run first.

``dataset.json``
    a JSON object with :data:`REQUIRED_KEYS`: ``source`` (str), ``shards`` (a list of
    ``{"file", "day", "rows", ...}``; ``rows``, ``impressions`` and ``sessions`` must match
    the files), ``split`` (``train``/``valid``/``test`` lists of listed shards, no shard in two
    splits, ``train`` not empty) and ``counts``. Optional keys, checked when present:
    ``slots`` (``"contiguous"``, the default, or ``"as_logged"``), ``aspects`` (the feedback
    aspects the log has; default all of :data:`contract.schema.FEEDBACK`), ``list_size``
    (slots per request at most, an int >= 1) and ``feature_spec``
    (:meth:`contract.features.FeatureSpec.to_dict`).
Log shards
    every row against the contract (:func:`contract.schema.log_table_problems`, with the
    declared aspects); the same column types in every shard; and the layout the streaming
    reader (:func:`~training.data.pipeline.iter_session_batches`) and the featurisation
    (:func:`~training.data.features.build_requests`) assume: the rows of a session are
    contiguous in one shard, never in two; a session is one user's and its rows are in time
    order (``timestamp`` never decreases); within it the rows of a request are contiguous with
    one request id, and requests follow each other in strictly increasing ``request_index``;
    the shown
    positions of a request never repeat, and are ``0..n-1`` unless ``slots`` is
    ``"as_logged"`` (then any distinct positions: an imported bandit log may show one
    impression at position 2); with ``list_size``, a request shows at most ``list_size`` items
    at positions below it.
Side tables
    ``users.parquet`` and ``items.parquet`` readable, not empty, with every column the feature
    spec's user/item fields read (the declared ``feature_spec``, else
    :data:`contract.features.DEFAULT_SPEC`, whose tables must also have the contract's types,
    :data:`contract.schema.USER_TABLE_SCHEMA` / ``ITEM_TABLE_SCHEMA``), ``tag`` and
    ``author_raw`` in the items table (the list fields read them), no nulls in those columns and
    no repeated id.
Ids
    the share of log rows whose ``user_id`` (``item_id``) is missing from the users (items)
    table at most ``max_missing_share`` (default :data:`DEFAULT_MAX_MISSING_SHARE`, 1%): such
    rows are featurised with their hashed id only, which is fine for a few and a broken join for
    many. The shares and a few missing ids are reported either way.

The row-level checks of the shards are pure functions in :mod:`training.data.validate_log`.
Speed: one pass over the shards, ``read_rows`` rows at a time: on the default world (96 million
rows) 31 s of CPU, 0.33 s per million rows, and 650 MB of memory at most.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
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
    Problem,
    column_problems,
    log_table_problems,
)
from training.data.pipeline import DATASET_FILE, SPLITS, DatasetError
from training.data.validate_log import (
    SLOTS,
    SessionRuns,
    merge_types,
    session_order_problems,
    session_run_problems,
    shard_chunks,
    slot_problems,
)

#: Largest share of log rows whose user (item) may be missing from the users (items) table.
DEFAULT_MAX_MISSING_SHARE = 0.01
#: Keys dataset.json must have, and their JSON types.
REQUIRED_KEYS: dict[str, type] = {"source": str, "shards": list, "split": dict, "counts": dict}
#: Keys every entry of ``shards`` must have.
SHARD_KEYS = ("file", "day", "rows")
#: Problem lines kept at most (the rest are counted).
MAX_PROBLEMS = 50


class DatasetValidationError(DatasetError):
    """A dataset breaks what the readers assume. ``report`` holds every problem; the message
    is the first one, and how many more there are."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        n = report.n_problems
        more = f" (and {n - 1} more: `ranker validate {report.root}` lists them)" if n > 1 else ""
        super().__init__(f"{report.problems[0]}{more}")


@dataclass
class IdCoverage:
    """Log rows whose id is missing from a side table: counts and a few example ids."""

    rows: int = 0
    missing: int = 0
    examples: list[int] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.missing / self.rows if self.rows else 0.0

    def add(self, ids: np.ndarray, table_ids: np.ndarray | None, keep: int = 5) -> None:
        self.rows += len(ids)
        if table_ids is None:
            return
        miss = ids[~_member(ids, table_ids)]
        self.missing += len(miss)
        if miss.size and len(self.examples) < keep:
            new = [int(x) for x in np.unique(miss) if int(x) not in self.examples]
            self.examples += new[: keep - len(self.examples)]


@dataclass
class ValidationReport:
    """What :func:`validate_dataset` found: the problems and what it read."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    n_problems: int = 0
    shards: int = 0
    rows: int = 0
    impressions: int = 0
    requests: int = 0
    sessions: int = 0
    users: IdCoverage = field(default_factory=IdCoverage)
    items: IdCoverage = field(default_factory=IdCoverage)
    slots: str = "contiguous"
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.n_problems == 0

    def add(self, problems: list[Problem]) -> None:
        self.n_problems += len(problems)
        self.problems += problems[: max(0, MAX_PROBLEMS - len(self.problems))]

    def summary(self) -> str:
        """One line: counts, id coverage and speed."""
        speed = f" ({self.seconds / self.rows * 1e6:.2f} s per million rows)"
        return (
            f"{self.root}: {self.shards} shards, {self.rows:,} rows, {self.impressions:,} "
            f"impressions, {self.requests:,} requests, {self.sessions:,} sessions (slots "
            f"{self.slots}); log rows with ids missing from the side tables: users "
            f"{_share(self.users)}, items {_share(self.items)}; {self.seconds:.1f} s"
            + (speed if self.rows >= 100_000 else "")  # a small one is all fixed costs
        )


def _share(c: IdCoverage) -> str:
    ex = f" (e.g. {', '.join(map(str, c.examples))})" if c.examples else ""
    return f"{100 * c.share:.2f}%{ex}"


def check_dataset(root: str | Path, **kwargs: Any) -> ValidationReport:
    """:func:`validate_dataset`, raising :class:`DatasetValidationError` on any problem."""
    report = validate_dataset(root, **kwargs)
    if not report.ok:
        raise DatasetValidationError(report)
    return report


def validate_dataset(
    root: str | Path,
    *,
    max_missing_share: float = DEFAULT_MAX_MISSING_SHARE,
    read_rows: int = 1 << 20,
) -> ValidationReport:
    """Check a dataset folder (module docstring); never raises for bad data, only returns it.

    Args:
        root: the dataset folder (``dataset.json``, ``users.parquet``, ``items.parquet``,
            ``log/``).
        max_missing_share: largest share in [0, 1] of log rows whose user (item) id may be
            missing from the users (items) table.
        read_rows: rows read from a shard at a time (memory: a few hundred bytes per row).

    Raises ValueError for ``max_missing_share`` outside [0, 1] or ``read_rows < 1``.
    """
    if not 0.0 <= max_missing_share <= 1.0:
        raise ValueError(f"max_missing_share={max_missing_share} must be in [0, 1]")
    if read_rows < 1:
        raise ValueError(f"read_rows={read_rows} must be >= 1")
    t0 = time.perf_counter()
    root = Path(root)
    report = ValidationReport(root)
    meta, problems = read_meta(root)
    report.add(problems)
    if meta is None:
        report.seconds = time.perf_counter() - t0
        return report
    decl, problems = declarations(meta, str(root / DATASET_FILE))
    report.add(problems)
    report.slots = decl.slots
    users, problems = side_table(root / "users.parquet", "user_id", decl.user_columns, decl.typed)
    report.add(problems)
    items, problems = side_table(root / "items.parquet", "item_id", decl.item_columns, decl.typed)
    report.add(problems)
    _check_log(root, meta, decl, users, items, report, read_rows)
    for what, cov in (("user_id", report.users), ("item_id", report.items)):
        if cov.share > max_missing_share:
            table = "users" if what == "user_id" else "items"
            report.add([Problem(
                str(root / "log"), what,
                f"{100 * cov.share:.2f}% of log rows ({cov.missing:,} of {cov.rows:,}) have an id "
                f"missing from {table}.parquet (at most {100 * max_missing_share:g}% allowed), "
                f"e.g. {', '.join(map(str, cov.examples))}",
            )])  # fmt: skip
    report.seconds = time.perf_counter() - t0
    return report


# ------------------------------------------------------------------------------------------
# dataset.json
# ------------------------------------------------------------------------------------------


def read_meta(root: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """``dataset.json`` parsed and checked for :data:`REQUIRED_KEYS` and the shard and split
    entries; ``None`` when the file is missing, unreadable or not an object."""
    path = root / DATASET_FILE
    src = str(path)
    if not root.is_dir():
        return None, [Problem(str(root), None, "not a folder")]
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        return None, [Problem(src, None, "missing (not a dataset, or not finished)")]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, [Problem(src, None, f"not readable JSON ({e})")]
    if not isinstance(meta, dict):
        return None, [Problem(src, None, f"a JSON {type(meta).__name__}, expected an object")]
    out = []
    for key, typ in REQUIRED_KEYS.items():
        if key not in meta:
            out.append(Problem(src, key, "required key missing"))
        elif not isinstance(meta[key], typ):
            want = "an object" if typ is dict else f"a {typ.__name__}"
            out.append(Problem(src, key, f"a JSON {type(meta[key]).__name__}, expected {want}"))
    if any(p.column in ("shards", "split") for p in out):
        return None, out
    files = []
    for i, s in enumerate(meta["shards"]):
        miss = [k for k in SHARD_KEYS if not isinstance(s, dict) or k not in s]
        if miss:
            out.append(Problem(src, "shards", f"entry {i} lacks {miss}"))
            continue
        if not isinstance(s["file"], str) or not isinstance(s["rows"], int):
            out.append(Problem(src, "shards", f"entry {i}: file must be a string, rows an int"))
            continue
        files.append(s["file"])
    if len(set(files)) != len(files):
        dup = next(f for f in files if files.count(f) > 1)
        out.append(Problem(src, "shards", f"{dup} listed twice"))
    seen: dict[str, str] = {}
    for name in SPLITS:
        part = meta["split"].get(name)
        if not isinstance(part, list):
            out.append(Problem(src, "split", f"{name!r} missing or not a list"))
            continue
        for f in part:
            if f not in files:
                out.append(Problem(src, "split", f"{name} lists {f}, which is not in shards"))
            elif f in seen:
                out.append(Problem(src, "split", f"{f} is in both {seen[f]} and {name}"))
            seen[f] = name
    if isinstance(meta["split"].get("train"), list) and not meta["split"]["train"]:
        out.append(Problem(src, "split", "'train' is empty: nothing to train on"))
    usable = not any(p.column in ("shards", "split") for p in out)
    return (meta if usable else None), out


@dataclass(frozen=True)
class Declarations:
    """What ``dataset.json`` declares about its log and side tables (defaults filled in)."""

    slots: str = "contiguous"
    aspects: tuple[str, ...] = FEEDBACK
    list_size: int | None = None
    user_columns: dict[str, str] = field(default_factory=dict)  # column -> who reads it
    item_columns: dict[str, str] = field(default_factory=dict)
    typed: bool = True  # the default spec: side-table columns have the contract's types


def declarations(meta: dict[str, Any], src: str) -> tuple[Declarations, list[Problem]]:
    """Read and check the optional keys ``slots``, ``aspects``, ``list_size``,
    ``feature_spec``; a bad value is a problem and its default is used."""
    out = []
    slots = meta.get("slots", "contiguous")
    if slots not in SLOTS:
        out.append(Problem(src, "slots", f"expected one of {SLOTS}", value=slots))
        slots = "contiguous"
    aspects = meta.get("aspects", list(FEEDBACK))
    if (
        not isinstance(aspects, list)
        or not aspects
        or len(set(aspects)) != len(aspects)
        or any(a not in FEEDBACK for a in aspects)
    ):
        out.append(Problem(src, "aspects", f"expected distinct names from {list(FEEDBACK)}",
                           value=aspects))  # fmt: skip
        aspects = list(FEEDBACK)
    list_size = meta.get("list_size")
    if list_size is not None and (
        isinstance(list_size, bool) or not isinstance(list_size, int) or list_size < 1
    ):
        out.append(Problem(src, "list_size", "expected an int >= 1", value=list_size))
        list_size = None
    spec = DEFAULT_SPEC
    if "feature_spec" in meta:
        try:
            spec = FeatureSpec.from_dict(meta["feature_spec"])
            check_standard_layout(spec)
        except (ValueError, TypeError, AttributeError) as e:
            out.append(Problem(src, "feature_spec", f"not a feature spec the trainers read ({e})"))
            spec = DEFAULT_SPEC
    users, items = required_columns(spec)
    decl = Declarations(slots, tuple(aspects), list_size, users, items, spec == DEFAULT_SPEC)
    return decl, out


def required_columns(spec: FeatureSpec) -> tuple[dict[str, str], dict[str, str]]:
    """Columns of the users and items tables the featurisation reads
    (:func:`contract.features.side_table_columns`), each with who reads it: the id lookup, a
    field of the spec, or the list fields (``tag``, ``author_raw``)."""
    readers: dict[str, str] = {"user_id": "the user lookup", "item_id": "the item lookup"}
    readers |= dict.fromkeys(("tag", "author_raw"), "the list fields")
    for f in spec.fields:
        readers.setdefault(f.source, f"field {f.name!r}")
    users, items = side_table_columns(spec)
    return {c: readers[c] for c in users}, {c: readers[c] for c in items}


# ------------------------------------------------------------------------------------------
# Side tables
# ------------------------------------------------------------------------------------------


def side_table(
    path: Path, key: str, columns: dict[str, str], typed: bool
) -> tuple[np.ndarray | None, list[Problem]]:
    """Check a side table; return its sorted ids (``None`` if unusable) and the problems.

    ``columns``: the required columns and who reads them; ``typed``: they must also have the
    contract's types (:data:`USER_TABLE_SCHEMA` / :data:`ITEM_TABLE_SCHEMA`), else any numeric
    type (or string, for a field of kind ``category``) will do.
    """
    src = str(path)
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        return None, [Problem(src, None, "missing")]
    except (OSError, pa.ArrowInvalid) as e:
        return None, [Problem(src, None, f"not a readable Parquet file ({e})")]
    out = []
    for name, reader in columns.items():
        if schema.get_field_index(name) < 0:
            out.append(Problem(src, name, f"missing (read by {reader})"))
    contract = USER_TABLE_SCHEMA if key == "user_id" else ITEM_TABLE_SCHEMA
    present = [c for c in columns if schema.get_field_index(c) >= 0]
    if typed:
        want = pa.schema([contract.field(c) for c in present if c in contract.names])
        out += column_problems(schema, want, src)
    else:
        for c in present:
            t = schema.field(c).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t)
                    or pa.types.is_string(t) or pa.types.is_large_string(t)):  # fmt: skip
                out.append(Problem(src, c, f"type {t}: expected numbers or strings"))
        if key in present and not pa.types.is_integer(schema.field(key).type):
            out.append(Problem(src, key, f"type {schema.field(key).type}: ids must be integers"))
    try:
        table = pq.read_table(path, columns=present)
    except (OSError, pa.ArrowInvalid) as e:
        return None, [*out, Problem(src, None, f"not a readable Parquet file ({e})")]
    if table.num_rows == 0:
        out.append(Problem(src, None, "empty (0 rows): every id of the log would be unknown"))
    for c in present:
        col = table.column(c)
        # a declared field's missing value is its unknown id 0 (an imported table's region
        # left blank); ids, the list fields' columns and contract-typed tables take no nulls
        if col.null_count and (typed or not columns[c].startswith("field ")):
            i = int(np.argmax(np.asarray(col.is_null().to_numpy(zero_copy_only=False))))
            out.append(Problem(src, c, f"{col.null_count} null values (the first here)", row=i))
    if out:
        return None, out
    ids = table.column(key).to_numpy()
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        i = int(order[dup[0] + 1])
        return None, [Problem(src, key, "id repeated (one row per id)", row=i, value=int(ids[i]))]
    return s.astype(np.int64), []


def _member(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    if sorted_ids.size == 0:
        return np.zeros(ids.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.size - 1)
    return sorted_ids[pos] == ids


# ------------------------------------------------------------------------------------------
# Log shards
# ------------------------------------------------------------------------------------------


def _check_log(
    root: Path,
    meta: dict[str, Any],
    decl: Declarations,
    users: np.ndarray | None,
    items: np.ndarray | None,
    report: ValidationReport,
    read_rows: int,
) -> None:
    src_meta = str(root / DATASET_FILE)
    runs = SessionRuns()
    files: list[str] = []
    ref: tuple[str, pa.Schema] | None = None
    for k, entry in enumerate(meta["shards"]):
        path = root / entry["file"]
        src = str(path)
        files.append(src)
        try:
            pf = pq.ParquetFile(path)
        except FileNotFoundError:
            report.add([Problem(src, None, f"missing (listed in {DATASET_FILE})")])
            continue
        except (OSError, pa.ArrowInvalid) as e:
            report.add([Problem(src, None, f"not a readable Parquet file ({e})")])
            continue
        report.shards += 1
        schema = pf.schema_arrow
        problems = column_problems(schema, LOG_SCHEMA, src)
        if ref is None:
            ref = (src, schema)
        else:
            problems = merge_types(problems, schema, ref, src)
        if pf.metadata.num_rows != entry["rows"]:
            problems.append(Problem(src, None, f"{pf.metadata.num_rows:,} rows, but "
                                    f"{DATASET_FILE} says {entry['rows']:,}"))  # fmt: skip
        report.add(problems)
        if any(p.column is not None for p in problems):
            continue  # columns of the wrong type: the rows cannot be read as the contract says
        seen: set[str | None] = set()
        n_imp, sessions = 0, []
        for start, t in shard_chunks(pf, read_rows):
            found = log_table_problems(t, src, row_offset=start, aspects=decl.aspects)
            found += session_order_problems(t, src, start)
            found += slot_problems(t, src, start, slots=decl.slots, list_size=decl.list_size)
            new = []
            for p in found:  # the first problem of each column in a shard
                if p.column not in seen:
                    new.append(p)
                    seen.add(p.column)
            report.add(new)
            sid = t.column("session_id").to_numpy()
            rix = t.column("request_index").to_numpy()
            run = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
            runs.sid.append(sid[run])
            runs.shard.append(np.full(run.size, k, dtype=np.int64))
            runs.row.append(start + run)
            sessions.append(sid[run])
            report.requests += int(np.count_nonzero(np.r_[True, (sid[1:] != sid[:-1])
                                                          | (rix[1:] != rix[:-1])]))  # fmt: skip
            n_imp += int(np.count_nonzero(t.column("position").to_numpy() >= 0))
            report.rows += t.num_rows
            report.users.add(t.column("user_id").to_numpy(), users)
            report.items.add(t.column("item_id").to_numpy(), items)
        report.impressions += n_imp
        n_sess = int(np.unique(np.concatenate(sessions)).size) if sessions else 0
        for key, got in (("impressions", n_imp), ("sessions", n_sess)):
            if key in entry and entry[key] != got and not seen:
                report.add([Problem(src_meta, "shards", f"{entry['file']} holds {got:,} {key}, "
                                    f"but {DATASET_FILE} says {entry[key]:,}")])  # fmt: skip
    report.add(session_run_problems(runs, files))
    if runs.sid:
        report.sessions = int(np.unique(np.concatenate(runs.sid)).size)
