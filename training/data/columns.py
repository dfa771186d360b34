"""Checked columns of an imported log and its side tables (``ranker import``).

Pure functions from a parsed column (pandas) to typed arrays: ids, timestamps in a stated unit,
0-based positions, 0/1 feedback, bounded numbers; the slot and session rules. Each raises
:class:`contract.schema.LogValidationError` naming the file, the column and a sample of the bad
values, so a refusal is a one-line error of the CLI.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, overload

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contract.schema import LogValidationError

#: Plausible epoch range of a log's timestamps: 2000-01-01 to 2100-01-01 (UTC), in ms.
PLAUSIBLE_MS = (946_684_800_000, 4_102_444_800_000)
_MS_PER = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
DAY_MS = 86_400_000


def sample_values(values: Any, n: int = 3) -> str:
    """The first ``n`` values as Python literals (numpy scalars as plain numbers)."""
    return ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in list(values)[:n])


def column_error(source: str, column: str, problem: str) -> LogValidationError:
    return LogValidationError(f"{source}: column {column!r}: {problem}")


def read_table(path: Path, columns: list[str], what: str) -> pd.DataFrame:
    """The named columns of a CSV or Parquet file (CSV cells as text where not numeric).

    Raises LogValidationError naming the file and the missing columns (with those it has)."""
    try:
        if path.suffix.lower() == ".parquet":
            have = pq.ParquetFile(path).schema_arrow.names
        else:
            have = list(pd.read_csv(path, nrows=0).columns)
    except (OSError, pa.ArrowInvalid, pd.errors.ParserError, pd.errors.EmptyDataError,
            UnicodeDecodeError) as e:  # fmt: skip
        raise LogValidationError(f"{path}: not a readable {what} file ({e})") from None
    missing = [c for c in dict.fromkeys(columns) if c not in have]
    if missing:
        raise LogValidationError(
            f"{path}: columns {missing} named in the mapping are missing; the file has {have}"
        )
    cols = list(dict.fromkeys(columns))
    try:
        if path.suffix.lower() == ".parquet":
            return pq.read_table(path, columns=cols).to_pandas()
        return pd.read_csv(path, usecols=cols, keep_default_na=True)
    except (OSError, pa.ArrowInvalid, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise LogValidationError(f"{path}: not a readable {what} file ({e})") from None


@overload
def stable_id(values: str) -> int: ...
@overload
def stable_id(values: np.ndarray | list[str] | tuple[str, ...]) -> np.ndarray: ...
def stable_id(values: str | np.ndarray | list[str] | tuple[str, ...]) -> int | np.ndarray:
    """Non-negative int64 ids of text ids: the first 8 bytes of blake2b of the UTF-8 text with
    the top bit cleared (the same value in every import and on every machine). One string
    gives one int (what a client of the service sends for that id); an array or a sequence
    gives an int64 array of its shape."""
    if isinstance(values, str):
        return int(stable_id(np.array([values]))[0])
    uniq, inv = np.unique(np.asarray(values).astype(str), return_inverse=True)
    h = np.array(
        [int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little") >> 1
         for u in uniq], dtype=np.int64,
    )  # fmt: skip
    return h[inv] if len(uniq) else np.zeros(0, np.int64)


def id_column(s: pd.Series, source: str, column: str) -> np.ndarray:
    """int64 ids of an id column: integers as they are (>= 0), text through :func:`stable_id`.

    Raises LogValidationError for missing values, negative or fractional numbers."""
    if s.isna().any():
        i = int(np.argmax(s.isna().to_numpy()))
        raise column_error(source, column, f"row {i}: missing id")
    if pd.api.types.is_bool_dtype(s):
        raise column_error(source, column, "boolean values are not ids")
    if pd.api.types.is_numeric_dtype(s):
        a = s.to_numpy()
        if a.dtype.kind == "f":
            bad = a != np.trunc(a)
            if bad.any():
                raise column_error(source, column, f"fractional ids, e.g. {sample_values(a[bad])}")
        a = a.astype(np.int64)
        if (a < 0).any():
            raise column_error(source, column, f"negative ids, e.g. {sample_values(a[a < 0])}")
        return a
    return stable_id(s.to_numpy())


def timestamps_ms(s: pd.Series, unit: str, source: str, column: str) -> np.ndarray:
    """Epoch milliseconds (UTC, int64) from a column in ``unit`` (s, ms, us, ns or iso).

    Values outside 2000-01-01..2100-01-01 in the stated unit are refused (a seconds column
    declared as ms reads as January 1970), naming the column and a sample of raw values and
    the dates they would be; unparseable ISO strings and missing values are refused too."""
    if s.isna().any():
        i = int(np.argmax(s.isna().to_numpy()))
        raise column_error(source, column, f"row {i}: missing timestamp")
    if unit == "iso":
        if pd.api.types.is_numeric_dtype(s):
            raise column_error(
                source,
                column,
                "timestamp_unit iso, but the values are numbers, e.g. "
                f"{sample_values(s.to_numpy())}; declare s, ms, us or ns",
            )
        t = pd.to_datetime(s, utc=True, errors="coerce", format="ISO8601")
        bad = t.isna().to_numpy()
        if bad.any():
            raise column_error(source, column, f"not ISO 8601 date-times: {sample_values(s[bad])}")
        ms = (t.dt.tz_convert(None).to_numpy().astype("datetime64[ms]")).astype(np.int64)
    else:
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            raise column_error(
                source,
                column,
                f"timestamp_unit {unit}, but the values are not numbers, e.g. "
                f"{sample_values(s.to_numpy())}; declare iso for date-time text",
            )
        raw = s.to_numpy().astype(np.float64)
        ms = np.floor(raw * _MS_PER[unit]).astype(np.int64)
    lo, hi = PLAUSIBLE_MS
    bad = (ms < lo) | (ms >= hi)
    if bad.any():
        first = np.flatnonzero(bad)[:3]
        dates = [str(np.datetime64(int(v), "ms"))[:10] for v in ms[first]]
        raise column_error(
            source, column,
            f"values implausible for timestamp_unit {unit!r}: "
            f"{sample_values(s.to_numpy()[first])} read as {', '.join(dates)} (outside "
            "2000-2100); check the unit",
        )  # fmt: skip
    return ms


def binary_column(s: pd.Series, source: str, column: str) -> np.ndarray:
    """0/1 int8 feedback; missing values and others than 0/1/true/false are refused."""
    if s.isna().any():
        i = int(np.argmax(s.isna().to_numpy()))
        raise column_error(source, column, f"row {i}: missing value (a present aspect needs one on "
                    "every impression)")  # fmt: skip
    if pd.api.types.is_bool_dtype(s):
        return s.to_numpy().astype(np.int8)
    v = pd.to_numeric(s, errors="coerce").to_numpy()
    bad = ~np.isin(v, (0, 1))
    if bad.any():
        bad_values = sample_values(s.to_numpy()[bad])
        raise column_error(source, column, f"values not in {{0, 1}}: {bad_values}")
    return v.astype(np.int8)


def numeric_column(s: pd.Series, source: str, column: str, lo: float, hi: float,
                   what: str) -> np.ndarray:  # fmt: skip
    """float64 values in ``[lo, hi]``; missing, non-numeric and out-of-range values refused."""
    v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(v) | (v < lo) | (v > hi)
    if bad.any():
        raise column_error(source, column, f"{what}: values outside [{lo}, {hi}] or missing: "
                    f"{sample_values(s.to_numpy()[bad])}")  # fmt: skip
    return v


def positions(s: pd.Series, base: int, source: str, column: str) -> np.ndarray:
    """0-based slots (int64) from a position column whose first slot is ``base``."""
    v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(v) | (v != np.trunc(v)) | (v < base) | (v - base > 32766)
    if bad.any():
        raise column_error(source, column, f"positions must be integers >= position_base {base}: "
                    f"{sample_values(s.to_numpy()[bad])}")  # fmt: skip
    return (v - base).astype(np.int64)


def check_slots(request: np.ndarray, pos: np.ndarray, slots: str, source: str,
                column: str, base: int = 0) -> None:  # fmt: skip
    """A position used twice in a request is refused; under ``contiguous`` a request's
    positions must be ``0..n-1`` (else the log must declare ``slots = "as_logged"``).

    ``request``, ``pos``: ``(n,)`` rows sorted by (request, position), ``pos`` 0-based;
    messages quote positions as logged (``pos + base``, the mapping's ``position_base``)."""
    if len(pos) == 0:
        return
    same = request[1:] == request[:-1]
    dup = same & (pos[1:] == pos[:-1])
    if dup.any():
        i = int(np.argmax(dup))
        raise column_error(
            source, column, f"request {request[i]}: position {pos[i] + base} logged twice"
        )
    if slots == "contiguous":
        start = np.r_[True, ~same]
        rank = np.arange(len(pos)) - np.maximum.accumulate(np.where(start, np.arange(len(pos)), 0))
        bad = pos != rank
        if bad.any():
            i = int(np.argmax(bad))
            raise column_error(
                source, column,
                f"request {request[i]} shows positions that skip a slot (position {pos[i] + base} "
                f"where the next free slot is {rank[i] + base}, as logged with position_base "
                f"{base}); declare slots = \"as_logged\" if the log keeps positions as shown",
            )  # fmt: skip


def sessions(user: np.ndarray, t_ms: np.ndarray, gap_ms: float) -> np.ndarray:
    """Session number of each request, requests given in (user, time) order: a new session
    starts at a new user, a new UTC day or a pause longer than ``gap_ms``."""
    if len(user) == 0:
        return np.zeros(0, np.int64)
    new = np.r_[True, (user[1:] != user[:-1]) | (np.diff(t_ms) > gap_ms)
                | (t_ms[1:] // DAY_MS != t_ms[:-1] // DAY_MS)]  # fmt: skip
    return np.cumsum(new) - 1
