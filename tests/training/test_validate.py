"""Tests for training.data.validate: a whole dataset checked before any work starts, each
problem named by file, column, row and value; and the commands that run the check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from contract.features import DEFAULT_SPEC, Field, extend_spec
from contract.schema import FEEDBACK, Problem
from tests.training.log_rows import Req, log_rows, side_tables
from training import cli
from training.data.features import SideTables, build_requests
from training.data.pipeline import DATASET_FILE, Dataset, DatasetBuilder, iter_session_batches
from training.data.validate import (
    DEFAULT_MAX_MISSING_SHARE,
    REQUIRED_KEYS,
    DatasetValidationError,
    check_dataset,
    validate_dataset,
)
from training.data.validate_log import session_order_problems, slot_problems

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_649_376_000_000
MIN = 60_000
ITEMS = list(range(10, 40))


def visit(session: int, t0: int) -> list[Req]:
    """A valid session of two requests, two slots shown of three candidates each."""
    return [
        Req(session, 0, t0, [(10, 0, 1), (11, 1, 0)], others=(12,)),
        Req(session, 1, t0 + MIN, [(13, 0, 0), (14, 1, 1)], others=(15,)),
    ]


def build(
    tmp_path: Path,
    day0: list[Req],
    *,
    meta: dict | None = None,
    absent: tuple[str, ...] = (),
    name: str = "ds",
    more_days: tuple[list[Req], ...] | None = None,
) -> Path:
    """A dataset of ``day0``'s rows (in the order given) and two valid days after it."""
    days = [day0, *(more_days or ([*visit(901, T0 + 86_400_000)], visit(902, T0 + 2 * 86_400_000)))]
    tables = [log_rows(d, absent=absent) for d in days]
    users = sorted({q.session for d in days for q in d})
    out = tmp_path / name
    with DatasetBuilder(out) as b:
        b.write_side_tables(*side_tables(users, ITEMS))
        b.writer.validate = not absent  # type: ignore[union-attr]  # checked here by aspects
        for day, t in enumerate(tables):
            b.writer.write(t, day)  # type: ignore[union-attr]
            b.writer.flush()  # type: ignore[union-attr]
        b.finish({"source": "test", "code_version": "test", **(meta or {})})
    return out


def lines(report) -> list[str]:
    return [str(p) for p in report.problems]


def the_problem(report, column: str) -> Problem:
    found = [p for p in report.problems if p.column == column]
    assert len(found) == 1, lines(report)
    return found[0]


def shard(root: Path, i: int) -> Path:
    return root / json.loads((root / DATASET_FILE).read_text())["shards"][i]["file"]


# ------------------------------------------------------------------------------------------
# A valid dataset
# ------------------------------------------------------------------------------------------


def test_the_tiny_world_passes_with_its_counts(tiny_data) -> None:
    ds, _, _ = tiny_data
    r = check_dataset(ds.root)
    c = ds.meta["counts"]
    assert (r.rows, r.impressions, r.sessions) == (c["rows"], c["impressions"], c["sessions"])
    assert r.shards == len(ds.meta["shards"]) and r.requests > r.sessions
    assert r.users.share == 0 and r.items.share == 0
    assert "0.00%" in r.summary() and f"{c['rows']:,} rows" in r.summary()


def test_the_kuairand_fixture_and_the_imported_bandit_log_pass(tmp_path: Path) -> None:
    # KuaiRand logs each impression's own time within a request; the bandit log keeps sparse
    # slots as logged and declares six aspects absent.
    from training.data.kuairand import convert_kuairand

    fixtures = ROOT / "tests" / "fixtures" / "kuairand"
    logs = [str(fixtures / f"log_{k}_fixture.csv") for k in ("standard", "random")]
    convert_kuairand(logs, str(fixtures / "user_features_fixture.csv"),
                     str(fixtures / "video_features_fixture.csv"), str(tmp_path / "kr"),
                     progress=False)  # fmt: skip
    r = validate_dataset(tmp_path / "kr")
    assert r.ok and r.impressions == 44, lines(r)
    mapping = ROOT / "examples" / "bandit_log" / "mapping.toml"
    assert cli.main(["import", "--mapping", str(mapping), "--out", str(tmp_path / "bandit")]) == 0
    r = validate_dataset(tmp_path / "bandit")
    assert r.ok and r.slots == "as_logged", lines(r)


