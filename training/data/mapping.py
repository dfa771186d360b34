"""The mapping file of ``ranker import``: which columns of a log and its side tables mean what.

TOML (or JSON with the same keys); paths in it are relative to the file. The format is
documented in README "Bring your own logs"; :func:`load_mapping` checks it whole before any
data is read and raises :class:`training.sim.config.ConfigError` naming the key (or
FileNotFoundError naming the file a pattern does not match).
"""

from __future__ import annotations

import glob
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.features import DEFAULT_SPEC
from contract.schema import FEEDBACK
from training.sim.config import ConfigError

SLOTS = ("contiguous", "as_logged")
PROPENSITY_KINDS = ("conditional", "marginal", "unknown")
TIME_UNITS = ("s", "ms", "us", "ns", "iso")
FIELD_KINDS = ("category", "hash", "bucket")

_LOG_KEYS = {
    "files", "request_id", "user_id", "item_id", "timestamp", "timestamp_unit", "position",
    "position_base", "slots", "propensity", "propensity_kind", "session_id",
    "session_gap_minutes", "arm", "arm_name", "model_version", "aspects", "watch_time_unit",
}  # fmt: skip
_TABLE_KEYS = {"file", "id", "id_hash_size", "fields", "tag", "author"}
_FIELD_KEYS = {"name", "column", "kind", "size", "edges", "n_buckets", "min_count", "max_size"}


@dataclass(frozen=True)
class FieldMap:
    """A declared user or item field: its name in the spec, the column it reads, its kind."""

    name: str
    column: str
    kind: str
    size: int | None = None
    edges: tuple[float, ...] | None = None
    n_buckets: int | None = None
    min_count: int = 1
    max_size: int | None = None


@dataclass(frozen=True)
class TableMap:
    """A side table: its file, id column, id hash size, declared fields (and for items the
    optional tag and author columns that the list fields read)."""

    file: Path
    id: str
    id_hash_size: int
    fields: tuple[FieldMap, ...]
    tag: str | None = None
    author: str | None = None


@dataclass(frozen=True)
class Mapping:
    """A parsed, checked mapping file (see the module docstring and README)."""

    path: Path
    log_files: tuple[Path, ...]
    columns: dict[str, str]  # contract column -> log column (request_id, user_id, ...)
    timestamp_unit: str
    position_base: int
    slots: str
    propensity_kind: str
    aspects: dict[str, str]  # aspect -> log column, in FEEDBACK order
    watch_time_unit: str
    session_gap_minutes: float
    arm_name: str
    model_version: str
    users: TableMap
    items: TableMap
    valid_days: int
    test_days: int
    raw: dict[str, Any] = field(default_factory=dict)


