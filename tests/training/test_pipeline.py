"""Tests for training.data.pipeline: atomic dataset building, shards, streaming whole sessions,
the chronological split, sharding across ranks; and the ``ranker validate``/``info`` commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from contract.schema import LOG_SCHEMA, LogValidationError, validate_log_file
from training import cli
from training.data import pipeline
from training.data.pipeline import (
    DATASET_FILE,
    Dataset,
    DatasetBuilder,
    DatasetError,
    ShardWriter,
    chronological_split,
    iter_session_batches,
    shard_for_rank,
    write_table_atomic,
)
from training.sim.config import preset
from training.sim.env import DAY_MS, EPOCH_MS
from training.sim.generate import generate_dataset
from training.sim.world import build_world

HOUR_MS = 3_600_000
META = {"source": "test", "code_version": "test"}  # a given code_version: no git call


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny simulated dataset: 4 days, small shards (several per day)."""
    out = tmp_path_factory.mktemp("pipe") / "tiny"
    cfg = preset("tiny").with_overrides({"n_users": 120, "n_days": 4})
    generate_dataset(cfg, out, shard_rows=12_000, progress=False)
    return out


@pytest.fixture(scope="module")
def side_tables() -> tuple[pa.Table, pa.Table]:
    w = build_world(preset("tiny").with_overrides({"n_users": 20}))
    return w.users_table(), w.items_table()


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial names anywhere under ``folder``."""
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name or ".partial" in p.name]


def log_slice(dataset: Path, rows: int = 500) -> pa.Table:
    return pq.read_table(Dataset.open(dataset).paths()[0]).slice(0, rows)


# ------------------------------------------------------------------------------------------
# A generated dataset on disk
# ------------------------------------------------------------------------------------------


def test_dataset_layout_and_counts(dataset: Path) -> None:
    ds = Dataset.open(dataset)
    assert (dataset / "users.parquet").exists() and (dataset / "items.parquet").exists()
    shards = ds.meta["shards"]
    assert len(shards) > 4  # more than one shard per day with these small shards
    rows = sum(validate_log_file(p) for p in ds.paths())
    assert rows == ds.meta["counts"]["rows"] == sum(s["rows"] for s in shards)
    table = ds.read()
    assert table.schema.equals(LOG_SCHEMA, check_metadata=False)
    shown = pc.sum(pc.greater_equal(table.column("position"), 0)).as_py()
    assert shown == ds.meta["counts"]["impressions"]
    assert ds.users().num_rows == 120


def test_shards_are_written_atomically(dataset: Path) -> None:
    assert leftovers(dataset) == []
    assert leftovers(dataset.parent) == []
    names = sorted(p.name for p in (dataset / "log").iterdir())
    assert names == sorted(Path(s["file"]).name for s in Dataset.open(dataset).meta["shards"])


def test_a_shard_holds_one_day_and_sessions_never_cross_shards(dataset: Path) -> None:
    ds = Dataset.open(dataset)
    seen: set[int] = set()
    for s, path in zip(ds.meta["shards"], ds.paths(), strict=True):
        t = pq.read_table(path, columns=["session_id", "timestamp"])
        ts = t.column("timestamp").to_numpy()
        # Sessions start between 07:00 and 24:00 of their day (a late one may run past midnight).
        start = EPOCH_MS + s["day"] * DAY_MS
        assert start + 7 * HOUR_MS <= ts.min() and ts.max() < start + DAY_MS + HOUR_MS
        assert s["t_min"] == ts.min() and s["t_max"] == ts.max()
        sids = set(np.unique(t.column("session_id").to_numpy()).tolist())
        assert not sids & seen
        seen |= sids
        sid = t.column("session_id").to_numpy()  # rows grouped by session
        starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
        assert len(starts) == len(sids) == s["sessions"]


def test_simulated_sessions_are_in_time_order_within_a_shard(dataset: Path) -> None:
    for path in Dataset.open(dataset).paths():
        t = pq.read_table(path, columns=["session_id", "timestamp"])
        sid, ts = t.column("session_id").to_numpy(), t.column("timestamp").to_numpy()
        first = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
        assert (np.diff(ts[first]) >= 0).all(), path.name


def test_chronological_split_orders_train_valid_test(dataset: Path) -> None:
    ds = Dataset.open(dataset)
    ts = {
        s: ds.read(s, columns=["timestamp"]).column("timestamp").to_numpy() for s in pipeline.SPLITS
    }
    assert all(len(v) for v in ts.values())
    assert ts["train"].max() < ts["valid"].min()
    assert ts["valid"].max() < ts["test"].min()
    # Two training days, one valid, one test.
    assert (ts["train"].max() - ts["train"].min()) > DAY_MS / 2
    assert sum(len(v) for v in ts.values()) == ds.meta["counts"]["rows"]


def test_chronological_split_by_hand() -> None:
    shards = [{"file": f"f{i}", "day": d} for i, d in enumerate([0, 0, 1, 2, 3, 3, 4])]
    assert chronological_split(shards, 1, 1) == {
        "train": ["f0", "f1", "f2", "f3"],
        "valid": ["f4", "f5"],
        "test": ["f6"],
    }
    assert chronological_split(shards, 2, 0) == {
        "train": ["f0", "f1", "f2", "f3"],
        "valid": ["f4", "f5", "f6"],
        "test": [],
    }


def test_chronological_split_needs_a_training_day() -> None:
    shards = [{"file": "a", "day": 0}, {"file": "b", "day": 1}]
    with pytest.raises(DatasetError, match="2 days.*1 valid \\+ 1 test"):
        chronological_split(shards, 1, 1)
    chronological_split(shards, 1, 0)


def test_generate_with_too_few_days_for_the_split_writes_nothing(tmp_path: Path) -> None:
    cfg = preset("tiny").with_overrides({"n_users": 30, "n_days": 2})
    with pytest.raises(DatasetError):
        generate_dataset(cfg, tmp_path / "ds", progress=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# Streaming whole sessions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("read_rows", "per_batch"), [(37, 3), (250, 1), (1000, 7), (1 << 18, 50)])
def test_iter_session_batches_yields_complete_sessions_in_order(
    dataset: Path, read_rows: int, per_batch: int
) -> None:
    paths = Dataset.open(dataset).paths()[:3]
    full = pa.concat_tables(pq.read_table(p) for p in paths)
    batches = list(iter_session_batches(paths, per_batch, read_rows=read_rows))
    seen: set[int] = set()
    sizes = []
    for b in batches:
        sids = np.unique(b.column("session_id").to_numpy())
        assert 1 <= len(sids) <= per_batch
        assert not set(sids.tolist()) & seen  # a session is never split over two tables
        seen |= set(sids.tolist())
        sizes.append(len(sids))
    assert pa.concat_tables(batches).equals(full)  # nothing lost, nothing reordered
    assert max(sizes) == per_batch


def test_iter_session_batches_selects_columns_and_keeps_session_id(dataset: Path) -> None:
    paths = Dataset.open(dataset).paths()[:1]
    batches = list(iter_session_batches(paths, 4, columns=["click", "item_id"], read_rows=100))
    assert batches[0].column_names == ["session_id", "item_id", "click"]
    assert sum(b.num_rows for b in batches) == pq.read_metadata(paths[0]).num_rows


def test_iter_session_batches_bad_input(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ValueError, match="sessions_per_batch=0"):
        list(iter_session_batches([], 0))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"\x00\x01 definitely not parquet")
    with pytest.raises(LogValidationError, match="garbage.parquet"):
        list(iter_session_batches([garbage], 2))
    odd = tmp_path / "odd.parquet"
    pq.write_table(log_slice(dataset).drop_columns(["hate"]), odd)
    with pytest.raises(LogValidationError, match="'hate'"):
        list(iter_session_batches([odd], 2, validate=True))


# ------------------------------------------------------------------------------------------
# Sharding across data-parallel ranks
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shard_for_rank_partitions_the_paths(world_size: int) -> None:
    paths = [Path(f"part-{i:05d}.parquet") for i in range(7)]
    parts = [shard_for_rank(paths, r, world_size) for r in range(world_size)]
    flat = [p for part in parts for p in part]
    assert sorted(flat) == paths and len(flat) == len(set(flat))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_shard_for_rank_rejects_a_bad_rank() -> None:
    for rank, size in [(2, 2), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError, match="rank"):
            shard_for_rank([Path("a")], rank, size)


# ------------------------------------------------------------------------------------------
# Building datasets atomically
# ------------------------------------------------------------------------------------------


def build_small(out: Path, table: pa.Table, side: tuple[pa.Table, pa.Table], **kw) -> dict:
    with DatasetBuilder(out, **kw) as b:
        b.write_side_tables(*side)
        for day in range(3):
            b.writer.write(table, day)
        return b.finish(META)


def test_builder_writes_a_complete_dataset(tmp_path: Path, dataset: Path, side_tables) -> None:
    out = tmp_path / "ds"
    meta = build_small(out, log_slice(dataset), side_tables)
    ds = Dataset.open(out)
    assert ds.meta == json.loads((out / DATASET_FILE).read_text()) == meta
    assert [s["day"] for s in meta["shards"]] == [0, 1, 2]  # a day change cuts a shard
    assert meta["split"] == {
        "train": ["log/part-00000.parquet"],
        "valid": ["log/part-00001.parquet"],
        "test": ["log/part-00002.parquet"],
    }
    assert meta["counts"]["rows"] == 1500 and meta["code_version"] == "test"
    assert leftovers(tmp_path) == []


def test_failing_builder_leaves_no_output_and_no_partial(
    tmp_path: Path, dataset: Path, side_tables
) -> None:
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetBuilder(out, shard_rows=100) as b:
            b.write_side_tables(*side_tables)
            b.writer.write(log_slice(dataset), 0)
            assert any(b.tmp.rglob("part-*.parquet"))  # shards were on disk before the crash
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_builder_closed_without_finish_writes_nothing(tmp_path: Path, side_tables) -> None:
    with pytest.raises(DatasetError, match="without finish"):
        with DatasetBuilder(tmp_path / "ds") as b:
            b.write_side_tables(*side_tables)
    assert list(tmp_path.iterdir()) == []


def test_builder_refuses_to_overwrite_unless_asked(
    tmp_path: Path, dataset: Path, side_tables
) -> None:
    out = tmp_path / "ds"
    build_small(out, log_slice(dataset, 500), side_tables)
    with pytest.raises(DatasetError, match="exists"):
        DatasetBuilder(out)
    assert Dataset.open(out).meta["counts"]["rows"] == 1500
    build_small(out, log_slice(dataset, 200), side_tables, overwrite=True)
    assert Dataset.open(out).meta["counts"]["rows"] == 600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_failed_overwrite_keeps_the_old_dataset(tmp_path: Path, dataset: Path, side_tables) -> None:
    out = tmp_path / "ds"
    build_small(out, log_slice(dataset, 500), side_tables)
    with pytest.raises(RuntimeError):
        with DatasetBuilder(out, overwrite=True) as b:
            b.write_side_tables(*side_tables)
            raise RuntimeError("crash while rebuilding")
    assert Dataset.open(out).meta["counts"]["rows"] == 1500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_builder_rejects_bad_side_tables_and_invalid_logs(
    tmp_path: Path, dataset: Path, side_tables
) -> None:
    users, items = side_tables
    with pytest.raises(LogValidationError, match="items.parquet.*'tag'"):
        with DatasetBuilder(tmp_path / "a") as b:
            b.write_side_tables(users, items.drop_columns(["tag"]))
    bad = log_slice(dataset, 100)
    i = bad.schema.get_field_index("propensity")
    bad = bad.set_column(i, "propensity", pa.array([0.5] * 100, pa.float64()))  # on every row
    with pytest.raises(LogValidationError, match="part-00000.parquet.*'propensity'"):
        with DatasetBuilder(tmp_path / "b") as b:
            b.writer.write(bad, 0)
            b.writer.flush()
    assert list(tmp_path.iterdir()) == []


def test_shard_writer_cuts_at_shard_rows_between_writes(tmp_path: Path, dataset: Path) -> None:
    w = ShardWriter(tmp_path / "log", shard_rows=250)
    rows = log_slice(dataset, 500)
    for i in range(5):
        w.write(rows.slice(100 * i, 100), 0)  # flushes once 300 >= 250 rows are buffered
    w.flush()
    assert [s["rows"] for s in w.shards] == [300, 200]
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]


def test_write_table_atomic_leaves_neither_temp_nor_target_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = pa.table({"a": [1, 2, 3]})
    target = tmp_path / "t.parquet"
    write_table_atomic(table, target)
    assert pq.read_table(target).equals(table) and os.listdir(tmp_path) == ["t.parquet"]

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_table_atomic(table, tmp_path / "u.parquet")
    assert os.listdir(tmp_path) == ["t.parquet"]


# ------------------------------------------------------------------------------------------
# Opening datasets
# ------------------------------------------------------------------------------------------


def test_open_without_dataset_json_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    with pytest.raises(DatasetError, match=f"no {DATASET_FILE}"):
        Dataset.open(tmp_path)


def test_open_with_a_missing_shard_names_it(tmp_path: Path, dataset: Path, side_tables) -> None:
    out = tmp_path / "ds"
    build_small(out, log_slice(dataset), side_tables)
    (out / "log" / "part-00001.parquet").unlink()
    with pytest.raises(DatasetError, match="log/part-00001.parquet"):
        Dataset.open(out)


def test_unknown_split_and_empty_split(tmp_path: Path, dataset: Path, side_tables) -> None:
    ds = Dataset.open(dataset)
    with pytest.raises(DatasetError, match="'dev'"):
        ds.paths("dev")
    out = tmp_path / "ds"
    with DatasetBuilder(out) as b:
        b.write_side_tables(*side_tables)
        for day in range(2):
            b.writer.write(log_slice(dataset, 50), day)
        b.finish(META, valid_days=1, test_days=0)
    empty = Dataset.open(out).read("test", columns=["click"])
    assert empty.num_rows == 0 and empty.column_names == ["click"]


# ------------------------------------------------------------------------------------------
# The CLI over datasets and files
# ------------------------------------------------------------------------------------------


def test_cli_validate_accepts_a_dataset_and_its_shards(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["validate", str(dataset)]) == 0
    shards = [str(p) for p in Dataset.open(dataset).paths()[:2]]
    assert cli.main(["validate", *shards]) == 0
    assert "rows valid" in capsys.readouterr().out


def _replace(t: pa.Table, name: str, values: pa.Array, field: pa.Field | None = None) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), field or name, values)


def _missing_column(t: pa.Table) -> pa.Table:
    return t.drop_columns(["watch_time"])


def _wrong_type(t: pa.Table) -> pa.Table:
    return _replace(
        t, "item_id", t.column("item_id").cast(pa.string()), pa.field("item_id", pa.string())
    )


def _propensity_on_non_impression(t: pa.Table) -> pa.Table:
    return _replace(t, "propensity", pa.array(np.full(t.num_rows, 0.5)))


def _null_feedback(t: pa.Table) -> pa.Table:
    n = t.num_rows
    return _replace(t, "click", pa.array(np.zeros(n, np.int8), mask=np.ones(n, bool)))


def _duplicate_position(t: pa.Table) -> pa.Table:
    pos = t.column("position").to_numpy()
    return _replace(t, "position", pa.array(np.where(pos == 1, 0, pos).astype(np.int16)))


@pytest.mark.parametrize(
    ("make", "column"),
    [
        (_missing_column, "watch_time"),
        (_wrong_type, "item_id"),
        (_propensity_on_non_impression, "propensity"),
        (_null_feedback, "click"),
        (_duplicate_position, "position"),
    ],
)
def test_cli_validate_rejects_a_bad_file_with_status_2(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str], make, column: str
) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(make(log_slice(dataset)), path)
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and f"column {column!r}" in err, err


def test_cli_validate_rejects_garbage_and_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(os.urandom(256))
    assert cli.main(["validate", str(garbage)]) == 2
    assert "not a readable Parquet file" in capsys.readouterr().err
    assert cli.main(["validate", str(tmp_path / "none.parquet")]) == 2
    assert cli.main(["validate", str(tmp_path)]) == 2  # a folder that is not a dataset
    assert "dataset.json" in capsys.readouterr().err


def test_cli_simulate_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    args = ["simulate", "--set", "n_users=40", "--set", "n_days=3", "--out", str(out)]
    assert cli.main([*args, "--no-progress", "--shard-rows", "5000"]) == 0
    assert "impressions" in capsys.readouterr().out
    assert cli.main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == "simulator" and info["preset"] == "tiny"
    assert info["split_shards"]["test"] >= 1 and info["counts"]["rows"] > 0
    assert cli.main([*args, "--no-progress"]) == 2  # exists, no --overwrite
    assert cli.main([*args, "--no-progress", "--overwrite"]) == 0
    assert leftovers(tmp_path) == []
