"""`ranker import`: a log of another layout, through a mapping file, into the dataset layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from contract.schema import FEEDBACK
from training.cli import main
from training.data.columns import check_slots, sessions, stable_id, timestamps_ms
from training.data.importer import import_log
from training.data.mapping import load_mapping
from training.data.pipeline import Dataset
from training.sim.config import ConfigError

FIXTURE = Path(__file__).resolve().parents[2] / "examples" / "bandit_log"
T0 = 1_709_510_400  # 2024-03-04T00:00:00Z in seconds


# --------------------------------------------------------------------------------------------
# pure checks


def test_timestamps_in_each_unit_become_epoch_ms():
    for unit, raw in (("s", T0 + 1), ("ms", (T0 + 1) * 1000), ("us", (T0 + 1) * 10**6),
                      ("ns", (T0 + 1) * 10**9)):  # fmt: skip
        assert timestamps_ms(pd.Series([raw]), unit, "f", "ts").tolist() == [(T0 + 1) * 1000]
    iso = pd.Series(["2024-03-04T00:00:01Z", "2024-03-04 01:00:00+01:00"])
    assert timestamps_ms(iso, "iso", "f", "ts").tolist() == [(T0 + 1) * 1000, T0 * 1000]


def test_timestamps_implausible_for_the_stated_unit_are_refused_with_a_sample():
    # seconds declared as milliseconds read as 1970-01-20
    with pytest.raises(ValueError, match=r"'ts'.*1709510400.*1970-01-20.*check the unit"):
        timestamps_ms(pd.Series([T0, T0 + 5]), "ms", "log.csv", "ts")
    with pytest.raises(ValueError, match=r"'ts'.*outside 2000-2100"):
        timestamps_ms(pd.Series([T0 * 1000]), "s", "log.csv", "ts")
    with pytest.raises(ValueError, match="not ISO 8601.*'yesterday'"):
        timestamps_ms(pd.Series(["2024-03-04T00:00:00Z", "yesterday"]), "iso", "f", "ts")
    with pytest.raises(ValueError, match="values are numbers"):
        timestamps_ms(pd.Series([T0]), "iso", "f", "ts")
    with pytest.raises(ValueError, match="row 1: missing timestamp"):
        timestamps_ms(pd.Series([T0, None]), "s", "f", "ts")


def test_slots_contiguous_is_checked_and_a_repeat_always_refused():
    req = np.array([1, 1, 2, 3, 3])
    check_slots(req, np.array([0, 1, 0, 0, 1]), "contiguous", "f", "pos")
    gap = np.array([0, 1, 0, 0, 2])  # request 3 skips slot 1
    with pytest.raises(ValueError, match='request 3.*position 2.*slots = "as_logged"'):
        check_slots(req, gap, "contiguous", "f", "pos")
    check_slots(req, gap, "as_logged", "f", "pos")
    check_slots(np.array([7]), np.array([2]), "as_logged", "f", "pos")  # one impression at 2
    with pytest.raises(ValueError, match="request 3: position 1 logged twice"):
        check_slots(req, np.array([0, 1, 0, 1, 1]), "as_logged", "f", "pos")


def test_slot_errors_quote_positions_as_logged():
    """A log with position_base 1 whose request shows only slot 2 was told "position 1 where
    the next free slot is 0": the 0-based internal positions."""
    with pytest.raises(ValueError, match=r"position 2 where the next free slot is 1, as logged "
                       r"with position_base 1"):  # fmt: skip
        check_slots(np.array([5]), np.array([1]), "contiguous", "f", "slot", base=1)
    with pytest.raises(ValueError, match="request 5: position 3 logged twice"):
        check_slots(np.array([5, 5]), np.array([2, 2]), "as_logged", "f", "slot", base=1)


def test_sessions_cut_at_a_new_user_a_pause_and_midnight():
    ms = 60_000
    day = 86_400_000
    user = np.array([1, 1, 1, 1, 2])
    t = np.array([0, 10 * ms, 45 * ms, day + 46 * ms, 50 * ms]) + day - 60 * ms
    # 1: 23:00, 23:10 (same), 23:45 (35 min pause: new), next day 00:46 (new), user 2: new
    assert sessions(user, t, gap_ms=30 * ms).tolist() == [0, 0, 1, 2, 3]
    assert sessions(user[:2], np.array([day - ms, day + ms]), 30 * ms).tolist() == [0, 1]