def test_a_hand_made_dataset_passes(tmp_path: Path) -> None:
    r = validate_dataset(build(tmp_path, visit(1, T0)), read_rows=2)  # chunks of 2 rows
    assert r.ok, lines(r)
    assert (r.rows, r.impressions, r.requests, r.sessions) == (18, 12, 6, 3)


# ------------------------------------------------------------------------------------------
# Sessions and requests in the order the reader assumes
# ------------------------------------------------------------------------------------------


def interleaved() -> list[Req]:
    """The issue's 6-row log: two sessions whose requests interleave by timestamp."""
    return [
        Req(1, 0, T0, [(10, 0, 1), (11, 1, 0)]),
        Req(2, 0, T0 + 1000, [(20, 0, 0), (21, 1, 0)]),
        Req(1, 1, T0 + 2000, [(12, 0, 0)]),
        Req(2, 1, T0 + 3000, [(22, 0, 0)]),
    ]


@pytest.mark.parametrize("read_rows", [1, 3, 1 << 20])
def test_interleaved_sessions_are_refused_where_a_session_starts_again(
    tmp_path: Path, read_rows: int
) -> None:
    root = build(tmp_path, interleaved())
    r = validate_dataset(root, read_rows=read_rows)
    p = the_problem(r, "session_id")
    assert (p.source, p.row, p.value) == (str(shard(root, 0)), 4, 1), str(p)
    assert "not contiguous" in p.problem and "2 runs so" in p.problem


def test_interleaved_sessions_are_what_the_reader_misreads(tmp_path: Path) -> None:
    # Why the layout is refused: the reader yields session 1 in two pieces, and its second
    # request gets depth 0 and clicks 0 instead of 2 and 1.
    users, items = side_tables([1, 2], ITEMS)
    side = SideTables.from_tables(users, items)
    path = tmp_path / "log.parquet"

    def second_request(table: pa.Table) -> tuple[int, int]:
        pq.write_table(table, path)
        for piece in iter_session_batches([path], sessions_per_batch=1):
            req = build_requests(piece, side)
            hit = np.flatnonzero(req.request_id == 1001)
            if hit.size:
                return int(req.depth[hit[0]]), int(req.clicks[hit[0]])
        raise AssertionError("request 1001 not read")

    table = log_rows(interleaved())
    assert second_request(table) == (0, 0)
    order = pc.sort_indices(table, [("session_id", "ascending"), ("request_index", "ascending")])
    assert second_request(table.take(order)) == (2, 1)


def test_a_simulated_shard_re_sorted_by_time_is_refused(tiny_data, tmp_path: Path) -> None:
    # The larger case: a world re-sorted by time gave 0.5% of requests wrong session
    # counters without a word.
    import shutil

    ds, _, _ = tiny_data
    root = tmp_path / "resorted"
    shutil.copytree(ds.root, root)
    path = root / ds.meta["shards"][0]["file"]
    t = pq.read_table(path)
    order = pc.sort_indices(t, [("timestamp", "ascending"), ("request_id", "ascending")])
    pq.write_table(t.take(order), path)
    p = the_problem(validate_dataset(root), "session_id")
    assert p.source == str(path) and "not contiguous" in p.problem


def test_a_session_split_across_shards_is_refused(tmp_path: Path) -> None:
    first, second = visit(1, T0)
    later = Req(1, 1, T0 + 86_400_000, second.shown, second.others)
    root = build(tmp_path, [first], more_days=([later], visit(902, T0 + 2 * 86_400_000)))
    p = the_problem(validate_dataset(root), "session_id")
    assert (p.source, p.row, p.value) == (str(shard(root, 1)), 0, 1)
    assert f"also in {shard(root, 0)} from row 0" in p.problem


def test_requests_out_of_time_order_are_refused(tmp_path: Path) -> None:
    a, b = visit(1, T0)
    late_first = [a._replace(timestamp=T0 + 5 * MIN), b]  # request 0 after request 1
    p = the_problem(validate_dataset(build(tmp_path, late_first)), "timestamp")
    assert (p.row, p.value) == (3, T0 + MIN) and "not in time order" in p.problem


