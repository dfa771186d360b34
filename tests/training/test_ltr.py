"""The LightGBM lambdarank learning-to-rank baseline (training/baselines/ltr.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from contract.features import DEFAULT_SPEC
from training.baselines.ltr import (
    LTRConfig,
    LTRModel,
    LTRPolicy,
    categorical_fields,
    evaluate_ltr,
    fit_grade_edges,
    grade_watch_time,
    group_sizes,
    main,
    read_groups,
    train_ltr,
)
from training.eval.policies import OnlineFeatures

FAST = LTRConfig(num_rounds=30, num_leaves=7, min_data_in_leaf=10, early_stopping=5)


def test_watch_time_grades_by_hand():
    edges = fit_grade_edges(np.array([1.0, 2, 3, 4, 5]), (0.25, 0.5, 0.75))
    np.testing.assert_allclose(edges, [2.0, 3.0, 4.0])
    grades = grade_watch_time(np.array([0.5, 2.0, 2.5, 4.0, 10.0]), edges)
    np.testing.assert_array_equal(grades, [0, 1, 1, 3, 3])
    assert grades.dtype == np.int32
    # equal quantiles merge into one edge: two grades, not three
    np.testing.assert_allclose(fit_grade_edges(np.array([1.0, 1, 1, 5]), (0.25, 0.5)), [1.0])
    with pytest.raises(ValueError):
        grade_watch_time(np.array([np.nan]), edges)
    with pytest.raises(ValueError):
        fit_grade_edges(np.zeros(0), (0.5,))
    with pytest.raises(ValueError):
        LTRConfig(grade_quantiles=(0.5, 0.25))


def test_groups_are_runs_of_one_request():
    np.testing.assert_array_equal(group_sizes(np.array([0, 0, 0, 2, 2, 5])), [3, 2, 1])
    with pytest.raises(ValueError, match="not grouped"):
        group_sizes(np.array([0, 1, 0]))


def test_hashed_and_vocabulary_fields_are_categorical():
    cats = categorical_fields(DEFAULT_SPEC)
    assert cats == [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 14, 15]
    assert all(DEFAULT_SPEC.fields[i].kind in ("bucket", "count", "hour")
               for i in set(range(22)) - set(cats))  # fmt: skip


@pytest.fixture(scope="module")
def model(tiny_data):
    ds, side, _ = tiny_data
    train = read_groups(ds, "train", side, 0, 0)
    valid = read_groups(ds, "valid", side, 0, 0)
    assert int(train.sizes.sum()) == train.n and train.sizes.max() <= 10
    return train_ltr(train, valid, FAST, list_size=10), train


def test_lambdarank_trains_on_graded_watch_time_and_reloads(model, tmp_path):
    m, train = model
    assert 1 <= m.info["best_iteration"] <= 30
    assert sum(m.info["grades"]) == train.n and len(m.info["grades"]) == len(m.edges) + 1
    s = m.score(train.x)
    # it learnt watch time: scores correlate with the logged seconds on its training data
    assert np.corrcoef(s, train.feedback[:, -1])[0, 1] > 0.2
    m.save(tmp_path / "ltr")
    again = LTRModel.load(tmp_path / "ltr")
    np.testing.assert_array_equal(again.score(train.x[:500]), s[:500])
    np.testing.assert_array_equal(again.edges, m.edges)
    assert again.spec == m.spec == DEFAULT_SPEC
    meta = json.loads((tmp_path / "ltr" / "ltr.json").read_text())
    del meta["feature_spec"]  # a folder written before specs were saved: the default spec
    (tmp_path / "ltr" / "ltr.json").write_text(json.dumps(meta))
    assert LTRModel.load(tmp_path / "ltr").spec == DEFAULT_SPEC
    with pytest.raises(ValueError):
        m.score(train.x[:, :10])
    short = dataclasses.replace(train, x=train.x[:, :10])
    with pytest.raises(ValueError, match="fields"):
        train_ltr(short, None, FAST, list_size=10)


def test_ltr_policy_ranks_valid_slates_online_by_its_scores(model, tiny_data):
    from training.eval.online import run_online
    from training.sim.config import preset
    from training.sim.world import build_world

    m, _ = model
    side = tiny_data[1]
    world = build_world(preset("tiny"))
    seen = []

    class Rec(LTRPolicy):
        def rank(self, obs, k):
            s = super().rank(obs, k)
            seen.append((obs, s.copy()))
            return s

    res = run_online(world, {"ltr": Rec(m, side)}, users=np.arange(20), days=[3], progress=False)
    assert seen and res.per_session("ltr")["impressions"].sum() > 0
    for obs, slate in seen:
        c = obs.candidates.shape[1]
        assert slate.shape[1] == world.cfg.list_size and ((slate >= 0) & (slate < c)).all()
        assert all(len(set(r.tolist())) == len(r) for r in slate)
    # slot 0 is the argmax of the model's own score of (user, context, item, list) ids
    obs, slate = seen[0]
    x = OnlineFeatures(side).request(obs)
    empty = np.zeros((obs.batch_size, 0), dtype=np.int64)
    cand = OnlineFeatures.cand_ids(x, 0, empty, empty)
    b, c, _ = cand.shape
    ids = np.concatenate([np.broadcast_to(x.user_ctx[:, None], (b, c, 10)), cand], -1)
    np.testing.assert_array_equal(slate[:, 0], m.score(ids.reshape(b * c, -1)).reshape(b, c)
                                  .argmax(axis=1))  # fmt: skip


def test_offline_gauc_and_ncis_per_aspect(model, tiny_data):
    ds, side, _ = tiny_data
    res = evaluate_ltr(model[0], ds, side, "test", budget=0, ncis_requests=100,
                       temperatures=(0.5, 1.0))  # fmt: skip
    assert 0.5 < res["gauc_long_view"] < 1 and res["corr_watch_time"] > 0
    n = res["ncis"]
    assert n["temperature"] in (0.5, 1.0) and n["requests"] > 0 and n["ess"] > 1
    assert set(n["value"]) == set(n["logged"]) == {"click", "like", "follow", "comment", "hate",
                                                   "long_view", "watch_time"}  # fmt: skip
    assert n["value"]["watch_time"] > 0


def test_cli_trains_and_refuses_bad_input(tiny_data, tmp_path, capsys):
    ds = tiny_data[0]
    out = tmp_path / "ltr"
    argv = ["--data", str(ds.root), "--out", str(out), "--eval-split", "none"]
    sets = ["--set", "num_rounds=5", "--set", "num_leaves=4"]
    assert main([*argv, *sets]) == 0
    brief = json.loads(capsys.readouterr().out)
    assert 1 <= brief["best_iteration"] <= 5
    saved = json.loads((out / "train.json").read_text())
    assert saved["method"] == "ltr" and saved["config"]["num_rounds"] == 5
    assert main([*argv, *sets]) == 2  # an existing run is not overwritten
    assert "--overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad"
    to_bad = ["--data", str(ds.root), "--out", str(bad)]
    assert main([*to_bad, "--set", "num_leaves=1"]) == 2
    assert "num_leaves" in capsys.readouterr().err
    assert main([*to_bad, "--set", "grade_quantiles=0.9,0.1"]) == 2
    assert "grade_quantiles" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(bad)]) == 2
    assert not bad.exists()
