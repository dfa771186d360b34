"""MMRF's multi-agent baselines: Pareto's weight search, TSCAC's constraint, MASSA's signal
network, and each trains on the tiny world and ranks online (training/mmrf/baselines.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contract.bundle import BundleError
from training.bundles import load_mmrf_run
from training.drl.batches import request_order
from training.mmrf.baselines import (
    IndependentAgents,
    ParetoAgents,
    SignalAgents,
    TSCACTrainer,
    action_distances,
    balanced_choice,
    choose_pareto_weights,
    dual_update,
    pareto_mask,
    simplex_grid,
    tscac_actor_loss,
)
from training.mmrf.rewards import fit_reward_scale
from training.mmrf.train import MMRFConfig, eq4_actor_loss, main, make_trainer

SMALL = MMRFConfig(
    batch_size=32, d_r=4, gru_hidden=8, memory=4, agent_dim=8, heads=2, action_dim=4,
    actor_hidden=(8,), critic_mlp=(8,), model_hidden=(8,), sessions_per_chunk=32,
    non_impressions="none", log_every=2, massa_signal_dim=3,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tiny_data):
    ds, side, req = tiny_data
    return ds, side, req, fit_reward_scale(ds.paths("train"))


def _trainer(data, algorithm: str, **kw):
    _, side, _, scale = data
    return make_trainer(SMALL.with_overrides(algorithm=algorithm, **kw), side, scale)


def _state(tr, req, n: int = 32):
    b = tr.batch(req, request_order(req, np.random.default_rng(0))[:n])
    t = b.real
    return tr.net.state(tr.net.encode(t.hist_ids), t.hist_mask, t.user_ctx)


def _touched(params) -> bool:
    return any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in params)


# ---- Pareto: the weight search on a tiny frontier ----


def test_simplex_grid_lists_every_weight_in_steps():
    np.testing.assert_array_equal(
        simplex_grid(3, 2) * 2,
        [[0, 0, 2], [0, 1, 1], [0, 2, 0], [1, 0, 1], [1, 1, 0], [2, 0, 0]],
    )
    assert simplex_grid(7, 4).shape == (210, 7)  # C(10, 6)
    with pytest.raises(ValueError):
        simplex_grid(3, 0)


def test_pareto_mask_keeps_the_non_dominated_rows_and_equal_ones():
    obj = [[1, 0], [0, 1], [0.5, 0.5], [0.4, 0.4], [1, 0], [0.5, 0.4]]
    np.testing.assert_array_equal(pareto_mask(obj), [True, True, True, False, True, False])
    with pytest.raises(ValueError):
        pareto_mask([[np.nan, 1.0]])


def test_balanced_choice_takes_the_best_worst_normalised_objective():
    obj = np.array([[1, 0], [0, 1], [0.6, 0.5], [0.4, 0.4]])
    # normalised columns [1, 0, .6, .4] and [0, 1, .5, .4]: worst 0, 0, .5, .4
    assert balanced_choice(obj, pareto_mask(obj)) == 2
    assert balanced_choice(obj, [True, True, False, True]) == 3


def test_choose_pareto_weights_on_a_hand_computed_frontier():
    # One user, four impressions; agent 0 scores click exactly, agent 1 like.
    clicks, likes = np.array([1, 1, 0, 0.0]), np.array([1, 0, 1, 0.0])
    fb = np.stack([clicks, likes], axis=1)
    res = choose_pareto_weights(fb.copy(), fb, np.zeros(4), steps=2, aspects=("click", "like"))
    # w = (0, 1): GAUC click 0.5, like 1; (1, 0): 1, 0.5; (.5, .5): score 2,1,1,0 -> 0.875 both.
    assert res["candidates"] == 3 and res["efficient"] == 3
    assert res["weights"] == {"click": 0.5, "like": 0.5}
    assert res["objectives"] == pytest.approx({"click": 0.875, "like": 0.875})
    np.testing.assert_allclose(res["sd"], [0.5, 0.5])
    np.testing.assert_allclose(res["mix"], [1.0, 1.0])


def test_pareto_serves_the_mixed_score_and_its_agents_are_independent(data):
    tr = _trainer(data, "pareto")
    net = tr.net
    assert isinstance(net, ParetoAgents)
    s = _state(tr, data[2])
    eq4_actor_loss(net, s, 1.0, [0.0] * 6).backward()
    assert _touched(net.main_actor.parameters()) and _touched(net.agent_state[6].parameters())
    assert not _touched([p for a in net.aux_actors for p in a.parameters()])
    assert not _touched(net.critic_parameters())
    net.mix.copy_(torch.tensor([0.5, 0, 0, 2.0, 0, 0, 1.0]))
    cand = tr.batch(data[2], np.arange(4)).pool_ids[:, :3]
    with torch.no_grad():
        want = sum(w * net.scores(s[:4], cand, agent=i) for i, w in ((0, 0.5), (3, 2.0), (6, 1.0)))
        torch.testing.assert_close(net.scores(s[:4], cand), want)


# ---- TSCAC: the constraint and the two stages ----


def test_tscac_distances_loss_and_dual_update_by_hand():
    a_main = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    a_aux = torch.tensor([[[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]])
    d = action_distances(a_main, a_aux)  # k0: (1 + 0) / 4, k1: (0 + 4) / 4
    torch.testing.assert_close(d, torch.tensor([0.25, 1.0]))
    lam = torch.tensor([2.0, 0.5], requires_grad=True)
    dist = d.clone().requires_grad_(True)
    loss = tscac_actor_loss(torch.tensor([1.0, 3.0]), dist, lam)
    assert float(loss.detach()) == pytest.approx(-2.0 + 0.5 + 0.5)
    loss.backward()
    torch.testing.assert_close(dist.grad, torch.tensor([2.0, 0.5]))
    assert lam.grad is None  # multipliers move by dual ascent only
    new = dual_update(torch.tensor([1.0, 0.1]), torch.tensor([0.3, 0.0]), epsilon=0.1, lr=0.5)
    torch.testing.assert_close(new, torch.tensor([1.1, 0.05]))
    assert float(dual_update(torch.tensor([0.01]), torch.tensor([0.0]), 0.1, 1.0)) == 0.0
    with pytest.raises(ValueError):
        action_distances(a_main, a_aux[:, :, :1])


def test_tscac_stage1_moves_auxiliary_actors_stage2_only_the_main_one(data):
    tr = _trainer(data, "tscac", tscac_stage1_steps=1, tscac_lambda_lr=1.0, tscac_epsilon=0.0)
    assert isinstance(tr, TSCACTrainer) and isinstance(tr.net, IndependentAgents)
    net, req = tr.net, data[2]
    aux = [p for a in net.aux_actors for p in a.parameters()]
    loss, charts = tr.actor_objective(_state(tr, req))
    loss.backward()
    assert charts == {"charts/tscac_stage": 1.0}
    assert _touched(aux) and not _touched(net.main_actor.parameters())
    net.zero_grad(set_to_none=True)
    tr.step_count = 1
    lam0 = tr.lam.value.clone()
    loss, charts = tr.actor_objective(_state(tr, req))
    loss.backward()
    assert charts["charts/tscac_stage"] == 2.0
    assert _touched(net.main_actor.parameters()) and _touched(net.agent_state[6].parameters())
    assert not _touched(aux) and not _touched(net.critic_parameters())
    # epsilon 0: every constraint is violated, so every multiplier rises by its distance
    dist = torch.tensor([charts[f"charts/tscac_dist_{a}"] for a in
                         ("click", "like", "follow", "comment", "hate", "long_view")])  # fmt: skip
    torch.testing.assert_close(tr.lam.value, lam0 + dist)
    assert "tscac_lambda" in tr.state_dict()


# ---- MASSA: the signal network ----


def test_massa_signal_shapes_and_gradient_paths(data):
    tr = _trainer(data, "massa")
    net = tr.net
    assert isinstance(net, SignalAgents) and net.attention is None
    s = _state(tr, data[2])
    out = net.policy(s)
    assert net.signals(s).shape == (32, 7, 3) and out.e.shape == (32, 7, 3)
    assert out.actions.shape == (32, 7, 4)
    assert {id(p) for p in net.signal.parameters()} <= {id(p) for p in net.actor_parameters()}
    eq4_actor_loss(net, s, 1.0, [0.0] * 6).backward()  # main goal
    assert _touched(net.main_actor.parameters()) and _touched(net.signal.parameters())
    assert not _touched([p for a in net.aux_actors for p in a.parameters()])
    assert not _touched(net.critic_parameters())
    net.zero_grad(set_to_none=True)
    eq4_actor_loss(net, s, 0.0, [0, 0, 1.0, 0, 0, 0]).backward()  # follow's own goal
    assert _touched(net.aux_actors[2].parameters()) and _touched(net.agent_state[2].parameters())
    assert _touched(net.signal.parameters())
    others = [p for j, a in enumerate(net.aux_actors) if j != 2 for p in a.parameters()]
    assert not _touched([*others, *net.main_actor.parameters()])


# ---- each trains on the tiny world, and ranks online ----


@pytest.mark.parametrize("variant", ["pareto", "tscac", "massa"])
def test_each_baseline_trains_on_the_tiny_world_and_ranks_valid_slates(
    data, tmp_path, capsys, variant
):
    from training.eval.online import run_online
    from training.eval.policies import ActorPolicy
    from training.mmrf.train import MMRFTrainer
    from training.sim.config import preset
    from training.sim.world import build_world

    ds, side, _, scale = data
    sets = ["batch_size=32", "d_r=4", "gru_hidden=8", "memory=4", "agent_dim=8", "heads=2",
            "action_dim=4", "actor_hidden=8", "critic_mlp=8", "sessions_per_chunk=32",
            "max_instances=128", "log_every=2", "tscac_stage1_steps=2",
            "pareto_grid=2"]  # fmt: skip
    out = tmp_path / "run"
    argv = ["--data", str(ds.root), "--out", str(out), "--variant", variant, "--no-progress"]
    assert main([*argv, *[x for s in sets for x in ("--set", s)]]) == 0
    brief = json.loads(capsys.readouterr().out)
    assert brief["steps"] == 4 and 0 < brief["eval"]["main_gauc_click"] < 1
    summary = json.loads((out / "train.json").read_text())
    assert summary["method"] == variant and summary["config"]["algorithm"] == variant
    assert all(np.isfinite(v) for v in summary["history"][-1].values())
    if variant == "pareto":
        assert summary["pareto"]["candidates"] == 28  # C(8, 6)
    # The saved run reloads into the same trainer class, and its actor ranks online.
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    tr = make_trainer(MMRFConfig(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in ckpt["cfg"].items()}), side, scale)  # fmt: skip
    assert type(tr) is not MMRFTrainer
    tr.load_state_dict(ckpt)
    if variant == "pareto":
        np.testing.assert_allclose(tr.net.mix.numpy(), summary["pareto"]["mix"], rtol=1e-6)
    with pytest.raises(BundleError, match="baseline run"):  # not exported as mmrf_watchtime
        load_mmrf_run(out)
    world = build_world(preset("tiny"))
    seen = []

    class Rec(ActorPolicy):
        def rank(self, obs, k):
            s = super().rank(obs, k)
            seen.append((s.copy(), obs.candidates.shape[1]))
            return s

    res = run_online(world, {variant: Rec(tr.net, side)}, users=np.arange(20), days=[3],
                     progress=False)  # fmt: skip
    assert seen and res.per_session(variant)["impressions"].sum() > 0
    for slate, c in seen:
        assert slate.shape[1] == world.cfg.list_size
        assert ((slate >= 0) & (slate < c)).all()
        assert all(len(set(row.tolist())) == len(row) for row in slate)  # distinct items


def test_baseline_variants_refuse_a_clashing_setting(data, tmp_path, capsys):
    argv = ["--data", str(data[0].root), "--out", str(tmp_path / "x"), "--no-progress"]
    assert main([*argv, "--variant", "pareto", "--set", "non_impressions=model"]) == 2
    assert "non_impressions" in capsys.readouterr().err
    assert main([*argv, "--set", "algorithm=bogus"]) == 2
    assert "algorithm" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ---- ranker mmrf-train: drl-train's options and run-folder rules ----


def test_ranker_mmrf_train_variants_are_the_trainers():
    from training.cli import MMRF_VARIANTS
    from training.mmrf.train import VARIANTS

    assert set(MMRF_VARIANTS) == set(VARIANTS)


def test_ranker_mmrf_train_keeps_run_folders_safe(data, tmp_path, capsys):
    import hashlib

    from training.cli import main as ranker

    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip

    sets = ["batch_size=32", "d_r=4", "gru_hidden=8", "memory=4", "agent_dim=8", "heads=2",
            "action_dim=4", "actor_hidden=8", "critic_mlp=8", "sessions_per_chunk=32",
            "max_instances=64", "tscac_stage1_steps=1"]  # fmt: skip
    out = tmp_path / "run"
    args = ["mmrf-train", "--data", str(data[0].root), "--out", str(out), "--variant", "tscac",
            "--no-progress", "--threads", "1",
            *[x for s in sets for x in ("--set", s)]]  # fmt: skip
    assert ranker(args) == 0
    assert "trained 64 instances" in capsys.readouterr().out
    first = digest(out)
    assert {"checkpoint.pt", "train.json", "reward_scale.json"} <= set(first)
    assert ranker(args) == 2  # an existing run: refused, unchanged
    assert "--resume" in capsys.readouterr().err and digest(out) == first
    assert ranker([*args, "--resume"]) == 0  # finished: reported, nothing rewritten
    assert "finished run" in capsys.readouterr().out and digest(out) == first
    assert ranker([*args, "--set", "max_instances=96", "--resume"]) == 2  # another config
    assert "another config" in capsys.readouterr().err and digest(out) == first
    bad = tmp_path / "bad"
    base = ["mmrf-train", "--data", str(data[0].root), "--out", str(bad), "--no-progress"]
    refused = ((["--set", "gamma=1.5"], "gamma"), (["--set", "nope=1"], "nope"),
               (["--device", "cuda:7"], "cuda"), (["--checkpoint-every", "0"], "checkpoint-every"),
               (["--variant", "massa", "--set", "algorithm=mmrf"], "algorithm"))  # fmt: skip
    for extra, word in refused:
        assert ranker([*base, *extra]) == 2, extra
        assert word in capsys.readouterr().err, extra
    assert not bad.exists()
