"""Tests for contract.schema: the impression-log contract and its validator.

Every rejection must name the file (or table source) and the column at fault.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract.schema import (
    FEEDBACK,
    FEEDBACK_BINARY,
    ITEM_TABLE_SCHEMA,
    LOG_SCHEMA,
    USER_TABLE_SCHEMA,
    LogValidationError,
    check_columns,
    empty_log_table,
    log_table_problems,
    validate_log_file,
    validate_log_table,
)

N_CAND = 4
SHOWN = 2


def log_columns() -> dict[str, list]:
    """Two requests of one session, 4 candidates each, the first 2 shown (a valid log)."""
    cols: dict[str, list] = {n: [] for n in LOG_SCHEMA.names}
    for r in range(2):
        for j in range(N_CAND):
            shown = j < SHOWN
            cols["request_id"].append(100 + r)
            cols["session_id"].append(7)
            cols["user_id"].append(42)
            cols["timestamp"].append(1_649_376_000_000 + 45_000 * r)
            cols["request_index"].append(r)
            cols["position"].append(j if shown else -1)
            cols["item_id"].append(1000 + 10 * r + j)
            cols["arm"].append("logging")
            cols["model_version"].append("v1")
            cols["propensity"].append(0.25 if shown else None)
            for name in FEEDBACK_BINARY:
                cols[name].append((1 if (name == "click" and j == 0) else 0) if shown else None)
            cols["watch_time"].append(12.5 if shown else None)
    return cols


def log_table(**changes: tuple[int, object]) -> pa.Table:
    """A valid log table with ``column=(row, value)`` changes applied."""
    cols = log_columns()
    for name, (row, value) in changes.items():
        cols[name][row] = value
    return pa.table(cols, schema=LOG_SCHEMA)


def write(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path)
    return path


def assert_names(err: pytest.ExceptionInfo, source: str, column: str, *more: str) -> None:
    msg = str(err.value)
    assert source in msg, msg
    assert f"column {column!r}" in msg, msg
    for m in more:
        assert m in msg, msg


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------


def test_valid_log_table_passes() -> None:
    validate_log_table(log_table())
    validate_log_table(empty_log_table())


def test_schema_has_the_contract_columns() -> None:
    assert FEEDBACK == ("click", "like", "follow", "comment", "hate", "long_view", "watch_time")
    for name in ("request_id", "session_id", "user_id", "timestamp", "position", "item_id"):
        assert not LOG_SCHEMA.field(name).nullable
    for name in ("propensity", *FEEDBACK):
        assert LOG_SCHEMA.field(name).nullable
    assert LOG_SCHEMA.metadata[b"schema"] == b"impression_log"


def test_missing_column_is_named() -> None:
    with pytest.raises(LogValidationError) as e:
        validate_log_table(log_table().drop_columns(["hate"]), "shard-a")
    assert_names(e, "shard-a", "hate", "missing")


def test_wrong_type_is_named_with_both_types() -> None:
    t = log_table()
    i = t.schema.get_field_index("position")
    t = t.set_column(i, pa.field("position", pa.int64()), t.column(i).cast(pa.int64()))
    with pytest.raises(LogValidationError) as e:
        validate_log_table(t, "shard-b")
    assert_names(e, "shard-b", "position", "int64", "int16")


def test_null_in_a_required_column() -> None:
    with pytest.raises(LogValidationError) as e:
        validate_log_table(log_table(user_id=(3, None)), "s")
    assert_names(e, "s", "user_id", "1 null")


def test_position_below_minus_one() -> None:
    with pytest.raises(LogValidationError) as e:
        validate_log_table(log_table(position=(3, -2)), "s")
    assert_names(e, "s", "position", "-2")


def test_propensity_on_a_non_impression() -> None:
    with pytest.raises(LogValidationError) as e:
        validate_log_table(log_table(propensity=(2, 0.5)), "s")
    assert_names(e, "s", "propensity", "row 2")


def test_propensity_missing_on_an_impression() -> None:
    with pytest.raises(LogValidationError) as e:
        validate_log_table(log_table(propensity=(1, None)), "s")
    assert_names(e, "s", "propensity", "row 1")


@pytest.mark.parametrize("value", [0.0, 1.5, -0.1])
def test_propensity_outside_zero_one(value: float) -> None:
    with pytest.raises(LogValidationError) as e:
        validate_log_table(log_table(propensity=(0, value)), "s")
    assert_names(e, "s", "propensity", "outside (0, 1]")


def test_propensity_of_exactly_one_is_valid() -> None:
    validate_log_table(log_table(propensity=(0, 1.0)))


@pytest.mark.parametrize("name", FEEDBACK)
def test_feedback_null_on_an_impression(name: str) -> None:
    with pytest.raises(LogValidationError) as e:
        validate_log_table(log_table(**{name: (4, None)}), "s")
    assert_names(e, "s", name, "row 4")


@pytest.mark.parametrize("name", ["click", "watch_time"])
def test_feedback_set_on_a_non_impression(name: str) -> None:
    with pytest.raises(LogValidationError) as e:
        validate_log_table(log_table(**{name: (3, 0)}), "s")
    assert_names(e, "s", name, "row 3")


def test_binary_feedback_outside_zero_one() -> None:
    with pytest.raises(LogValidationError) as e:
        validate_log_table(log_table(like=(0, 2)), "s")
    assert_names(e, "s", "like", "not in {0, 1}")


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_negative_or_nan_watch_time(value: float) -> None:
    with pytest.raises(LogValidationError) as e:
        validate_log_table(log_table(watch_time=(1, value)), "s")
    assert_names(e, "s", "watch_time")


def test_duplicate_position_in_a_request() -> None:
    # Row 1 is slot 1 of request 100; moving it to slot 0 repeats position 0.
    with pytest.raises(LogValidationError) as e:
        validate_log_table(log_table(position=(1, 0)), "s")
    assert_names(e, "s", "position", "request_id 100", "position 0")


def test_same_position_in_two_requests_is_fine() -> None:
    cols = log_columns()
    assert cols["position"][0] == cols["position"][N_CAND] == 0
    validate_log_table(pa.table(cols, schema=LOG_SCHEMA))


def test_duplicate_item_in_a_request() -> None:
    with pytest.raises(LogValidationError) as e:
        validate_log_table(log_table(item_id=(5, 1010)), "s")  # request 101 has 1010 at row 4
    assert_names(e, "s", "item_id", "request_id 101", "item_id 1010")


def test_non_impressions_may_repeat_minus_one() -> None:
    pos = np.array(log_columns()["position"])
    assert (pos == -1).sum() > 2
    validate_log_table(log_table())


def test_every_problem_is_returned_with_its_row_and_value() -> None:
    t = log_table(propensity=(2, 0.5), like=(0, 2), item_id=(5, 1010))
    problems = log_table_problems(t, "s", row_offset=100)
    got = [(p.column, p.row, p.value) for p in problems]
    assert got == [("propensity", 102, None), ("like", 100, 2), ("item_id", 105, 1010)]
    assert str(problems[1]) == "s: column 'like': row 100: value 2: not in {0, 1}"
    with pytest.raises(LogValidationError) as e:
        validate_log_table(t, "s")
    assert e.value.problems[0].row == 2 and len(e.value.problems) == 3
    assert str(e.value) == str(e.value.problems[0])


def test_aspects_declared_absent_must_be_null_everywhere() -> None:
    absent = ("like", "watch_time")
    cols = log_columns()
    for name in absent:
        cols[name] = [None] * len(cols[name])
    t = pa.table(cols, schema=LOG_SCHEMA)
    present = [a for a in FEEDBACK if a not in absent]
    validate_log_table(t, aspects=present)
    with pytest.raises(LogValidationError) as e:  # absent, yet not declared so
        validate_log_table(t, "s")
    assert_names(e, "s", "like", "row 0", "must be set exactly on impressions")
    with pytest.raises(LogValidationError) as e:  # declared absent, yet set
        validate_log_table(log_table(), "s", aspects=present)
    assert_names(e, "s", "like", "row 0", "value 0", "declares this aspect absent")
    with pytest.raises(ValueError, match="clicks"):
        log_table_problems(t, aspects=["clicks"])


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------


def test_valid_file_returns_its_row_count(tmp_path: Path) -> None:
    path = write(log_table(), tmp_path / "part-00000.parquet")
    assert validate_log_file(path) == 2 * N_CAND
    assert validate_log_file(str(path)) == 2 * N_CAND


@pytest.mark.parametrize(
    ("table", "column"),
    [
        (lambda: log_table().drop_columns(["click"]), "click"),
        (lambda: log_table(propensity=(3, 0.1)), "propensity"),
        (lambda: log_table(comment=(0, None)), "comment"),
        (lambda: log_table(position=(1, 0)), "position"),
    ],
    ids=["missing-column", "propensity-on-non-impression", "null-feedback", "dup-position"],
)
def test_bad_file_message_names_file_and_column(tmp_path: Path, table, column: str) -> None:
    path = write(table(), tmp_path / "bad.parquet")
    with pytest.raises(LogValidationError) as e:
        validate_log_file(path)
    assert_names(e, str(path), column)


def test_wrong_type_in_file_is_named(tmp_path: Path) -> None:
    t = log_table()
    i = t.schema.get_field_index("click")
    t = t.set_column(i, pa.field("click", pa.float64()), t.column(i).cast(pa.float64()))
    path = write(t, tmp_path / "typed.parquet")
    with pytest.raises(LogValidationError) as e:
        validate_log_file(path)
    assert_names(e, str(path), "click", "double", "int8")


def test_garbage_bytes_are_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"PAR1 this is not parquet at all \x00\xff" * 10)
    with pytest.raises(LogValidationError, match="not a readable Parquet file") as e:
        validate_log_file(path)
    assert str(path) in str(e.value)


def test_missing_file_is_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.parquet"
    with pytest.raises(LogValidationError) as e:
        validate_log_file(path)
    assert str(path) in str(e.value)


# ------------------------------------------------------------------------------------------
# Side tables
# ------------------------------------------------------------------------------------------


def test_check_columns_for_side_tables() -> None:
    users = pa.table({n: [1] for n in USER_TABLE_SCHEMA.names}, schema=USER_TABLE_SCHEMA)
    check_columns(users.schema, USER_TABLE_SCHEMA, "users.parquet")
    items = pa.table({n: [1] for n in ITEM_TABLE_SCHEMA.names if n != "duration_s"})
    with pytest.raises(LogValidationError, match=r"items.parquet: column 'duration_s': missing"):
        check_columns(items.schema, ITEM_TABLE_SCHEMA, "items.parquet")