def test_text_ids_map_to_stable_non_negative_int64():
    a = stable_id(np.array(["v0001", "v0002", "v0001"], dtype=object))
    assert a[0] == a[2] != a[1] and (a >= 0).all() and a.dtype == np.int64
    # blake2b-8 of "v0001", top bit cleared: the same on every machine and run
    assert int(a[0]) == int.from_bytes(
        __import__("hashlib").blake2b(b"v0001", digest_size=8).digest(), "little") >> 1
    # one string gives one int, what a client sends to the service for that text id
    assert stable_id("v0001") == int(a[0]) and isinstance(stable_id("v0001"), int)
    assert stable_id(["v0002"]).tolist() == [int(a[1])]


# --------------------------------------------------------------------------------------------
# a small log written by the test


def _write_small(tmp: Path, **log_over) -> Path:
    """A 4-day log with a session column, numeric ids, ms timestamps, watch time in ms,
    conditional propensities and contiguous slots; users and items as CSV."""
    rows = []
    rid = 100
    for day in range(4):
        for user in (1, 2, 3):
            for r in range(2):
                t = (T0 + day * 86400 + user * 600 + r * 60) * 1000
                for k in range(2):
                    item = 10 + (user + r + k + day) % 6
                    rows.append(dict(rq=rid, sess=user * 100 + day, uid=user, iid=item, ts=t + k,
                                     pos=k, p=0.5, clk=int((item + user) % 2 == 0),
                                     dwell=1500 * k))  # fmt: skip
                rid += 1
    log = pd.DataFrame(rows)
    for col, values in log_over.items():
        log[col] = values
    log.to_csv(tmp / "log.csv", index=False)
    pd.DataFrame({"uid": [1, 2, 3], "age": [20, 30, 40], "country": ["fr", "de", "fr"]}).to_csv(
        tmp / "users.csv", index=False)  # fmt: skip
    pd.DataFrame({"iid": range(10, 16), "topic": ["a", "b", "a", "c", "b", "a"],
                  "maker": [5, 5, 6, 7, 7, 8]}).to_csv(tmp / "items.csv", index=False)  # fmt: skip
    mapping = {
        "log": {
            "files": "log.csv", "request_id": "rq", "session_id": "sess", "user_id": "uid",
            "item_id": "iid", "timestamp": "ts", "timestamp_unit": "ms", "position": "pos",
            "propensity": "p", "propensity_kind": "conditional", "watch_time_unit": "ms",
            "aspects": {"click": "clk", "watch_time": "dwell"},
        },
        "users": {"file": "users.csv", "id": "uid", "fields": [
            {"name": "age", "kind": "bucket", "edges": [25, 35]},
            {"name": "country", "kind": "category"},
        ]},
        "items": {"file": "items.csv", "id": "iid", "tag": "topic", "author": "maker", "fields": [
            {"name": "topic", "kind": "category", "min_count": 2},
            {"name": "maker", "kind": "hash", "size": 101},
        ]},
    }  # fmt: skip
    path = tmp / "mapping.json"
    path.write_text(json.dumps(mapping))
    return path


