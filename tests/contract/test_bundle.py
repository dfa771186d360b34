"""A bundle that breaks the contract is refused at load, naming the file and the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from contract.bundle import BundleError, expected_io, read_manifest
from contract.features import DEFAULT_SPEC
from runtime.bundle import load_bundle


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle[0], out)
    return out


def _edit_manifest(path: Path, edit) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_an_intact_bundle_loads_with_its_spec_and_models(bundle_copy):
    m = read_manifest(bundle_copy)
    assert m.spec == DEFAULT_SPEC
    assert set(m.models) == {"q", "wd"}
    assert m.models["q"].stateful and not m.models["wd"].stateful
    b = load_bundle(bundle_copy)
    assert b.version == m.bundle_version and b.version.startswith("tiny-")


def test_a_tampered_file_is_refused_naming_it(bundle_copy):
    w = bundle_copy / "weights.bin"
    data = bytearray(w.read_bytes())
    data[100] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"weights\.bin: sha256 .* differs from the manifest"):
        load_bundle(bundle_copy)


def test_a_tampered_graph_is_refused_naming_it(bundle_copy):
    g = bundle_copy / "q.score.onnx"
    g.write_bytes(g.read_bytes() + b"\0")
    with pytest.raises(BundleError, match=r"q\.score\.onnx: sha256"):
        load_bundle(bundle_copy)


def test_a_missing_graph_file_is_refused_naming_it(bundle_copy):
    (bundle_copy / "q.step.onnx").unlink()
    with pytest.raises(BundleError, match=r"q\.step\.onnx: missing"):
        load_bundle(bundle_copy)


def test_a_graph_missing_from_the_manifest_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["models"]["q"]["graphs"].pop("step"))
    with pytest.raises(BundleError, match=r"models\.q\.graphs: graph 'step' is missing"):
        load_bundle(bundle_copy)


def test_a_feature_spec_that_does_not_match_the_graphs_is_refused(bundle_copy):
    def drop_field(m):
        m["feature_spec"]["fields"] = [f for f in m["feature_spec"]["fields"]
                                       if f["name"] != "music_type"]  # fmt: skip

    _edit_manifest(bundle_copy, drop_field)
    with pytest.raises(BundleError, match=r"models\.q\.dims: field 'n_item' is 6 but the .* has 5"):
        load_bundle(bundle_copy)


def test_a_malformed_feature_spec_is_refused_naming_the_field(bundle_copy):
    def bad(m):
        m["feature_spec"]["fields"][0]["kind"] = "weird"

    _edit_manifest(bundle_copy, bad)
    with pytest.raises(BundleError, match=r"feature_spec.*'user_id'.*kind 'weird'"):
        load_bundle(bundle_copy)


def test_a_wrong_dtype_is_refused_naming_the_input(bundle_copy):
    def bad(m):
        m["models"]["q"]["graphs"]["score"]["inputs"][2]["dtype"] = "float32"

    _edit_manifest(bundle_copy, bad)
    with pytest.raises(BundleError, match=r"models\.q\.graphs\.score\.inputs: .*slot_list"):
        load_bundle(bundle_copy)


def test_a_manifest_that_lies_about_the_graph_is_refused_by_onnxruntime_check(bundle_copy):
    """The manifest agrees with the interface but the file on disk is another graph."""
    shutil.copy(bundle_copy / "q.request.onnx", bundle_copy / "q.score.onnx")

    def rehash(m):
        from contract.bundle import sha256_file

        m["models"]["q"]["graphs"]["score"]["sha256"] = sha256_file(bundle_copy / "q.score.onnx")

    _edit_manifest(bundle_copy, rehash)
    with pytest.raises(BundleError, match=r"q\.score\.onnx: graph inputs .* differ"):
        load_bundle(bundle_copy)


def test_an_unknown_manifest_version_and_missing_manifest_are_refused(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="manifest.json: missing"):
        read_manifest(tmp_path)
    _edit_manifest(bundle_copy, lambda m: m.update(manifest_version="99"))
    with pytest.raises(BundleError, match="'manifest_version' is '99'"):
        read_manifest(bundle_copy)


def test_expected_io_names_missing_dims_and_kinds():
    with pytest.raises(BundleError, match="kind 'lstm'"):
        expected_io("lstm", {})
    with pytest.raises(BundleError, match=r"lack \['memory', 'enc_dim'\]"):
        expected_io("q_network", {"n_user_ctx": 1, "n_item": 1, "n_list_request": 1,
                                  "n_list_slot": 1, "hidden": 2})  # fmt: skip


def test_a_spec_whose_groups_are_out_of_order_is_refused(bundle_copy):
    def swap(m):
        f = m["feature_spec"]["fields"]
        i = next(j for j, x in enumerate(f) if x["name"] == "music_type")
        f[i], f[i + 1] = f[i + 1], f[i]  # the first list field before the last item field

    _edit_manifest(bundle_copy, swap)
    with pytest.raises(BundleError, match=r"grouped as user, context, item, list.*'position'"):
        load_bundle(bundle_copy)


@pytest.fixture
def mmrf_copy(mmrf_bundle, tmp_path) -> Path:
    out = tmp_path / "m"
    shutil.copytree(mmrf_bundle[0], out)
    return out


def test_an_actor_loads_with_its_reward_scale_and_a_bad_scale_is_refused(mmrf_copy):
    b = load_bundle(mmrf_copy)
    actor = b.model("mmrf_watchtime")
    assert actor.spec.kind == "actor" and actor.stateful and actor.memory == 3
    good = dict(actor.spec.reward_scale)
    assert good["cap"] > 0

    def set_scale(**scale):
        def edit(m):
            m["models"]["mmrf_watchtime"]["reward_scale"] = scale

        _edit_manifest(mmrf_copy, edit)

    entry = "models.mmrf_watchtime"
    for bad, match in (
        ({}, rf"{entry}\.reward_scale: field 'cap' is missing"),
        ({**good, "cap": 0.0}, r"field 'cap' is 0\.0, out of range"),
        ({**good, "quantile": 1.5}, r"field 'quantile' is 1\.5, out of range"),
        ({**good, "count": "many"}, r"field 'count' has str 'many'"),
    ):
        set_scale(**bad)
        with pytest.raises(BundleError, match=match):
            read_manifest(mmrf_copy, verify_hashes=False)
    _edit_manifest(mmrf_copy, lambda m: m["models"]["mmrf_watchtime"].pop("reward_scale"))
    with pytest.raises(BundleError, match=rf"{entry}: field 'reward_scale' is missing"):
        read_manifest(mmrf_copy, verify_hashes=False)
    set_scale(**good)
    m = read_manifest(mmrf_copy, verify_hashes=False)
    assert m.models["mmrf_watchtime"].reward_scale == good


def test_a_q_network_relabelled_as_an_actor_is_refused_by_the_interface(mmrf_copy):
    def relabel(m):
        q = m["models"]["q"]
        q["kind"] = "actor"
        q["dims"]["action_dim"] = q["dims"]["hidden"]
        q["reward_scale"] = m["models"]["mmrf_watchtime"]["reward_scale"]

    _edit_manifest(mmrf_copy, relabel)
    with pytest.raises(BundleError, match=r"models\.q\.graphs\.request\.outputs: .*'state_part'"
                                          r".* differ from the actor interface"):  # fmt: skip
        read_manifest(mmrf_copy, verify_hashes=False)


def test_expected_io_of_an_actor_names_its_action_and_score():
    dims = {"n_user_ctx": 2, "n_item": 3, "n_list_request": 1, "n_list_slot": 1}
    with pytest.raises(BundleError, match=r"lack \['action_dim', 'memory', 'enc_dim'\]"):
        expected_io("actor", dims)
    io = expected_io("actor", {**dims, "action_dim": 5, "memory": 4, "enc_dim": 7})
    assert [t.name for t in io["request"][1]] == ["action", "item_part"]
    assert [t.shape for t in io["request"][1]] == [("B", 5), ("B", "C", 5)]
    assert [t.name for t in io["score"][0]] == ["action", "item_part", "slot_list"]
    assert [(t.name, t.shape) for t in io["score"][1]] == [("score", ("B", "C"))]
    assert [t.name for t in io["step"][1]] == ["next_buffer", "next_mask", "action"]
