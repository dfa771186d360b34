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


def test_kuairand_conversions_declare_the_default_spec(tmp_path) -> None:
    from training.data.kuairand import convert_kuairand

    fix = Path(__file__).resolve().parents[1] / "fixtures" / "kuairand"
    logs = [str(fix / "log_standard_fixture.csv"), str(fix / "log_random_fixture.csv")]
    meta = convert_kuairand(logs, str(fix / "user_features_fixture.csv"),
                            str(fix / "video_features_fixture.csv"), str(tmp_path / "kr"),
                            progress=False)  # fmt: skip
    assert meta["feature_spec"] == DEFAULT_SPEC.to_dict()
    assert Dataset.open(tmp_path / "kr").spec == DEFAULT_SPEC


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


# ------------------------------------------------------------------------------------------
# The tiny world with two declared fields: users' age (bucket), items' brand (category)
# ------------------------------------------------------------------------------------------

BRANDS = ("acme", "bolt", "cora", "dune")
RARE = ("rare1", "rare2", "rare3")  # each on one item: below min_count=2, so unknown (0)
TS = 1_700_000_000_000 + 13 * 3_600_000  # an afternoon, epoch ms


@pytest.fixture(scope="module")
def extended(tiny_data, tmp_path_factory):
    """The tiny world's log with side tables carrying ``age`` (float, some NaN) and ``brand``
    (str), and a spec extending DEFAULT_SPEC with fields built from them:
    ``(Dataset, spec, ages, brands)``."""
    import pyarrow.parquet as pq

    from contract.features import bucket_field, category_field

    ds, _, _ = tiny_data
    rng = np.random.default_rng(12)
    users, items = ds.users(), ds.items()
    age = rng.uniform(15, 70, users.num_rows)
    age[::17] = np.nan
    brand = rng.choice(BRANDS, items.num_rows).astype(object)
    brand[:3] = RARE
    brand[3] = None
    spec = extend_spec(
        ds.spec,
        [bucket_field("age", "user", age, n_buckets=4),
         category_field("brand", "item", brand, min_count=2)],
    )  # fmt: skip
    split = ds.meta["split"]
    days = {k: len({s["day"] for s in ds.meta["shards"] if s["file"] in split[k]})
            for k in ("valid", "test")}  # fmt: skip
    out = tmp_path_factory.mktemp("extended") / "ext"
    with DatasetBuilder(out) as b:
        b.write_side_tables(
            users.append_column("age", pa.array(age)),
            items.append_column("brand", pa.array(brand, pa.string())),
            spec,
        )
        for s in ds.meta["shards"]:
            b.writer.write(pq.read_table(ds.root / s["file"]), s["day"])
        b.finish({"source": "tiny world + declared age and brand"}, days["valid"], days["test"])
    return Dataset.open(out), spec, age, brand


def test_declared_fields_are_built_from_the_data(extended) -> None:
    _, spec, age, _ = extended
    assert spec.n_fields == DEFAULT_SPEC.n_fields + 2
    age_f, brand_f = spec.field("age"), spec.field("brand")
    assert brand_f.vocab == BRANDS and brand_f.size == 5  # the rare brands are left out
    assert len(age_f.edges) == 3 and age_f.size == 5
    np.testing.assert_allclose(age_f.edges, np.quantile(age[~np.isnan(age)], [0.25, 0.5, 0.75]))
    assert spec.names("user")[-1] == "age" and spec.names("item")[-1] == "brand"


