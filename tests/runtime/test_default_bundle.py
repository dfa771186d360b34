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
    assert set(m.models) == {"drl_student", "drl_teacher", "wide_deep_weighted"}
    for name, entry in m.raw["models"].items():
        assert max(entry["parity_max_abs_err"].values()) <= 1e-5, name
        assert entry["metrics"]["auc_test"] > 0.65, name
    student, teacher = m.models["drl_student"], m.models["drl_teacher"]
    assert student.params < 0.5 * teacher.params
    bundle = load_bundle(DEFAULT)  # graphs against the manifest, warm-up through every graph
    model = bundle.model("drl_student")
    out = build_lists(bundle, model, [SessionState.new(model, bundle.spec.recent_window)],
                      np.array([int(bundle.tables.user_ids[0])]), np.array([1_700_000_000_000]),
                      bundle.tables.item_ids[:200][None], 10)  # fmt: skip
    assert len(set(out.item_ids[0].tolist())) == 10 and not out.unknown.any()