def test_small_log_imports_with_its_declared_keys_and_null_absent_aspects(tmp_path):
    mapping = _write_small(tmp_path)
    rep = import_log(mapping, tmp_path / "ds", progress=False)
    ds = Dataset.open(tmp_path / "ds")
    m = ds.meta
    assert (m["slots"], m["aspects"], m["propensity"]) == ("contiguous", ["click", "watch_time"],
                                                           "conditional")  # fmt: skip
    assert m["list_size"] == 2 and len(m["split"]["train"]) == 2
    assert m["counts"] == {"rows": 48, "impressions": 48, "sessions": 12}
    t = ds.read()
    for a in FEEDBACK:
        nulls = t.column(a).null_count
        assert nulls == (0 if a in ("click", "watch_time") else t.num_rows), a
    # watch time converted from ms; sessions in time order, request_index within the session
    assert sorted(set(t.column("watch_time").to_pylist())) == [0.0, 1.5]
    first = t.slice(0, 4).to_pydict()
    assert first["request_index"] == [0, 0, 1, 1] and first["position"] == [0, 1, 0, 1]
    # a request's rows carry its earliest timestamp (the log had +1 ms on the second row)
    assert first["timestamp"][:2] == [(T0 + 600) * 1000, (T0 + 600) * 1000]
    # the spec: declared fields with vocabularies and edges from the data; items' tag ids
    spec = ds.spec
    assert spec.field("country").vocab == ("de", "fr") and spec.field("age").edges == (25, 35)
    assert spec.field("topic").vocab == ("a", "b")  # "c" seen once < min_count 2
    assert spec.field("tag").size == 4 and spec.field("maker").size == 101
    items = pq.read_table(tmp_path / "ds" / "items.parquet").to_pydict()
    assert items["tag"] == [1, 2, 1, 3, 2, 1] and items["author_raw"] == [5, 5, 6, 7, 7, 8]
    # counted, never clipped: the item topic "c" is outside the vocabulary
    assert rep["items"]["unknown_values"] == {"topic": 1, "maker": 0}
    assert json.loads((tmp_path / "ds" / "import.json").read_text())["rows"] == 48