def test_side_tables_featurise_the_declared_fields_and_count_unknowns(extended) -> None:
    from contract.features import bucketise, unknown_counts
    from training.data.features import SideTables

    ds, spec, age, brand = extended
    assert ds.spec == spec
    side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)
    assert side.spec == spec
    users, items = ds.users(), ds.items()
    # users: the age column is the 9th user field (after DEFAULT_SPEC's 8).
    uo = np.argsort(users.column("user_id").to_numpy(), kind="stable")
    want_age = bucketise(age[uo], spec.field("age").edges)
    np.testing.assert_array_equal(side.user_fields[:, 8], want_age)
    assert (want_age[np.isnan(age[uo])] == 0).all()
    # items: brand id = 1 + index in (acme, bolt, cora, dune); rare brands and None -> 0.
    io = np.argsort(items.column("item_id").to_numpy(), kind="stable")
    want = np.array([1 + BRANDS.index(b) if b in BRANDS else 0 for b in brand[io]])
    np.testing.assert_array_equal(side.item_f[:, 6], want)
    raw = {c: items.column(c).to_numpy(zero_copy_only=False) for c in items.column_names}
    counts = unknown_counts(spec, "item", raw)
    assert counts["brand"] == 4  # three rare brands and one missing
    assert counts["item_id"] == 0
    # The default fields are unchanged by the extension.
    base = SideTables.from_tables(ds.users(), ds.items())
    np.testing.assert_array_equal(side.user_fields[:, :8], base.user_fields)
    np.testing.assert_array_equal(side.item_f[:, :6], base.item_f)
    req = build_requests_of(ds, side)
    assert req.imp_ids.shape[1] == spec.n_fields and req.spec == spec
    with pytest.raises(ValueError, match="differs from the side tables'"):
        from training.data.features import build_requests

        build_requests(ds.read("test"), side, spec=DEFAULT_SPEC)


def build_requests_of(ds: Dataset, side):
    from training.data.features import build_requests

    return build_requests(ds.read("test"), side)


@pytest.fixture(scope="module")
def trained(extended, tmp_path_factory):
    """DRL-Rec, the weighted Wide&Deep and MMRF trained a few steps on the extended dataset,
    and the bundle exported from them: ``(drl_dir, wd_path, bundle_dir)``."""
    import torch

    from training.bundles import export_runs, train_weighted_wide_deep
    from training.drl.train import DRLConfig, run
    from training.mmrf.train import MMRFConfig
    from training.mmrf.train import run as run_mmrf

    ds, _, _, _ = extended
    root = tmp_path_factory.mktemp("ext-runs")
    cfg = DRLConfig(n_explore=20, batch_size=32, d_r=4, gru_hidden=8, mlp=(8, 8, 4), memory=4,
                    sessions_per_chunk=64, max_instances=320, seed=1)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(ds.root, root / "drl", cfg, progress=False, eval_split="test")
        train_weighted_wide_deep(ds.root, root / "wd.pt", train_impressions=3000,
                                 valid_impressions=800, max_epochs=1, progress=False)  # fmt: skip
        mcfg = MMRFConfig(
            batch_size=32, d_r=4, gru_hidden=8, memory=4, agent_dim=8, heads=2, action_dim=4,
            actor_hidden=(8,), critic_mlp=(8,), model_hidden=(8,), sessions_per_chunk=32,
            model_warmup=0, sim_batch=16, max_instances=96,
        )  # fmt: skip
        run_mmrf(ds.root, root / "mmrf", mcfg, progress=False, eval_split=None)
        export_runs(root / "drl", root / "wd.pt", ds.root, root / "bundle", name="ext",
                    mmrf=root / "mmrf", real_requests=32)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return root / "drl", root / "wd.pt", root / "bundle"