def test_requests_in_reverse_row_order_are_refused(tmp_path: Path) -> None:
    a, b = visit(1, T0)
    p = the_problem(validate_dataset(build(tmp_path, [b, a])), "request_index")
    assert (p.row, p.value) == (3, 0) and "out of order or not contiguous" in p.problem


def test_a_request_whose_rows_are_apart_is_refused(tmp_path: Path) -> None:
    a, b = visit(1, T0)
    shown, other = a._replace(others=()), Req(1, 0, T0, [], others=(12,))
    r = validate_dataset(build(tmp_path, [shown, b, other]))
    p = [q for q in r.problems if q.column == "request_index"][0]
    assert (p.row, p.value) == (5, 0), lines(r)


def test_session_order_problems_by_hand() -> None:
    t = log_rows([Req(1, 0, T0, [(10, 0, 0), (11, 1, 0)]), Req(1, 1, T0 + MIN, [(12, 0, 0)])])
    assert session_order_problems(t, "s") == []
    ts = t.column("timestamp").to_numpy().copy()
    ts[1] += 1  # the second row of request 0: an impression's own time, later than the first
    later = t.set_column(t.schema.get_field_index("timestamp"), "timestamp", pa.array(ts))
    assert session_order_problems(later, "s") == []
    ts[1] -= 2  # earlier than the row before
    bad = t.set_column(t.schema.get_field_index("timestamp"), "timestamp", pa.array(ts))
    [p] = session_order_problems(bad, "s", row_offset=100)
    assert (p.column, p.row, p.value) == ("timestamp", 101, T0 - 1)
    assert "rows are not in time order (the row before is at" in p.problem
    user = t.column("user_id").to_numpy().copy()
    user[2] = 7
    other = t.set_column(t.schema.get_field_index("user_id"), "user_id", pa.array(user))
    [p] = session_order_problems(other, "s")
    assert (p.column, p.row, p.value) == ("user_id", 2, 7) and "changes user" in p.problem


# ------------------------------------------------------------------------------------------
# Slots
# ------------------------------------------------------------------------------------------


def test_a_repeated_slot_is_refused_even_as_logged() -> None:
    t = log_rows([Req(1, 0, T0, [(10, 0, 0), (11, 1, 0), (12, 1, 0)])])
    for slots in ("contiguous", "as_logged"):
        [p] = slot_problems(t, "s", 10, slots=slots)
        assert (p.column, p.row, p.value) == ("position", 10, [0, 1, 1])
        assert "repeated" in p.problem


def test_a_skipped_slot_is_refused_unless_declared_as_logged(tmp_path: Path) -> None:
    day = [Req(1, 0, T0, [(10, 2, 1)], others=(11,)), Req(1, 1, T0 + MIN, [(12, 0, 0), (13, 2, 0)])]
    root = build(tmp_path, day)
    p = the_problem(validate_dataset(root), "position")
    # the worked example: the only impression at position 2
    assert (p.source, p.row, p.value) == (str(shard(root, 0)), 0, [2])
    assert "skips a slot" in p.problem and "2 requests so" in p.problem
    assert '"slots": "as_logged"' in p.problem
    ok = build(tmp_path, day, meta={"slots": "as_logged"}, name="as-logged")
    r = validate_dataset(ok)
    assert r.ok and r.slots == "as_logged", lines(r)


def test_slot_problems_by_hand() -> None:
    t = log_rows([Req(1, 0, T0, [(10, 1, 0), (11, 0, 0)]), Req(1, 1, T0, [(12, 0, 0), (13, 3, 0)])])
    [p] = slot_problems(t, "s")
    assert (p.row, p.value) == (2, [0, 3])  # the first shown row of request 1
    assert slot_problems(t, "s", slots="as_logged") == []
    [p] = slot_problems(t, "s", slots="as_logged", list_size=3)
    assert (p.row, p.value) == (2, [0, 3]) and "list_size 3" in p.problem
    with pytest.raises(ValueError, match="sparse"):
        slot_problems(t, "s", slots="sparse")


def test_list_size_bounds_the_slots(tmp_path: Path) -> None:
    root = build(tmp_path, visit(1, T0), meta={"list_size": 1})
    p = [q for q in validate_dataset(root).problems if q.column == "position"][0]
    assert (p.row, p.value) == (0, [0, 1]) and "list_size 1" in p.problem


# ------------------------------------------------------------------------------------------
# Column types across shards
# ------------------------------------------------------------------------------------------


