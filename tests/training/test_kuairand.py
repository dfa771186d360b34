"""The KuaiRand adapter: sessions, requests, positions, feedback, side tables, errors.

Fixture (tests/fixtures/kuairand/, list_size 10, gap 30 min), hand-counted:

    day 0 (20220408)
      user 101  12 standard rows 10:00..10:11 (1/min)   1 session, 2 requests (10 + 2)
      user 102  3 rows 09:00..09:02, 3 rows 10:00..10:02  58 min gap: 2 sessions of 1 request
    day 1 (20220409)
      user 101  4 rows 20:00..20:03                       1 session, 1 request
      user 103  std 08:00, 08:01, 08:02 | random 08:02:30 | std 08:03, 08:04, 08:34
                (08:04 -> 08:34 is exactly 30 min: no cut) 1 session, 3 requests (3, 1, 3)
    day 2 (20220410)
      user 102  videos 5, 6, 5, 7, 8 at 12:00..12:04     repeat of 5: 2 requests (2, 3)
      user 103  2 rows 15:00, 15:01                       1 session, 1 request
      user 101  1 random row 18:00                        1 session, 1 request
    day 3 (20220411)
      user 101  3 rows 07:00..07:02; user 103 2 random rows 11:00, 11:00:40;
      user 102  2 rows 22:00, 22:01                       3 sessions of 1 request

    total: 44 rows (40 standard + 4 random), 11 sessions, 15 requests;
    per day rows 18 / 11 / 8 / 7, sessions 3 / 2 / 3 / 3.

Sessions are numbered in (date, start time, user) order: day 0 is 0 = 102@09:00,
1 = 101@10:00, 2 = 102@10:00 (the 10:00 tie goes to the smaller user id); day 1 is
3 = 103@08:00, 4 = 101@20:00; day 2 is 5 = 102, 6 = 103, 7 = 101; day 3 is 8 = 101,
9 = 103, 10 = 102.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from contract.schema import LogValidationError, validate_log_file, validate_log_table
from training.cli import main
from training.data.kuairand import (
    ARM_RANDOM,
    ARM_STANDARD,
    MAX_REQUESTS_PER_SESSION,
    MODEL_VERSION,
    convert_day,
    convert_kuairand,
    items_table,
    read_users,
    read_videos,
)
from training.data.pipeline import Dataset, DatasetError
from training.sim.config import DEFAULT_KUAIRAND_DIR

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "kuairand"
STANDARD = FIX / "log_standard_fixture.csv"
RANDOM = FIX / "log_random_fixture.csv"
USERS = FIX / "user_features_fixture.csv"
VIDEOS = FIX / "video_features_fixture.csv"
REAL = Path(DEFAULT_KUAIRAND_DIR)


def convert(tmp_path: Path, logs=None, name: str = "kr", **kw) -> tuple[dict, Dataset]:
    logs = [str(STANDARD), str(RANDOM)] if logs is None else logs
    kw.setdefault("progress", False)
    meta = convert_kuairand(logs, str(USERS), str(VIDEOS), str(tmp_path / name), **kw)
    return meta, Dataset.open(tmp_path / name)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[dict, Dataset, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("kuairand")
    meta, ds = convert(tmp)
    return meta, ds, ds.read().to_pandas()


def test_counts(converted):
    meta, _, df = converted
    assert meta["source"] == "kuairand"
    assert meta["counts"] == {"rows": 44, "impressions": 44, "sessions": 11}
    assert df.request_id.nunique() == 15
    assert df.session_id.nunique() == 11
    assert meta["dates"] == [20220408, 20220409, 20220410, 20220411]
    assert [s["rows"] for s in meta["shards"]] == [18, 11, 8, 7]
    assert [s["sessions"] for s in meta["shards"]] == [3, 2, 3, 3]
    assert meta["random_rows"] == 4
    assert meta["list_size"] == 10 and meta["session_gap_minutes"] == 30.0
    assert len(meta["logs"]) == 2
    assert meta["log_users_without_profile"] == 0 and meta["log_items_without_features"] == 0
    assert (df.position >= 0).all()  # every KuaiRand row is an impression
    names = sorted(p.name for p in converted[1].root.iterdir())
    assert names == ["dataset.json", "items.parquet", "log", "users.parquet"]  # no spill left


def test_output_validates(converted):
    _, ds, _ = converted
    assert sum(validate_log_file(p) for p in ds.paths()) == 44
    assert main(["validate", str(ds.root)]) == 0


def test_session_ids_requests_and_positions(converted):
    _, _, df = converted
    # Rows are grouped by session, session ids 0..10 ascending, positions 0.. within requests.
    assert df.session_id.tolist() == sorted(df.session_id.tolist())
    assert df.session_id.unique().tolist() == list(range(11))
    owners = df.groupby("session_id").user_id.first().tolist()
    assert owners == [102, 101, 102, 103, 101, 102, 103, 101, 101, 103, 102]
    assert (df.request_id == df.session_id * MAX_REQUESTS_PER_SESSION + df.request_index).all()
    for _, g in df.groupby("request_id"):
        assert g.position.tolist() == list(range(len(g)))
        assert (np.diff(g.timestamp.to_numpy()) >= 0).all()
        assert g.item_id.is_unique
        assert g.arm.nunique() == 1  # never mixes the two logs
    sizes = df.groupby("session_id").request_id.apply(lambda s: s.value_counts(sort=False).tolist())
    # user 101 day 0: 12 rows -> 10 + 2
    assert sizes[1] == [10, 2]
    # user 103 day 1: standard 3 | random 1 | standard 3 (08:34 stays: the gap is exactly 30 min)
    assert sizes[3] == [3, 1, 3]
    assert (
        df[df.session_id == 3].arm.tolist()
        == [ARM_STANDARD] * 3 + [ARM_RANDOM] + [ARM_STANDARD] * 3
    )
    # user 102 day 2: videos 5, 6, 5, 7, 8 -> the repeat of 5 starts a new request
    assert sizes[5] == [2, 3]
    assert df[df.session_id == 5].item_id.tolist() == [5, 6, 5, 7, 8]
    assert df[df.session_id == 5].request_index.tolist() == [0, 0, 1, 1, 1]


def test_gap_splitting(converted, tmp_path):
    _, _, df = converted
    u102_day0 = df[(df.user_id == 102) & (df.session_id < 3)]
    assert u102_day0.session_id.nunique() == 2  # 58 min gap > 30
    # A 60-minute gap joins them: day 0 then has 2 sessions (101 and 102) and 102's six rows
    # form one request; 11 - 1 = 10 sessions in all.
    meta, ds = convert(tmp_path, session_gap_minutes=60)
    d = ds.read().to_pandas()
    assert meta["counts"]["sessions"] == 10
    s = d[(d.user_id == 102) & (d.session_id < 2)]
    assert s.session_id.nunique() == 1 and s.request_id.nunique() == 1
    assert s.position.tolist() == list(range(6))
    # A 0.75-minute gap cuts every one-minute step: user 101's 12 rows of day 0 are 12 sessions.
    meta, ds = convert(tmp_path, name="kr2", session_gap_minutes=0.75)
    d = ds.read().to_pandas()
    day0 = d[d.timestamp < 1649433600000]  # 2022-04-09 00:00 +08:00
    assert day0[day0.user_id == 101].session_id.nunique() == 12


def test_list_size_grouping(tmp_path):
    meta, ds = convert(tmp_path, list_size=5)
    df = ds.read().to_pandas()
    s = df[(df.user_id == 101) & (df.session_id == 1)]
    assert s.groupby("request_id").size().tolist() == [5, 5, 2]
    assert s.position.tolist() == [0, 1, 2, 3, 4] * 2 + [0, 1]
    assert s.request_index.tolist() == [0] * 5 + [1] * 5 + [2] * 2
    # Only that session grows (one more request); sessions are unchanged.
    assert df.request_id.nunique() == 16 and meta["counts"]["sessions"] == 11


def test_feedback_mapping(converted):
    _, _, df = converted
    raw = pd.concat([pd.read_csv(STANDARD), pd.read_csv(RANDOM)]).add_prefix("raw_")
    keys = ["user_id", "item_id", "timestamp"]
    m = df.merge(raw, left_on=keys, right_on=["raw_user_id", "raw_video_id", "raw_time_ms"])
    assert len(m) == 44
    pairs = {"is_click": "click", "is_like": "like", "is_follow": "follow"}
    pairs |= {"is_comment": "comment", "is_hate": "hate", "long_view": "long_view"}
    for src, dst in pairs.items():
        assert (m["raw_" + src] == m[dst]).all(), dst
        assert df[dst].dtype == np.int8
    assert (m.arm == np.where(m.raw_is_rand == 1, ARM_RANDOM, ARM_STANDARD)).all()
    assert (df.model_version == MODEL_VERSION).all()
    # Propensity: the 1.0 placeholder ("unknown") on every row; the meta says not to use it.
    assert (df.propensity == 1.0).all()
    assert converted[0]["propensity"] == "unknown" and "NCIS" in converted[0]["propensity_note"]
    # The fixture has a like, a follow, a comment and a hate in user 101's day-0 session.
    s = df[df.session_id == 1]
    assert s.like.tolist()[3] == 1 and s.follow.tolist()[5] == 1
    assert s.comment.tolist()[7] == 1 and s.hate.tolist()[10] == 1


def test_watch_time_seconds(converted):
    _, _, df = converted
    assert df.watch_time.dtype == np.float32
    s = df[df.session_id == 1]  # play_time_ms = (k + 1) * 1500
    np.testing.assert_allclose(s.watch_time, (np.arange(12) + 1) * 1.5, rtol=1e-6)
    np.testing.assert_allclose(df[df.session_id == 5].watch_time, 12.345, rtol=1e-6)
    assert (df[df.session_id == 10].watch_time == 0).all()


def test_chronological_split(converted):
    meta, ds, _ = converted
    assert meta["split"] == {
        "train": ["log/part-00000.parquet", "log/part-00001.parquet"],
        "valid": ["log/part-00002.parquet"],
        "test": ["log/part-00003.parquet"],
    }
    assert [s["day"] for s in meta["shards"]] == [0, 1, 2, 3]
    assert ds.read("train").num_rows == 29
    assert ds.read("valid").num_rows == 8
    assert ds.read("test").num_rows == 7
    # Days are in time order: every train row precedes every valid row, and so on.
    tr, va, te = (ds.read(s).column("timestamp").to_numpy() for s in ("train", "valid", "test"))
    assert tr.max() < va.min() and va.max() < te.min()


def test_split_days_arguments(tmp_path):
    meta, _ = convert(tmp_path, valid_days=2, test_days=1)
    assert len(meta["split"]["train"]) == 1 and len(meta["split"]["valid"]) == 2
    with pytest.raises(DatasetError, match="days"):
        convert(tmp_path, name="kr2", valid_days=2, test_days=2)
    assert not (tmp_path / "kr2").exists()


def test_chunking_and_row_order_do_not_matter(converted, tmp_path):
    _, _, ref = converted
    # Tiny chunks, a shuffled copy of the standard log, files in the other order.
    shuffled = tmp_path / "log_standard_shuffled.csv"
    pd.read_csv(STANDARD).sample(frac=1.0, random_state=3).to_csv(shuffled, index=False)
    _, ds = convert(tmp_path, logs=[str(RANDOM), str(shuffled)], chunk_rows=7, shard_rows=5)
    df = ds.read().to_pandas()
    pd.testing.assert_frame_equal(df, ref)


def test_glob_patterns(tmp_path):
    meta, _ = convert(tmp_path, logs=[str(FIX / "log_*_fixture.csv"), str(STANDARD)])
    assert meta["counts"]["rows"] == 44  # a file matched twice is read once
    with pytest.raises(FileNotFoundError, match="nope_"):
        convert(tmp_path, name="kr2", logs=[str(FIX / "nope_*.csv")])
    assert not (tmp_path / "kr2").exists()


def test_session_request_cap(tmp_path):
    # 1001 rows one second apart for one user, list_size 1: 1001 requests -> 1000 + 1.
    path = tmp_path / "log_long.csv"
    raw = pd.read_csv(STANDARD).iloc[:1]
    long = raw.loc[raw.index.repeat(1001)].reset_index(drop=True)
    long["time_ms"] = long.time_ms + np.arange(1001) * 1000
    long["video_id"] = np.arange(1001) % 12
    other_days = pd.read_csv(STANDARD)
    pd.concat([long, other_days[other_days.date > 20220408]]).to_csv(path, index=False)
    _, ds = convert(tmp_path, logs=[str(path)], list_size=1)
    day0 = ds.read("train").to_pandas()
    day0 = day0[day0.timestamp < 1649433600000]
    assert day0.session_id.nunique() == 2
    assert day0.groupby("session_id").size().tolist() == [1000, 1]
    assert day0.request_index.max() == MAX_REQUESTS_PER_SESSION - 1
    assert day0.request_id.is_unique
    assert all(validate_log_file(p) for p in ds.paths())


def _reference(rows: list[tuple], gap_ms: float, list_size: int) -> dict[tuple, tuple]:
    """Plain-Python sessions/requests: row (user, t, rand, video) -> (session, index, pos)."""
    rows = sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3]))
    sessions: list[list[list[tuple]]] = []  # session -> requests -> rows
    prev = None
    for r in rows:
        if prev is None or r[0] != prev[0] or r[1] - prev[1] > gap_ms:
            sessions.append([[r]])
        else:
            req = sessions[-1][-1]
            if r[2] != req[-1][2] or len(req) == list_size or r[3] in {x[3] for x in req}:
                sessions[-1].append([r])
            else:
                req.append(r)
        prev = r
    order = sorted(range(len(sessions)), key=lambda i: (sessions[i][0][0][1], sessions[i][0][0][0]))
    out = {}
    for sid, i in enumerate(order):
        for k, req in enumerate(sessions[i]):
            for pos, r in enumerate(req):
                out[r] = (sid, k, pos)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_convert_day_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = 400
    user = rng.integers(0, 6, n)
    t = np.zeros(n, dtype=np.int64)
    for u in np.unique(user):  # distinct times per user; 1 to 40 minute steps
        m = user == u
        t[m] = np.cumsum(rng.integers(1, 40, m.sum()) * 60_000) + rng.integers(0, 10**6)
    day = pa.table(
        {
            "user_id": user.astype(np.int64),
            "video_id": rng.integers(0, 8, n).astype(np.int64),  # many repeats
            "date": np.full(n, 20220408, dtype=np.int32),
            "time_ms": t,
            "click": rng.integers(0, 2, n).astype(np.int8),
            "like": np.zeros(n, np.int8),
            "follow": np.zeros(n, np.int8),
            "comment": np.zeros(n, np.int8),
            "hate": np.zeros(n, np.int8),
            "long_view": np.zeros(n, np.int8),
            "is_rand": (rng.random(n) < 0.3).astype(np.int8),
            "watch_time": rng.random(n).astype(np.float32),
        }
    )
    list_size = int(rng.integers(1, 6))
    table, n_sessions = convert_day(day.take(rng.permutation(n)), 30.0, list_size, 7)
    validate_log_table(table)
    ref = _reference(
        list(zip(user.tolist(), t.tolist(), day.column("is_rand").to_pylist(),
                 day.column("video_id").to_pylist(), strict=True)),
        30 * 60_000,
        list_size,
    )  # fmt: skip
    d = table.to_pydict()
    got = {
        (u, ts, int(a == ARM_RANDOM), v): (s - 7, k, p)
        for u, ts, a, v, s, k, p in zip(
            d["user_id"], d["timestamp"], d["arm"], d["item_id"], d["session_id"],
            d["request_index"], d["position"], strict=True,
        )
    }  # fmt: skip
    assert got == ref
    assert n_sessions == len({s for s, _, _ in ref.values()})
    assert d["session_id"] == sorted(d["session_id"])


# ---- side tables ---------------------------------------------------------------------


def test_side_tables_from_fixture(converted):
    _, ds, _ = converted
    users = ds.users().to_pandas().set_index("user_id")
    assert users.index.tolist() == [101, 102, 103, 104]
    # follow ranges sorted: "(10,50]", "(100,150]", "0", "500+" -> ids 1..4
    assert users.u_follow.tolist() == [4, 1, 3, 2]
    assert users.loc[103, "u_active"] == 1  # UNKNOWN
    assert users.loc[103, "u_register"] == 9  # "0-7" is not in the simulator's map
    assert users.loc[101, "u_seg_a"] == 2 and users.loc[101, "u_seg_b"] == 30
    assert users.loc[103, "u_seg_a"] == 7 and users.loc[103, "u_seg_b"] == 50
    items = ds.items().to_pandas().set_index("item_id")
    assert items.loc[2, "tag"] == 20  # "20,43" -> first tag
    assert items.loc[5, "tag"] == 0  # no tag
    assert items.loc[5, "upload_type"] == 6  # UNKNOWN
    assert items.loc[0, "upload_type"] == 1  # LongImport
    assert items.loc[4, "music_type"] == 0  # missing
    assert items.loc[0, "duration_s"] == pytest.approx(87.433)
    # video 10 has no duration: the median of the others (30 s)
    others = [87.433, 218.066, 12.5, 6.8, 45, 30, 9, 61, 15, 120, 22]
    assert items.loc[10, "duration_s"] == pytest.approx(np.median(others)) == pytest.approx(30.0)


@pytest.mark.skipif(not REAL.exists(), reason="KuaiRand-Pure tables not available")
def test_user_mapping_matches_simulator_on_real_rows():
    from training.sim.config import preset
    from training.sim.world import build_world

    w = build_world(preset("tiny"))
    sim = w.users_table().to_pandas()
    # Both take the range vocabularies from the whole file, so a sample's ids are the
    # converter's ids of the same users.
    ours = read_users(str(REAL / "user_features_pure.csv")).to_pandas()
    ours = ours[ours.user_id.isin(sim.user_id)].sort_values("user_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, sim.sort_values("user_id").reset_index(drop=True))
    items = w.items_table().to_pandas()
    vids = pd.read_csv(REAL / "video_features_basic_pure.csv", dtype=str, keep_default_na=False)
    vrows = vids[vids.video_id.astype(np.int64).isin(items.item_id)].reset_index(drop=True)
    ours_i = items_table(vrows).to_pandas()
    pd.testing.assert_frame_equal(ours_i, items.reset_index(drop=True))


@pytest.mark.skipif(not REAL.exists(), reason="KuaiRand-Pure tables not available")
def test_whole_real_files_match_a_full_simulator_world():
    # With every user sampled the simulator sees every range value, so the converter's ids
    # for the whole file (what `ranker kuairand` writes) are the simulator's ids.
    from training.sim.config import preset
    from training.sim.world import build_world

    w = build_world(preset("tiny").with_overrides({"n_users": 27285}))
    sim = w.users_table().to_pandas().sort_values("user_id").reset_index(drop=True)
    ours = read_users(str(REAL / "user_features_pure.csv")).to_pandas()
    ours = ours.sort_values("user_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, sim)
    items = (
        read_videos(str(REAL / "video_features_basic_pure.csv")).to_pandas().set_index("item_id")
    )
    sim_i = w.items_table().to_pandas().set_index("item_id")
    # A missing duration is filled with the median of the rows at hand: the whole file here,
    # the simulator's sample there; compare the videos that have a duration.
    raw = pd.read_csv(REAL / "video_features_basic_pure.csv", index_col="video_id")
    has_duration = raw.loc[sim_i.index, "video_duration"].fillna(0).to_numpy() > 0
    assert has_duration.mean() > 0.9
    pd.testing.assert_frame_equal(items.loc[sim_i.index[has_duration]], sim_i[has_duration])


# ---- the CLI and errors -------------------------------------------------------------


def _cli_args(tmp_path: Path, logs: list[str], name: str = "cli") -> list[str]:
    return [
        "kuairand", "--logs", *logs, "--users", str(USERS), "--videos", str(VIDEOS),
        "--out", str(tmp_path / name), "--no-progress",
    ]  # fmt: skip


def test_cli(tmp_path, capsys):
    assert main(_cli_args(tmp_path, [str(FIX / "log_*_fixture.csv")])) == 0
    assert "44 impressions, 11 sessions" in capsys.readouterr().out
    meta = json.loads((tmp_path / "cli" / "dataset.json").read_text())
    assert meta["counts"]["sessions"] == 11
    # Exists without --overwrite: exit 2, the dataset stays.
    assert main(_cli_args(tmp_path, [str(STANDARD), str(RANDOM)])) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*_cli_args(tmp_path, [str(STANDARD)]), "--overwrite", "--list-size", "3"]) == 0
    assert json.loads((tmp_path / "cli" / "dataset.json").read_text())["list_size"] == 3


def _drop_column(src: Path, dst: Path, column: str) -> None:
    df = pd.read_csv(src)
    df.drop(columns=[column]).to_csv(dst, index=False)


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out"))


def test_missing_column(tmp_path, capsys):
    bad = tmp_path / "log_bad.csv"
    _drop_column(STANDARD, bad, "is_click")
    with pytest.raises(LogValidationError, match=r"log_bad\.csv.*'is_click'.*missing"):
        convert(tmp_path, logs=[str(RANDOM), str(bad)], name="out")
    assert main(_cli_args(tmp_path, [str(RANDOM), str(bad)], name="out")) == 2
    err = capsys.readouterr().err
    assert "log_bad.csv" in err and "is_click" in err
    assert _leftovers(tmp_path) == []


def test_missing_side_table_column(tmp_path):
    bad = tmp_path / "users_bad.csv"
    _drop_column(USERS, bad, "fans_user_num_range")
    with pytest.raises(LogValidationError, match=r"users_bad\.csv.*'fans_user_num_range'"):
        convert_kuairand([str(STANDARD)], str(bad), str(VIDEOS), str(tmp_path / "out"))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("is_click", "2", "not in"),
        ("time_ms", "soon", "not a number"),
        ("play_time_ms", "", "missing value"),
        ("is_like", "0.5", "not an integer"),
        ("date", "20221341", "yyyymmdd"),
        ("play_time_ms", "-5", "< 0"),
    ],
)
def test_malformed_value_names_file_column_row(tmp_path, column, value, problem):
    rows = list(csv.reader(STANDARD.open()))
    header = rows[0]
    rows[30][header.index(column)] = value  # data row 30 = line 31 = 0-based row 29
    bad = tmp_path / "log_malformed.csv"
    with bad.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(LogValidationError) as e:
        # A small chunk size: the error is found in a later chunk, after the dataset folder
        # and earlier spills were written; they must be removed.
        convert(tmp_path, logs=[str(bad)], name="out", chunk_rows=8)
    msg = str(e.value)
    assert "log_malformed.csv" in msg and repr(column) in msg and "row 30 (line 31)" in msg
    assert problem in msg
    assert _leftovers(tmp_path) == []


def test_bad_arguments(tmp_path):
    from training.sim.config import ConfigError

    with pytest.raises(ConfigError, match="list_size"):
        convert(tmp_path, list_size=0)
    with pytest.raises(ConfigError, match="session_gap_minutes"):
        convert(tmp_path, session_gap_minutes=0)
    assert not (tmp_path / "kr").exists()


def test_items_table_from_text_frame():
    # Unit check of the side-table helpers on an in-memory frame (no files).
    df = pd.DataFrame(
        {
            "video_id": ["1", "2"], "author_id": ["5", "6"], "video_duration": ["1500.0", ""],
            "upload_type": ["Web", "Odd"], "music_type": ["9.0", ""], "tag": ["3,4", ""],
        }
    )  # fmt: skip
    t = items_table(df)
    assert t.schema.field("duration_s").type == pa.float64()
    assert t.column("duration_s").to_pylist() == [1.5, 1.5]
    assert t.column("upload_type").to_pylist() == [2, 6]
    assert t.column("tag").to_pylist() == [3, 0]
    assert t.column("music_type").to_pylist() == [9, 0]


def _header_only(src: Path, dst: Path, blank_lines: int = 0) -> None:
    dst.write_text(src.read_text().splitlines()[0] + "\n" + "\n" * blank_lines)


@pytest.mark.parametrize("table", ["videos", "users"])
@pytest.mark.parametrize("blank_lines", [0, 3])
def test_empty_side_table_is_refused_naming_the_file(tmp_path, capsys, table, blank_lines):
    # The fault: a header-only videos table converted, and training then failed with an
    # IndexError in the side-table lookup. Header-only or only blank lines: no rows either way.
    src = VIDEOS if table == "videos" else USERS
    bad = tmp_path / f"{table}_empty.csv"
    _header_only(src, bad, blank_lines)
    users, videos = (USERS, bad) if table == "videos" else (bad, VIDEOS)
    with pytest.raises(LogValidationError, match=rf"{table}_empty\.csv: no data rows.*{table}"):
        convert_kuairand([str(STANDARD)], str(users), str(videos), str(tmp_path / "out"),
                         progress=False)  # fmt: skip
    args = ["kuairand", "--logs", str(STANDARD), "--users", str(users), "--videos", str(videos),
            "--out", str(tmp_path / "out_cli"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{table}_empty.csv" in err and "no data rows" in err
    assert _leftovers(tmp_path) == []


def test_side_tables_refuse_empty_tables(converted):
    from training.data.features import SideTables

    _, ds, _ = converted
    users, items = ds.users(), ds.items()
    assert SideTables.from_tables(users, items).n_items == items.num_rows
    with pytest.raises(ValueError, match="the items side table is empty"):
        SideTables.from_tables(users, items.slice(0, 0))
    with pytest.raises(ValueError, match="the users side table is empty"):
        SideTables.from_tables(users.slice(0, 0), items)