def test_log_ids_missing_from_a_side_table_are_counted(tmp_path):
    mapping = _write_small(tmp_path)
    items = pd.read_csv(tmp_path / "items.csv")
    items[items.iid != 15].to_csv(tmp_path / "items.csv", index=False)
    rep = import_log(mapping, tmp_path / "ds", progress=False)
    assert rep["items"]["log_items_missing"] == 1
    assert rep["items"]["log_items_missing_examples"] == [15]


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m["log"].update(timestamp_unit="s"), r"'ts'.*implausible.*'s'"),
        (lambda m: m["log"].update(propensity_kind="sometimes"), "propensity_kind.*'sometimes'"),
        (lambda m: m["log"].pop("propensity"), "log.propensity: missing"),
        (lambda m: m["log"].update(item_id="item"), r"columns \['item'\].*missing"),
        (lambda m: m["log"].update(colour="red"), r"log: unknown keys \['colour'\]"),
        (lambda m: m["log"]["aspects"].update(share="x"), r"unknown aspects \['share'\]"),
        (lambda m: m["log"].update(position_base=1), "positions must be integers >= "
         "position_base 1"),
        (lambda m: m["users"]["fields"].append({"name": "hour", "kind": "category"}),
         "'hour' is taken"),
        (lambda m: m["items"]["fields"].append({"name": "n", "kind": "bucket"}),
         "exactly one of edges, n_buckets"),
        (lambda m: m.update(split={"valid_days": 2, "test_days": 2}), "spans 4 UTC day"),
    ],
)  # fmt: skip
def test_bad_mappings_and_inputs_are_one_line_errors_with_exit_2_and_no_folder(
    tmp_path, capsys, edit, match
):
    path = _write_small(tmp_path)
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    out = tmp_path / "ds"
    assert main(["import", "--mapping", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ranker import: error: ") and "\n" not in err
    assert __import__("re").search(match, err), err
    assert not out.exists() and not list(tmp_path.glob("ds.partial-*"))


def test_bad_values_in_the_log_are_refused_naming_file_column_and_sample(tmp_path):
    n = 48
    for over, match in (
        ({"clk": [2] + [0] * (n - 1)}, r"log.csv: column 'clk': values not in \{0, 1\}: 2"),
        ({"p": [0.0] + [0.5] * (n - 1)}, r"column 'p': .*propensity"),
        ({"pos": [0, 0] + [0, 1] * 23}, "position 0 logged twice"),
        ({"uid": [1, 2] + [1] * (n - 2)}, "request 100 has rows of more than one user"),
    ):
        path = _write_small(tmp_path, **over)
        with pytest.raises(ValueError, match=match):
            import_log(path, tmp_path / "ds", progress=False)
        assert not (tmp_path / "ds").exists()


def test_existing_out_is_refused_unless_overwrite(tmp_path, capsys):
    path = _write_small(tmp_path)
    out = tmp_path / "ds"
    args = ["import", "--mapping", str(path), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_mapping_file_in_toml_reads_like_json(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "fx")
    m = load_mapping(tmp_path / "fx" / "mapping.toml")
    assert m.slots == "as_logged" and m.propensity_kind == "marginal" and m.position_base == 1
    assert list(m.aspects) == ["click"] and m.users.fields[2].n_buckets == 6
    bad = tmp_path / "fx" / "bad.toml"
    bad.write_text('[log]\nfiles = "nope.csv"\n')
    with pytest.raises(FileNotFoundError, match="'nope.csv' matches no file"):
        load_mapping(bad)
    bad.write_text("[log\n")
    with pytest.raises(ConfigError, match="not a readable mapping file"):
        load_mapping(bad)


# --------------------------------------------------------------------------------------------
# the committed fixture


def test_fixture_imports_with_positions_as_logged_and_clicks_only(tmp_path, capsys):
    out = tmp_path / "bandit"
    assert main(["import", "--mapping", str(FIXTURE / "mapping.toml"), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "absent, written as null: like, follow, comment, hate, long_view, watch_time" in printed
    ds = Dataset.open(out)
    assert (ds.meta["slots"], ds.meta["aspects"], ds.meta["propensity"]) == (
        "as_logged", ["click"], "marginal")  # fmt: skip
    t = ds.read().to_pandas()
    src = pq.read_table(FIXTURE / "impressions.parquet").to_pandas()
    assert len(t) == len(src) and t["like"].isna().all() and t["click"].notna().all()
    # positions as logged (1-based in the file): a request showing only its third slot stays so
    per_req = src.groupby("req")["slot"].agg(list)
    lone = per_req[per_req.map(lambda s: s == [3])].index[0]
    assert t.loc[t.request_id == lone, "position"].tolist() == [2]
    # propensities unchanged, request by request
    a = t.set_index(["request_id", "position"])["propensity"].sort_index()
    b = src.assign(position=src.slot - 1).set_index(["req", "position"])["pscore"].sort_index()
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    assert ds.spec.field("region").vocab == ("centre", "east", "islands", "north", "south", "west")


def test_fixture_generator_is_reproducible():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mk", FIXTURE / "make_fixture.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    log, users, items = mk.make(np.random.default_rng(mk.SEED))
    committed = pq.read_table(FIXTURE / "impressions.parquet").to_pandas()
    pd.testing.assert_frame_equal(log, committed, check_dtype=False)
    pd.testing.assert_frame_equal(users, pd.read_csv(FIXTURE / "users.csv"), check_dtype=False)


def test_side_tables_without_declared_fields_tag_or_author(tmp_path):
    path = _write_small(tmp_path)
    m = json.loads(path.read_text())
    m["items"] = {"file": "items.csv", "id": "iid"}
    path.write_text(json.dumps(m))
    rep = import_log(path, tmp_path / "ds", progress=False)
    ds = Dataset.open(tmp_path / "ds")
    assert ds.spec.names("item") == ["item_id"] and rep["items"]["unknown_values"] == {}
    items = pq.read_table(tmp_path / "ds" / "items.parquet").to_pydict()
    assert set(items["tag"]) == {0} and set(items["author_raw"]) == {-1}
    from training.data.validate import validate_dataset

    assert validate_dataset(tmp_path / "ds").ok


def test_info_shows_what_an_imported_log_declares(tmp_path, capsys):
    path = _write_small(tmp_path)
    import_log(path, tmp_path / "ds", progress=False)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "ds")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["slots"], info["aspects"], info["propensity"]) == (
        "contiguous", "click, watch_time", "conditional")  # fmt: skip
    assert info["fields"].startswith("user_id, age, country, hour, req_index, item_id, author_id")


def test_labels_of_an_absent_aspect_are_refused_not_read_as_zeros(tmp_path):
    from training.data.features import SideTables, build_requests

    import_log(_write_small(tmp_path), tmp_path / "ds", progress=False)
    ds = Dataset.open(tmp_path / "ds")
    req = build_requests(ds.read("train"), SideTables.from_tables(ds.users(), ds.items(), ds.spec))
    assert req.aspects == ("click", "watch_time")
    assert req.label("click").shape == (req.n_impressions,)
    with pytest.raises(ValueError, match="aspect 'like' is absent from this log"):
        req.label("like")