def retype(path: Path, types: dict[str, pa.DataType]) -> None:
    t = pq.read_table(path)
    for name, typ in types.items():
        i = t.schema.get_field_index(name)
        t = t.set_column(i, pa.field(name, typ), t.column(i).cast(typ))
    pq.write_table(t, path)


def test_a_shard_with_other_column_types_is_refused(tmp_path: Path) -> None:
    # The fault: one test shard rewritten with large_string and double columns.
    root = build(tmp_path, visit(1, T0))
    test_shard = shard(root, 2)
    retype(test_shard, {"arm": pa.large_string(), "watch_time": pa.float64()})
    r = validate_dataset(root)
    assert [p.source for p in r.problems] == [str(test_shard)] * 2, lines(r)
    arm = the_problem(r, "arm")
    assert "type large_string, expected string" in arm.problem
    assert f"{shard(root, 0)} has string" in arm.problem
    assert "type double, expected float" in the_problem(r, "watch_time").problem


def test_unreadable_and_missing_shards_are_named(tmp_path: Path) -> None:
    root = build(tmp_path, visit(1, T0))
    shard(root, 1).write_bytes(b"PAR1 not parquet")
    shard(root, 2).unlink()
    r = validate_dataset(root)
    got = {p.source: p.problem for p in r.problems}
    assert got[str(shard(root, 1))].startswith("not a readable Parquet file")
    assert got[str(shard(root, 2))] == "missing (listed in dataset.json)"
    assert r.shards == 1 and r.rows == 6


def test_an_extra_column_of_another_type_in_one_shard_is_refused(tmp_path: Path) -> None:
    root = build(tmp_path, visit(1, T0))
    for i, values in ((0, pa.array(["a"] * 6)), (1, pa.array([1] * 6))):
        t = pq.read_table(shard(root, i))
        pq.write_table(t.append_column("note", values), shard(root, i))
    p = the_problem(validate_dataset(root), "note")
    assert p.source == str(shard(root, 1)) and "type int64, but" in p.problem


# ------------------------------------------------------------------------------------------
# Side tables
# ------------------------------------------------------------------------------------------


def rewrite(path: Path, change) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def test_an_items_table_without_tag_is_refused(tmp_path: Path) -> None:
    root = build(tmp_path, visit(1, T0))
    rewrite(root / "items.parquet", lambda t: t.drop_columns(["tag"]))
    p = the_problem(validate_dataset(root), "tag")
    assert p.source == str(root / "items.parquet") and p.problem.startswith("missing (read by")


@pytest.mark.parametrize("table", ["users", "items"])
def test_an_empty_side_table_is_refused(tmp_path: Path, table: str) -> None:
    root = build(tmp_path, visit(1, T0))
    rewrite(root / f"{table}.parquet", lambda t: t.slice(0, 0))
    r = validate_dataset(root)
    p = [q for q in r.problems if q.source == str(root / f"{table}.parquet")]
    assert len(p) == 1 and p[0].problem.startswith("empty"), lines(r)


def test_nulls_in_contract_columns_and_ids_are_refused(tmp_path: Path) -> None:
    root = build(tmp_path, visit(1, T0))
    tags = pa.array([5, None] + [5] * (len(ITEMS) - 2), pa.int64())
    rewrite(root / "items.parquet", lambda t: t.set_column(t.schema.get_field_index("tag"),
                                                           "tag", tags))  # fmt: skip
    p = the_problem(validate_dataset(root), "tag")
    assert (p.row, p.problem) == (1, "1 null values (the first here)")


def test_side_table_missing_file_repeated_id_and_profile_column(tmp_path: Path) -> None:
    root = build(tmp_path, visit(1, T0))
    rewrite(root / "users.parquet", lambda t: t.drop_columns(["u_seg_b"]))
    rewrite(root / "items.parquet", lambda t: pa.concat_tables([t, t.slice(3, 1)]))
    r = validate_dataset(root)
    assert "read by field 'u_seg_b'" in the_problem(r, "u_seg_b").problem
    p = the_problem(r, "item_id")
    assert (p.row, p.value) == (len(ITEMS), ITEMS[3]) and "repeated" in p.problem
    (root / "items.parquet").unlink()
    assert any(p.source == str(root / "items.parquet") and p.problem == "missing"
               for p in validate_dataset(root).problems)  # fmt: skip