def _bad(path: Path, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {problem}")


def _str(d: dict, key: str, path: Path, where: str, required: bool = True) -> str | None:
    v = d.get(key)
    if v is None:
        if required:
            raise _bad(path, f"{where}.{key}", "missing")
        return None
    if not isinstance(v, str) or not v:
        raise _bad(path, f"{where}.{key}", f"expected a column name (a string), got {v!r}")
    return v


def _choice(d: dict, key: str, choices: tuple[str, ...], path: Path, where: str,
            default: str | None = None) -> str:  # fmt: skip
    v = d.get(key, default)
    if v is None:
        raise _bad(path, f"{where}.{key}", f"missing (one of {', '.join(choices)})")
    if v not in choices:
        raise _bad(path, f"{where}.{key}", f"{v!r} is not one of {', '.join(choices)}")
    return str(v)


def _int(d: dict, key: str, path: Path, where: str, default: int, lo: int, hi: int) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(path, f"{where}.{key}", f"{v!r}: expected an integer in [{lo}, {hi}]")
    return v


def _unknown_keys(d: dict, allowed: set[str], path: Path, where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise _bad(path, where, f"unknown keys {extra}; known: {sorted(allowed)}")


def _files(spec: Any, base: Path, path: Path, key: str) -> tuple[Path, ...]:
    pats = [spec] if isinstance(spec, str) else spec
    if not isinstance(pats, list) or not pats or not all(isinstance(p, str) for p in pats):
        raise _bad(path, key, f"expected a file name or a list of them, got {spec!r}")
    out: list[Path] = []
    for p in pats:
        full = str(base / p)
        matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise FileNotFoundError(f"{path}: {key}: {p!r} matches no file (relative to {base})")
        out.extend(Path(m) for m in matches if Path(m) not in out)
    for f in out:
        if f.suffix.lower() not in (".csv", ".parquet"):
            raise _bad(path, key, f"{f.name}: expected a .csv or .parquet file")
    return tuple(out)


def _field_map(d: Any, path: Path, where: str, taken: set[str]) -> FieldMap:
    if not isinstance(d, dict):
        raise _bad(path, where, f"expected a table of name, column, kind; got {d!r}")
    _unknown_keys(d, _FIELD_KEYS, path, where)
    name = _str(d, "name", path, where)
    assert name is not None
    if name in taken:
        raise _bad(path, f"{where}.name", f"{name!r} is taken (standard or declared twice)")
    taken.add(name)
    column = _str(d, "column", path, where, required=False) or name
    kind = _choice(d, "kind", FIELD_KINDS, path, where)
    size = edges = n_buckets = max_size = None
    if kind == "hash":
        size = _int(d, "size", path, where, 0, 2, 1 << 24)
    if kind == "bucket":
        if ("edges" in d) == ("n_buckets" in d):
            raise _bad(path, where, "a bucket field takes exactly one of edges, n_buckets")
        if "edges" in d:
            e = d["edges"]
            if (not isinstance(e, list) or not e
                    or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in e)
                    or sorted(e) != e or len(set(e)) != len(e)):  # fmt: skip
                raise _bad(path, f"{where}.edges", f"{e!r}: expected ascending numbers")
            edges = tuple(float(x) for x in e)
        else:
            n_buckets = _int(d, "n_buckets", path, where, 0, 2, 1000)
    if kind == "category":
        max_size = d.get("max_size")
        if max_size is not None:
            max_size = _int(d, "max_size", path, where, 0, 1, 1 << 24)
    min_count = _int(d, "min_count", path, where, 1, 1, 1 << 30)
    return FieldMap(name, column, kind, size, edges, n_buckets, min_count, max_size)


def _table_map(d: Any, path: Path, base: Path, where: str, default_hash: int,
               taken: set[str]) -> TableMap:  # fmt: skip
    if not isinstance(d, dict):
        raise _bad(path, where, "missing (a table with file, id and fields)")
    _unknown_keys(d, _TABLE_KEYS, path, where)
    files = _files(d.get("file"), base, path, f"{where}.file") if "file" in d else None
    if files is None:
        raise _bad(path, f"{where}.file", "missing")
    if len(files) != 1:
        raise _bad(path, f"{where}.file", f"expected one file, got {len(files)}")
    fields = d.get("fields", [])
    if not isinstance(fields, list):
        raise _bad(path, f"{where}.fields", "expected a list of field tables")
    fms = tuple(_field_map(f, path, f"{where}.fields[{i}]", taken) for i, f in enumerate(fields))
    return TableMap(
        file=files[0],
        id=_str(d, "id", path, where) or "",
        id_hash_size=_int(d, "id_hash_size", path, where, default_hash, 2, 1 << 24),
        fields=fms,
        tag=_str(d, "tag", path, where, required=False),
        author=_str(d, "author", path, where, required=False),
    )


def load_mapping(path: str | Path) -> Mapping:
    """Read and check a mapping file (``.toml`` or ``.json``); file paths in it are relative to
    the mapping file. Raises ConfigError naming the key and FileNotFoundError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mapping file")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text())
        else:
            raw = tomllib.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a readable mapping file ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table at the top level")
    _unknown_keys(raw, {"log", "users", "items", "split"}, path, "top level")
    base = path.parent
    log = raw.get("log")
    if not isinstance(log, dict):
        raise _bad(path, "log", "missing (a table naming the log's files and columns)")
    _unknown_keys(log, _LOG_KEYS, path, "log")
    files = _files(log.get("files"), base, path, "log.files")
    columns = {}
    for key in ("request_id", "user_id", "item_id", "timestamp", "position"):
        columns[key] = _str(log, key, path, "log")
    kind = _choice(log, "propensity_kind", PROPENSITY_KINDS, path, "log")
    prop = _str(log, "propensity", path, "log", required=kind != "unknown")
    if prop is not None:
        columns["propensity"] = prop
    for key in ("session_id", "arm"):
        v = _str(log, key, path, "log", required=False)
        if v is not None:
            columns[key] = v
    aspects = log.get("aspects")
    if not isinstance(aspects, dict) or not aspects:
        raise _bad(path, "log.aspects", f"missing: a table aspect = column, aspects {FEEDBACK}")
    unknown = sorted(set(aspects) - set(FEEDBACK))
    if unknown:
        raise _bad(path, "log.aspects", f"unknown aspects {unknown}; known: {list(FEEDBACK)}")
    for a, c in aspects.items():
        if not isinstance(c, str) or not c:
            raise _bad(path, f"log.aspects.{a}", f"expected a column name, got {c!r}")
    gap = log.get("session_gap_minutes", 30.0)
    if isinstance(gap, bool) or not isinstance(gap, int | float) or not gap > 0:
        raise _bad(path, "log.session_gap_minutes", f"{gap!r}: expected a number > 0")
    taken = {f.name for f in DEFAULT_SPEC.fields}
    split = raw.get("split", {})
    if not isinstance(split, dict):
        raise _bad(path, "split", "expected a table with valid_days, test_days")
    _unknown_keys(split, {"valid_days", "test_days"}, path, "split")
    arm_name = log.get("arm_name", "imported")
    model_version = log.get("model_version", "imported")
    for key, v in (("arm_name", arm_name), ("model_version", model_version)):
        if not isinstance(v, str) or not v:
            raise _bad(path, f"log.{key}", f"expected a non-empty string, got {v!r}")
    return Mapping(
        path=path,
        log_files=files,
        columns=columns,  # type: ignore[arg-type]
        timestamp_unit=_choice(log, "timestamp_unit", TIME_UNITS, path, "log"),
        position_base=_int(log, "position_base", path, "log", 0, 0, 1),
        slots=_choice(log, "slots", SLOTS, path, "log", default="contiguous"),
        propensity_kind=kind,
        aspects={a: aspects[a] for a in FEEDBACK if a in aspects},
        watch_time_unit=_choice(log, "watch_time_unit", ("s", "ms"), path, "log", default="s"),
        session_gap_minutes=float(gap),
        arm_name=arm_name,
        model_version=model_version,
        users=_table_map(
            raw.get("users"), path, base, "users", DEFAULT_SPEC.field("user_id").size, taken
        ),  # fmt: skip
        items=_table_map(
            raw.get("items"), path, base, "items", DEFAULT_SPEC.field("item_id").size, taken
        ),  # fmt: skip
        valid_days=_int(split, "valid_days", path, "split", 1, 0, 365),
        test_days=_int(split, "test_days", path, "split", 1, 0, 365),
        raw=raw,
    )
