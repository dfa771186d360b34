"""The declared feature spec through the training side: a dataset's ``feature_spec``, side
tables and Requests featurised by it, networks sized from it, bundles carrying it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from contract.features import DEFAULT_SPEC, Field, extend_spec
from training.data.pipeline import DATASET_FILE, Dataset, DatasetBuilder, DatasetError


def _copy_meta(src: Path, dst: Path, edit) -> Dataset:
    shutil.copytree(src, dst)
    meta = json.loads((dst / DATASET_FILE).read_text())
    edit(meta)
    (dst / DATASET_FILE).write_text(json.dumps(meta))
    return Dataset.open(dst)


def test_simulated_datasets_declare_the_default_spec(tiny_data) -> None:
    ds, _, _ = tiny_data
    assert ds.meta["feature_spec"] == DEFAULT_SPEC.to_dict()
    assert ds.spec == DEFAULT_SPEC


def test_a_dataset_without_the_key_reads_as_the_default_spec(tiny_data, tmp_path) -> None:
    ds, _, _ = tiny_data
    old = _copy_meta(ds.root, tmp_path / "old", lambda m: m.pop("feature_spec"))
    assert "feature_spec" not in old.meta
    assert old.spec == DEFAULT_SPEC


def test_a_declared_spec_is_read_back_and_a_broken_one_is_named(tiny_data, tmp_path) -> None:
    ds, _, _ = tiny_data
    spec = extend_spec(DEFAULT_SPEC, [Field("brand", "item", 3, "category", vocab=("a", "b"))])
    ext = _copy_meta(ds.root, tmp_path / "ext", lambda m: m.update(feature_spec=spec.to_dict()))
    assert ext.spec == spec
    bad = _copy_meta(ds.root, tmp_path / "bad", lambda m: m["feature_spec"].pop("fields"))
    with pytest.raises(DatasetError, match="dataset.json: feature_spec: .*missing key 'fields'"):
        _ = bad.spec
    shuffled = dict(DEFAULT_SPEC.to_dict())
    shuffled["fields"] = shuffled["fields"][::-1]
    odd = _copy_meta(ds.root, tmp_path / "odd", lambda m: m.update(feature_spec=shuffled))
    with pytest.raises(DatasetError, match="fields must be ordered"):
        _ = odd.spec


def test_builder_keeps_the_columns_a_declared_spec_reads(tiny_data, tmp_path) -> None:
    ds, _, _ = tiny_data
    spec = extend_spec(DEFAULT_SPEC, [Field("brand", "item", 3, "category", vocab=("a", "b"))])
    items = ds.items()
    brand = pa.array(np.where(np.arange(items.num_rows) % 2, "a", "b"))
    with pytest.raises(ValueError, match=r"items.parquet: columns \['brand'\]"):
        with DatasetBuilder(tmp_path / "x") as b:
            b.write_side_tables(ds.users(), items, spec)
    assert not (tmp_path / "x").exists()
    with DatasetBuilder(tmp_path / "y") as b:
        b.write_side_tables(ds.users(), items.append_column("brand", brand), spec)
        b.writer.write(ds.read("train"), 0)
        b.writer.write(ds.read("valid"), 1)
        b.writer.write(ds.read("test"), 2)
        b.finish({"source": "test"})
    out = Dataset.open(tmp_path / "y")
    assert out.spec == spec
    assert out.items().column_names[-1] == "brand"
