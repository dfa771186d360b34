"""MMRF's WatchTime actor in a bundle: parity with torch, the manifest entry, nothing
half-written, deterministic bytes, the run-folder path (``ranker export --mmrf``), and the
exported actor ranking like the torch actor online."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contract.bundle import read_manifest
from contract.features import DEFAULT_SPEC, REQUEST_LIST_SOURCES, SLOT_LIST_SOURCES
from tests.conftest import TINY_REWARD_SCALE, crowded_items, small_mmrf
from training.drl.networks import param_count
from training.export import ParityError, ServedActor, actor_export, export_bundle, real_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_actor_graphs_match_torch_within_1e_5_and_the_entry_carries_the_reward_scale(
    mmrf_bundle,
):
    path, net, _ = mmrf_bundle
    raw = json.loads((path / "manifest.json").read_text())
    entry = raw["models"]["mmrf_watchtime"]
    errs = entry["parity_max_abs_err"]
    want = {f"{w}/{g}" for w in ("random", "real") for g in ("request", "score", "step",
                                                              "composed")}  # fmt: skip
    assert set(errs) == want, errs
    assert max(errs.values()) <= 1e-5, errs
    assert entry["kind"] == "actor"
    assert entry["reward_scale"] == TINY_REWARD_SCALE
    assert entry["dims"]["action_dim"] == 6 and entry["dims"]["memory"] == 3
    # What is served: encoder, item projection, agents' projections, attention and actors;
    # the critics are not exported.
    served = param_count(ServedActor(net))
    critics = sum(p.numel() for p in net.critics.parameters())
    assert entry["params"] == served == param_count(net) - critics
    m = read_manifest(path)
    assert m.models["mmrf_watchtime"].stateful
    assert m.models["mmrf_watchtime"].reward_scale == TINY_REWARD_SCALE
    assert [t.name for t in m.models["mmrf_watchtime"].graphs["score"].outputs] == ["score"]


def test_composed_graphs_score_real_requests_as_the_torch_main_actor(mmrf_bundle, tiny_data):
    """Independently of the export's own check: onnxruntime's request + score on real windows
    (history encoded by the step graph's encoder) equal ``net.scores`` of the main agent and
    differ from an auxiliary agent's (the served agent is the main one)."""
    from runtime.bundle import load_bundle

    path, net, _ = mmrf_bundle
    _, _, req = tiny_data
    rb = real_batch(req, 3, 24, seed=5)
    model = load_bundle(path).model("mmrf_watchtime")
    with torch.no_grad():
        buf = net.encode(torch.from_numpy(rb.buffer_ids))
        s = net.state(buf, torch.from_numpy(rb.mask), torch.from_numpy(rb.user_ctx))
        main = net.scores(s, torch.from_numpy(rb.cand_ids)).numpy()
        click = net.scores(s, torch.from_numpy(rb.cand_ids), agent=0).numpy()
    cand, n_item = rb.cand_ids, len(DEFAULT_SPEC.group("item"))
    lists = DEFAULT_SPEC.group("list")
    req_cols = [n_item + j for j, f in enumerate(lists) if f.source in REQUEST_LIST_SOURCES]
    slot_cols = [n_item + j for j, f in enumerate(lists) if f.source in SLOT_LIST_SOURCES]
    assert sorted(req_cols + slot_cols) == list(range(n_item, cand.shape[2]))
    action, item_part = model.run("request", {
        "buffer": buf.numpy(), "mask": rb.mask, "user_ctx": rb.user_ctx,
        "cand_item": cand[..., :n_item], "request_list": cand[..., req_cols],
    })  # fmt: skip
    (score,) = model.run("score", {"action": action, "item_part": item_part,
                                   "slot_list": cand[..., slot_cols]})  # fmt: skip
    assert np.abs(score - main).max() <= 1e-5
    assert np.abs(score - click).max() > 1e-2


def test_a_failing_actor_export_writes_nothing(tiny_data, tmp_path):
    ds = tiny_data[0]
    net = small_mmrf(DEFAULT_SPEC, seed=1)
    out = tmp_path / "bad"
    with pytest.raises(ParityError, match=r"mmrf_watchtime\.request \(random\): output action"):
        export_bundle(out, [actor_export("mmrf_watchtime", net, DEFAULT_SPEC, TINY_REWARD_SCALE)],
                      DEFAULT_SPEC, ds.users(), ds.items(), atol=-1.0)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_actor_export_is_deterministic_whatever_the_thread_count(tiny_data, tmp_path):
    ds = tiny_data[0]
    got = []
    for i in range(2):
        torch.set_num_threads(1 + i)
        net = small_mmrf(DEFAULT_SPEC, seed=4)
        export_bundle(tmp_path / f"b{i}", [actor_export("a", net, DEFAULT_SPEC,
                                                        TINY_REWARD_SCALE)],
                      DEFAULT_SPEC, ds.users(), ds.items(), name="det")  # fmt: skip
        m = read_manifest(tmp_path / f"b{i}")
        got.append((m.bundle_version, m.raw["weights"]["sha256"],
                    {g: s.sha256 for g, s in m.models["a"].graphs.items()}))  # fmt: skip
    torch.set_num_threads(1)
    assert got[0] == got[1]


def test_mmrf_co_concatenation_exports_within_1e_5(tiny_data, tmp_path):
    ds, _, req = tiny_data
    net = small_mmrf(DEFAULT_SPEC, seed=6, collaboration="concat")
    co = actor_export("co", net, DEFAULT_SPEC, TINY_REWARD_SCALE)
    m = export_bundle(tmp_path / "co", [co], DEFAULT_SPEC, ds.users(), ds.items(),
                      real=real_batch(req, 4, 16))  # fmt: skip
    errs = m["models"]["co"]["parity_max_abs_err"]
    assert "real/step" in errs and max(errs.values()) <= 1e-5, errs


def test_ranker_export_adds_an_mmrf_run_folder_as_mmrf_watchtime(tiny_data, tmp_path, capsys):
    """``ranker export --drl RUN --mmrf RUN``: the MMRF checkpoint's main actor and reward
    scale land in the bundle as ``mmrf_watchtime`` beside the DRL-Rec student and teacher."""
    from training.cli import main
    from training.drl.train import DRLConfig, DRLTrainer
    from training.mmrf.rewards import fit_reward_scale
    from training.mmrf.train import MMRFConfig, MMRFTrainer

    ds, side, _ = tiny_data
    drl = DRLTrainer(DRLConfig(d_r=4, gru_hidden=8, mlp=(8, 4, 4), memory=4), side)
    drl.save(tmp_path / "drl" / "checkpoint.pt")
    (tmp_path / "drl" / "train.json").write_text(json.dumps({"steps": 0, "instances": 0}))
    scale = fit_reward_scale(ds.paths("train"))
    cfg = MMRFConfig(d_r=4, gru_hidden=8, memory=5, agent_dim=8, heads=2, action_dim=4,
                     actor_hidden=(8,), critic_mlp=(8,), model_hidden=(8,))  # fmt: skip
    mm = MMRFTrainer(cfg, side, scale)
    mm.save(tmp_path / "mmrf" / "checkpoint.pt")
    summary = {"steps": 0, "instances": 0, "eval_split": "valid",
               "eval": {"main_gauc_click": 0.5, "model_auc_click": 0.6}}  # fmt: skip
    (tmp_path / "mmrf" / "train.json").write_text(json.dumps(summary))
    out = tmp_path / "bundle"
    argv = ["export", "--drl", str(tmp_path / "drl"), "--mmrf", str(tmp_path / "mmrf"),
            "--data", str(ds.root), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "mmrf_watchtime" in capsys.readouterr().out
    m = read_manifest(out)
    assert set(m.models) == {"drl_student", "drl_teacher", "mmrf_watchtime"}
    e = m.models["mmrf_watchtime"]
    assert e.kind == "actor" and e.reward_scale == scale.to_dict()
    assert e.dims["memory"] == 5  # its own window, not DRL-Rec's 4
    assert e.metrics == {"eval_split": "valid", "main_gauc_click": 0.5}
    assert e.training["config"]["action_dim"] == 4
    from training.mmrf.networks import actor_flops_per_request

    assert e.flops_per_request == actor_flops_per_request(mm.net.cfg) > 0
    assert max(m.raw["models"]["mmrf_watchtime"]["parity_max_abs_err"].values()) <= 1e-5
    assert "real/step" in m.raw["models"]["mmrf_watchtime"]["parity_max_abs_err"]
    # Missing run folder: refused before anything is written.
    assert main([*argv[:3], "--mmrf", str(tmp_path / "none"), *argv[5:7], "--out",
                 str(tmp_path / "b2")]) == 2  # fmt: skip
    assert "finished MMRF run folder" in capsys.readouterr().err
    assert not (tmp_path / "b2").exists()


def test_exported_actor_ranks_like_the_torch_actor_online(mmrf_bundle, tiny_data):
    """Train/serve parity: driven through the list builder in the simulator, the exported
    actor shows the torch actor's greedy slates (same world, same sessions, several requests
    of each, so the cached window carries across requests)."""
    from runtime.bundle import load_bundle
    from training.data.features import SideTables
    from training.eval.online import run_online
    from training.eval.policies import ActorPolicy, BundlePolicy
    from training.sim.config import preset
    from training.sim.world import build_world

    ds = tiny_data[0]
    path, net, _ = mmrf_bundle
    side = SideTables.from_tables(ds.users(), crowded_items(ds.items()))
    slates: dict[str, list[np.ndarray]] = {}
    requests: dict[str, list[np.ndarray]] = {}

    def recorder(name, policy):
        class Rec:
            def rank(self, obs, k):
                s = policy.rank(obs, k)
                slates.setdefault(name, []).append(s.copy())
                requests.setdefault(name, []).append(obs.request_index.copy())
                return s

            def observe_feedback(self, obs, slate, fb):
                policy.observe_feedback(obs, slate, fb)

        return Rec()

    policies = {
        "torch": recorder("torch", ActorPolicy(net, side)),
        "onnx": recorder("onnx", BundlePolicy(load_bundle(path), "mmrf_watchtime")),
    }
    res = run_online(build_world(preset("tiny")), policies, users=np.arange(40), days=[3],
                     progress=False)  # fmt: skip
    a, b = np.concatenate(slates["torch"]), np.concatenate(slates["onnx"])
    assert a.shape == b.shape and len(a) > 20
    assert (a == b).all(axis=1).mean() == 1.0
    assert np.concatenate(requests["torch"]).max() >= 1  # later requests of a session
    np.testing.assert_array_equal(res.per_session("torch")["watch_time"],
                                  res.per_session("onnx")["watch_time"])  # fmt: skip