def test_required_columns_come_from_the_declared_feature_spec(tmp_path: Path) -> None:
    spec = extend_spec(DEFAULT_SPEC, [Field("genre", "item", 8)])
    root = build(tmp_path, visit(1, T0), meta={"feature_spec": spec.to_dict()})
    p = the_problem(validate_dataset(root), "genre")
    assert p.source == str(root / "items.parquet") and "field 'genre'" in p.problem
    genre = pa.array([None] + [1] * (len(ITEMS) - 1), pa.int64())  # a missing value: id 0
    rewrite(root / "items.parquet", lambda t: t.append_column("genre", genre))
    assert validate_dataset(root).ok
    meta = json.loads((root / DATASET_FILE).read_text())
    meta["feature_spec"] = {"fields": "no"}
    (root / DATASET_FILE).write_text(json.dumps(meta))
    assert "not a feature spec" in the_problem(validate_dataset(root), "feature_spec").problem
    meta["feature_spec"] = {**spec.to_dict(), "fields": spec.to_dict()["fields"][::-1]}
    (root / DATASET_FILE).write_text(json.dumps(meta))  # list fields first: no model reads it
    assert "not a feature spec" in the_problem(validate_dataset(root), "feature_spec").problem


# ------------------------------------------------------------------------------------------
# Ids of the log missing from the side tables
# ------------------------------------------------------------------------------------------


def test_ids_missing_from_the_items_table_beyond_the_share_are_refused(tmp_path: Path) -> None:
    root = build(tmp_path, visit(1, T0))
    # 18 log rows; items 10 and 15 (one row each in day 0, one in each later day): 6 of 18
    rewrite(root / "items.parquet", lambda t: t.filter(pc.invert(pc.is_in(
        t.column("item_id"), pa.array([10, 15])))))  # fmt: skip
    r = validate_dataset(root)
    p = the_problem(r, "item_id")
    assert p.source == str(root / "log")
    assert "33.33% of log rows (6 of 18)" in p.problem and "e.g. 10, 15" in p.problem
    assert f"at most {100 * DEFAULT_MAX_MISSING_SHARE:g}%" in p.problem
    relaxed = validate_dataset(root, max_missing_share=0.5)
    assert relaxed.ok and "items 33.33% (e.g. 10, 15)" in relaxed.summary()
    with pytest.raises(ValueError, match="max_missing_share"):
        validate_dataset(root, max_missing_share=1.5)


# ------------------------------------------------------------------------------------------
# dataset.json
# ------------------------------------------------------------------------------------------


