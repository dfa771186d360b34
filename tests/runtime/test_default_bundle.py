"""The committed default bundle loads, matches the current feature spec, and its hashes hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from contract.bundle import read_manifest
from contract.features import DEFAULT_SPEC
from runtime.bundle import load_bundle
from runtime.lists import SessionState, build_lists

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "default"


def test_committed_default_bundle_loads_matches_the_spec_and_its_hashes_hold():
    m = read_manifest(DEFAULT)  # checks the sha256 of every file
    assert m.spec == DEFAULT_SPEC, "the default bundle was trained on another feature spec"
    assert set(m.models) == {"drl_student", "drl_teacher", "wide_deep_weighted",
                             "mmrf_watchtime"}  # fmt: skip
    for name, entry in m.raw["models"].items():
        assert max(entry["parity_max_abs_err"].values()) <= 1e-5, name
        # click AUC on test (point-wise, DRL-Rec); the actor's click GAUC on valid (MMRF)
        quality = entry["metrics"].get("auc_test", entry["metrics"].get("main_gauc_click"))
        assert quality > 0.65, name
    assert m.models["mmrf_watchtime"].kind == "actor" and m.models["mmrf_watchtime"].reward_scale
    student, teacher = m.models["drl_student"], m.models["drl_teacher"]
    assert student.params < 0.5 * teacher.params
    bundle = load_bundle(DEFAULT)  # graphs against the manifest, warm-up through every graph
    model = bundle.model("drl_student")
    out = build_lists(bundle, model, [SessionState.new(model, bundle.spec.recent_window)],
                      np.array([int(bundle.tables.user_ids[0])]), np.array([1_700_000_000_000]),
                      bundle.tables.item_ids[:200][None], 10)  # fmt: skip
    assert len(set(out.item_ids[0].tolist())) == 10 and not out.unknown.any()


def test_a_bundle_loaded_for_batch_size_one_ranks_exactly_like_any_batch():
    """The service's load (``batch_size=1``: onnxruntime folds the shape arithmetic) gives
    the same lists, scores and next states as the batched load; other batch sizes are
    refused by name."""
    import pytest

    from runtime.lists import Exploration, RankingInputError

    any_b, one = load_bundle(DEFAULT), load_bundle(DEFAULT, batch_size=1)
    assert one.batch_size == 1 and any_b.batch_size is None
    items = one.tables.item_ids[::97][:200][None]
    for name in ("drl_student", "drl_teacher", "wide_deep_weighted", "mmrf_watchtime"):
        outs = []
        for bundle in (any_b, one):
            model = bundle.model(name)
            state = SessionState.new(model, bundle.spec.recent_window)
            rng = np.random.default_rng(7)
            for ts in (1_700_000_000_000, 1_700_000_060_000):  # two requests, the state carried
                out = build_lists(bundle, model, [state], np.array([3]), np.array([ts]), items,
                                  10, Exploration(0.3, 3), rng)  # fmt: skip
                state = out.states[0]
            outs.append(out)
        a, b = outs
        assert (a.item_ids == b.item_ids).all() and (a.propensity == b.propensity).all(), name
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-5)
        np.testing.assert_allclose(a.states[0].buffer, b.states[0].buffer, rtol=0, atol=1e-5)
    model = one.model("drl_student")
    two = [SessionState.new(model, one.spec.recent_window)] * 2
    with pytest.raises(RankingInputError, match="batch_size=1"):
        build_lists(one, model, two, np.array([1, 2]), np.array([0, 0]),
                    np.concatenate([items, items]), 10)  # fmt: skip
    with pytest.raises(ValueError, match="batch_size=0"):
        load_bundle(DEFAULT, batch_size=0, warm=False)