def test_runs_record_the_spec_and_size_their_networks_from_it(extended, trained) -> None:
    import torch

    from training.bundles import load_drl_run, load_mmrf_run, load_wide_deep

    _, spec, _, _ = extended
    drl_dir, wd_path, _ = trained
    ck = torch.load(drl_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["feature_spec"] == spec.to_dict()
    assert json.loads((drl_dir / "train.json").read_text())["feature_spec"] == spec.to_dict()
    _, model, summary = load_drl_run(drl_dir)
    assert model.spec == spec and "auc_student" in summary["eval"]
    for net in (model.teacher, model.student):
        assert net.cfg.sizes == tuple(spec.sizes())
        assert net.state_encoder.embedding.table.num_embeddings == sum(spec.sizes())
    wd, info = load_wide_deep(wd_path)
    assert info["feature_spec"] == spec.to_dict()
    assert wd.sizes == tuple(spec.sizes())
    assert 0.0 <= info["offline"]["auc"] <= 1.0
    _, mmrf, msum = load_mmrf_run(drl_dir.parent / "mmrf")
    assert msum["feature_spec"] == spec.to_dict()
    assert mmrf.cfg.encoder.sizes == tuple(spec.sizes())


def test_hrl_trains_on_the_declared_spec(extended, tmp_path) -> None:
    import torch

    from training.drl.hrl import HRLConfig, run_hrl

    ds, spec, _, _ = extended
    cfg = HRLConfig(batch_size=32, d_r=4, gru_hidden=8, mlp=(8, 8, 4), actor_hidden=(8,),
                    sessions_per_chunk=64, max_instances=96)  # fmt: skip
    summary = run_hrl(ds.root, tmp_path / "hrl", cfg, progress=False, eval_split=None)
    assert summary["feature_spec"] == spec.to_dict() and summary["instances"] >= 96
    ck = torch.load(tmp_path / "hrl" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["feature_spec"] == spec.to_dict()
    assert cfg.net(spec).sizes == tuple(spec.sizes())


def test_every_model_of_the_bundle_ranks_on_the_declared_spec(extended, trained) -> None:
    from runtime.bundle import load_bundle
    from runtime.lists import SessionState, build_lists

    _, spec, _, _ = extended
    bundle = load_bundle(trained[2])
    assert sorted(bundle.models) == [
        "drl_student", "drl_teacher", "mmrf_watchtime", "wide_deep_weighted"
    ]  # fmt: skip
    cands = bundle.tables.item_ids[:12][None]
    for name in bundle.models:
        model = bundle.model(name)
        state = SessionState.new(model, spec.recent_window)
        out = build_lists(bundle, model, [state], bundle.tables.user_ids[:1], np.array([TS]),
                          cands, 4)  # fmt: skip
        assert len(set(out.item_ids[0].tolist())) == 4 and np.isfinite(out.scores).all()


def test_a_run_on_another_spec_is_refused_at_resume_and_export(
    extended, trained, tiny_data, tmp_path, capsys
) -> None:
    from training.bundles import export_runs
    from training.cli import main
    from training.data.features import SideTables
    from training.drl.train import DRLConfig, DRLTrainer

    drl_dir, _, _ = trained
    ds_default = tiny_data[0]
    with pytest.raises(ValueError, match="another feature spec"):
        export_runs(drl_dir, None, ds_default.root, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    # The command line: one line naming both sides, exit status 2, nothing written.
    argv = ["export", "--drl", str(drl_dir), "--data", str(ds_default.root),
            "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "another feature spec" in err and str(drl_dir) in err
    assert not (tmp_path / "b").exists()
    side = SideTables.from_tables(ds_default.users(), ds_default.items(), ds_default.spec)
    tr = DRLTrainer(DRLConfig(n_explore=20, batch_size=32, d_r=4, gru_hidden=8, mlp=(8, 8, 4),
                              memory=4, sessions_per_chunk=64, seed=1), side)  # fmt: skip
    with pytest.raises(ValueError, match="another feature spec"):
        tr.load(drl_dir / "checkpoint.pt")


def test_the_bundle_serves_the_declared_fields_as_training_featurises_them(
    extended, trained
) -> None:
    """Train/serve parity through the extra fields: for one request built by the list builder
    from the exported student, training's featurisation of the same raw values (the request
    written as a log row by row, read by build_requests) gives the same user, item and list
    ids at every slot, and the torch student scores the builder's pick highest."""
    import torch

    from contract.features import candidate_prefix_counts
    from runtime.bundle import load_bundle
    from runtime.lists import SessionState, build_lists
    from tests.training.log_rows import Req, log_rows
    from training.bundles import load_drl_run
    from training.data.features import SideTables, build_requests, candidate_ids
    from training.drl.batches import history

    ds, spec, age, _ = extended
    drl_dir, _, bundle_dir = trained
    bundle = load_bundle(bundle_dir)
    assert bundle.spec == spec
    assert json.loads((bundle_dir / "manifest.json").read_text())["feature_spec"] == spec.to_dict()
    assert bundle.tables.items(bundle.tables.item_ids[:1])[0].shape[-1] == 7
    model = bundle.model("drl_student")
    side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)
    items = ds.items().column("item_id").to_numpy()
    users = ds.users().column("user_id").to_numpy()
    rng = np.random.default_rng(5)
    # The rare-brand and brand-less items (rows 0..3), others at random, and an unknown item.
    cands = np.r_[items[:4], rng.choice(items[4:], 20, replace=False), 10**12 + 7]
    k = 5
    for user in (int(users[0]), int(users[1])):  # users[0] has no age (NaN: bucket 0)
        state = SessionState.new(model, spec.recent_window)
        got = build_lists(bundle, model, [state], np.array([user]), np.array([TS]), cands[None], k)
        picked = cands[got.index[0]]
        rest = tuple(int(c) for c in cands if c not in set(picked.tolist()))
        table = log_rows([Req(user, 0, TS, [(int(c), t, 0) for t, c in enumerate(picked)], rest)])
        req = build_requests(table, side)
        col_items = req.cand_item[0]
        np.testing.assert_array_equal(col_items[:k], picked)
        # user + context ids, and the item ids of every candidate (declared fields included).
        uf, _ = bundle.tables.users(np.array([user]))
        np.testing.assert_array_equal(uf[0], req.user_ctx[0, :9])
        if user == int(users[0]):
            assert np.isnan(age[0]) and req.user_ctx[0, 8] == 0
        item_f, tags, authors, _ = bundle.tables.items(col_items[None])
        np.testing.assert_array_equal(item_f[0], req.cand_f[0])
        assert (req.cand_f[0, :, 6] == 0).sum() >= 5  # 3 rare, 1 missing brand, 1 unknown item
        # list ids at every slot: the builder's encoder over the placed prefix.
        enc = bundle.list_encoder
        # As build_lists: the state's recent tags (a new session's window is all 0).
        recent = (tags[:, :, None] == state.recent_tags[None, None, :]).sum(-1)
        request_part = enc.request_ids(recent, np.array([0]), np.array([0]))
        n_item = item_f.shape[-1]
        _, net, _ = load_drl_run(drl_dir)
        for t in range(k):
            same_tag = candidate_prefix_counts(tags, tags[:, :t], t)
            same_author = candidate_prefix_counts(authors, authors[:, :t], t)
            slot = enc.slot_ids(np.zeros((1, len(cands), enc.n_slot), np.int64), t, same_tag,
                                same_author)  # fmt: skip
            served = np.concatenate([item_f, enc.merge(request_part, slot)], axis=-1)[0]
            trained_ids = candidate_ids(req, np.array([0]), np.array([t]))[0]
            np.testing.assert_array_equal(served, trained_ids)
            assert served.shape[-1] == n_item + 6
            # The state at slot t holds the slots placed before it (training's history).
            hist, hmask = history(req, np.array([t]), net.student.cfg.memory)
            with torch.no_grad():
                buf = net.student.encode_history(torch.from_numpy(hist))
                q, _ = net.student.score(buf, torch.from_numpy(hmask),
                                         torch.from_numpy(req.user_ctx[:1]),
                                         torch.from_numpy(trained_ids[None]))  # fmt: skip
            q = q[0].numpy().astype(np.float64)
            q[:t] = -np.inf  # the columns of the slots already placed
            assert q[t] == pytest.approx(q.max(), abs=1e-4)
            assert got.scores[0, t] == pytest.approx(q[t], abs=1e-4)