def edit_meta(root: Path, change) -> None:
    meta = json.loads((root / DATASET_FILE).read_text())
    change(meta)
    (root / DATASET_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("key", sorted(REQUIRED_KEYS))
def test_a_missing_required_key_is_named(tmp_path: Path, key: str) -> None:
    root = build(tmp_path, visit(1, T0))
    edit_meta(root, lambda m: m.pop(key))
    p = the_problem(validate_dataset(root), key)
    assert p.source == str(root / DATASET_FILE) and p.problem == "required key missing"


def test_dataset_json_missing_or_malformed(tmp_path: Path) -> None:
    root = build(tmp_path, visit(1, T0))
    (root / DATASET_FILE).write_text("{not json")
    [p] = validate_dataset(root).problems
    assert p.source == str(root / DATASET_FILE) and "not readable JSON" in p.problem
    (root / DATASET_FILE).unlink()
    [p] = validate_dataset(root).problems
    assert p.problem.startswith("missing")


def test_dataset_json_entries_must_match_the_files(tmp_path: Path) -> None:
    root = build(tmp_path, visit(1, T0))

    def change(m: dict) -> None:
        m["shards"][0]["rows"] += 1
        m["split"]["valid"].append("log/part-00009.parquet")
        m["slots"] = "sparse"
        m["aspects"] = ["click", "clicks"]

    edit_meta(root, change)
    p = the_problem(validate_dataset(root), "split")
    assert p.problem == "valid lists log/part-00009.parquet, which is not in shards"
    edit_meta(root, lambda m: m["split"]["valid"].pop())
    r = validate_dataset(root)
    assert "6 rows, but dataset.json says 7" in str(the_problem(r, None))
    assert the_problem(r, "slots").value == "sparse"
    assert the_problem(r, "aspects").value == ["click", "clicks"]


# ------------------------------------------------------------------------------------------
# Aspects a log does not have
# ------------------------------------------------------------------------------------------


def test_absent_aspects_are_null_and_declared(tmp_path: Path) -> None:
    absent = tuple(a for a in FEEDBACK if a != "click")
    root = build(tmp_path, visit(1, T0), meta={"aspects": ["click"]}, absent=absent)
    assert validate_dataset(root).ok
    edit_meta(root, lambda m: m.pop("aspects"))  # then every aspect must be there
    p = [q for q in validate_dataset(root).problems if q.column == "like"][0]
    assert (p.row, p.problem) == (0, "must be set exactly on impressions")
    full = build(tmp_path, visit(1, T0), meta={"aspects": ["click"]}, name="full")
    p = [q for q in validate_dataset(full).problems if q.column == "like"][0]
    assert (p.row, p.value) == (0, 0) and "declares this aspect absent" in p.problem


# ------------------------------------------------------------------------------------------
# The commands
# ------------------------------------------------------------------------------------------


def test_cli_validate_prints_one_line_per_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = build(tmp_path, interleaved())
    rewrite(root / "items.parquet", lambda t: t.drop_columns(["tag"]))
    assert cli.main(["validate", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert any(f"{root / 'items.parquet'}: column 'tag': missing" in x for x in err)
    assert any(f"{shard(root, 0)}: column 'session_id': row 4: value 1:" in x for x in err)


def test_cli_validate_summary_and_share_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = build(tmp_path, visit(1, T0))
    rewrite(root / "users.parquet", lambda t: t.slice(1))  # user 1: 6 of 18 rows
    assert cli.main(["validate", str(root)]) == 2
    assert "column 'user_id'" in capsys.readouterr().err
    assert cli.main(["validate", "--max-missing-share", "0.5", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "18 rows" in out and "users 33.33% (e.g. 1)" in out
    assert cli.main(["validate", "--max-missing-share", "2", str(root)]) == 2


def test_drl_train_refuses_a_bad_dataset_in_one_line_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fault: an items table without `tag` passed `ranker validate`, and drl-train
    # then failed with a KeyError traceback and exit 1.
    root = build(tmp_path, visit(1, T0))
    rewrite(root / "items.parquet", lambda t: t.drop_columns(["tag"]))
    out = tmp_path / "run"
    assert cli.main(["drl-train", "--data", str(root), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "items.parquet: column 'tag': missing" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("trainer", ["mmrf", "ltr"])
def test_other_trainers_refuse_a_bad_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trainer: str
) -> None:
    if trainer == "mmrf":
        from training.mmrf.train import main

        extra = ["--no-progress"]
    else:
        from training.baselines.ltr import main

        extra = []
    root = build(tmp_path, visit(1, T0))
    retype(shard(root, 2), {"arm": pa.large_string()})
    assert main(["--data", str(root), "--out", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err
    assert str(shard(root, 2)) in err and "column 'arm'" in err
    assert not (tmp_path / "run").exists()


def test_check_dataset_raises_one_line_with_the_count(tmp_path: Path) -> None:
    root = build(tmp_path, interleaved())
    rewrite(root / "items.parquet", lambda t: t.drop_columns(["tag"]))
    with pytest.raises(DatasetValidationError) as e:
        check_dataset(root)
    msg = str(e.value)
    assert "\n" not in msg and "(and 1 more: `ranker validate" in msg
    assert Dataset.open(root)  # the folder itself opens: only validation refuses it


def test_a_report_refuses_a_reused_dataset_that_was_edited(tmp_path: Path) -> None:
    from training.harness.data import ensure_dataset
    from training.sim.config import preset

    cfg = preset("tiny").with_overrides({"n_users": 30, "n_days": 3})
    path = tmp_path / "world"
    ensure_dataset(path, cfg, "tiny", False, lambda _: None)  # generated
    ensure_dataset(path, cfg, "tiny", False, lambda _: None)  # reused, checked
    rewrite(path / "items.parquet", lambda t: t.drop_columns(["tag"]))
    with pytest.raises(DatasetValidationError, match=r"items.parquet: column 'tag': missing"):
        ensure_dataset(path, cfg, "tiny", False, lambda _: None)
