"""Export: parity with torch, nothing half-written, determinism, and online twins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contract.bundle import read_manifest
from contract.features import DEFAULT_SPEC
from tests.conftest import crowded_items, small_models
from training.drl.networks import QNetConfig, QNetwork
from training.export import ParityError, export_bundle, pointwise_export, q_export

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_graph_matches_torch_within_1e_5_on_random_and_real_inputs(tiny_bundle):
    m = json.loads((tiny_bundle[0] / "manifest.json").read_text())
    for name, entry in m["models"].items():
        errs = entry["parity_max_abs_err"]
        assert {"random/request", "random/score", "random/composed", "real/composed"} <= set(errs)
        assert max(errs.values()) <= 1e-5, (name, errs)
    assert "real/step" in m["models"]["q"]["parity_max_abs_err"]
    # Shared weights: the graphs hold structure, weights.bin the tensors, once.
    assert m["weights"]["bytes"] < m["weights"]["graph_bytes_unshared"]
    assert m["models"]["q"]["bytes"] < m["weights"]["graph_bytes_unshared"]


def test_a_bundle_that_fails_verification_is_not_written(tiny_data, tmp_path):
    ds = tiny_data[0]
    q, _ = small_models(DEFAULT_SPEC)
    out = tmp_path / "bad"
    with pytest.raises(ParityError, match=r"q\.request \(random\): output state_part differs"):
        export_bundle(out, [q_export("q", q, DEFAULT_SPEC)], DEFAULT_SPEC, ds.users(),
                      ds.items(), atol=-1.0)  # fmt: skip
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind


def test_an_existing_bundle_is_refused_without_overwrite(tiny_bundle, tiny_data):
    ds = tiny_data[0]
    q, _ = small_models(DEFAULT_SPEC)
    before = (tiny_bundle[0] / "manifest.json").read_text()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_bundle(tiny_bundle[0], [q_export("q", q, DEFAULT_SPEC)], DEFAULT_SPEC,
                      ds.users(), ds.items())  # fmt: skip
    assert (tiny_bundle[0] / "manifest.json").read_text() == before


def test_export_is_deterministic_whatever_the_thread_count(tiny_data, tmp_path):
    ds = tiny_data[0]
    versions = []
    for i in range(2):
        torch.set_num_threads(1 + i)  # folded tables must not depend on the summation order
        _, wd = small_models(DEFAULT_SPEC, seed=5)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)  # teacher-sized: products large enough to be threaded
            q = QNetwork(QNetConfig.from_spec(DEFAULT_SPEC)).eval()
        export_bundle(tmp_path / f"b{i}", [q_export("q", q, DEFAULT_SPEC),
                                           pointwise_export("wd", wd, DEFAULT_SPEC)],
                      DEFAULT_SPEC, ds.users(), ds.items(), name="det")  # fmt: skip
        m = read_manifest(tmp_path / f"b{i}")
        versions.append((m.bundle_version, m.raw["weights"]["sha256"],
                         {n: {g: s.sha256 for g, s in e.graphs.items()}
                          for n, e in m.models.items()}))  # fmt: skip
    assert versions[0] == versions[1]


def test_exported_models_rank_like_their_torch_twins_online(tiny_bundle, tiny_data):
    """Driven through the list builder in the simulator, the exported Q network and Wide&Deep
    show the same slates as the torch policies (greedy, same world, same sessions)."""
    from runtime.bundle import load_bundle
    from training.data.features import SideTables
    from training.eval.online import run_online
    from training.eval.policies import BundlePolicy, PointwisePolicy, QPolicy
    from training.sim.config import preset
    from training.sim.world import build_world

    ds = tiny_data[0]
    path, q, wd = tiny_bundle
    side = SideTables.from_tables(ds.users(), crowded_items(ds.items()))
    world = build_world(preset("tiny"))
    # The bundle's items have crowded authors; give the world's policies the same tables.
    bundle = load_bundle(path)
    users = np.arange(40)
    slates: dict[str, list[np.ndarray]] = {}

    def recorder(name, policy):
        class Rec:
            def rank(self, obs, k):
                s = policy.rank(obs, k)
                slates.setdefault(name, []).append(s.copy())
                return s

            def observe_feedback(self, obs, slate, fb):
                if hasattr(policy, "observe_feedback"):
                    policy.observe_feedback(obs, slate, fb)

        return Rec()

    policies = {
        "torch_q": recorder("torch_q", QPolicy(q, side)),
        "onnx_q": recorder("onnx_q", BundlePolicy(bundle, "q")),
        "torch_wd": recorder("torch_wd", PointwisePolicy(wd, side)),
        "onnx_wd": recorder("onnx_wd", BundlePolicy(bundle, "wd")),
    }
    res = run_online(world, policies, users=users, days=[3], progress=False)
    for a, b in (("torch_q", "onnx_q"), ("torch_wd", "onnx_wd")):
        sa, sb = np.concatenate(slates[a]), np.concatenate(slates[b])
        assert sa.shape == sb.shape and len(sa) > 20
        assert (sa == sb).all(axis=1).mean() == 1.0, (a, b)
        np.testing.assert_array_equal(res.per_session(a)["click"], res.per_session(b)["click"])
    assert torch.get_num_threads() == 1


def test_default_bundle_refuses_an_existing_output_before_any_work(tmp_path):
    from training.bundles import build_default_bundle

    out = tmp_path / "bundle"
    out.mkdir()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        build_default_bundle(out, data=tmp_path / "no-data", work=tmp_path / "work")
    assert not (tmp_path / "no-data").exists() and not (tmp_path / "work").exists()
