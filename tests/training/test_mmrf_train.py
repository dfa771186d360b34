"""MMRF training: Eq. 4's update paths, simulated samples, variants, targets, resume, the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from training.drl.batches import request_order
from training.mmrf.losses import simulated_reward
from training.mmrf.rewards import aspect_rewards, fit_reward_scale
from training.mmrf.train import MMRFConfig, MMRFTrainer, eq4_actor_loss, main

SMALL = MMRFConfig(
    batch_size=32, d_r=4, gru_hidden=8, memory=4, agent_dim=8, heads=2, action_dim=4,
    actor_hidden=(8,), critic_mlp=(8,), model_hidden=(8,), sessions_per_chunk=32,
    model_warmup=0, sim_batch=16, log_every=2,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tiny_data):
    ds, side, req = tiny_data
    return ds, side, req, fit_reward_scale(ds.paths("train"))


def _trainer(data, **kw) -> MMRFTrainer:
    _, side, _, scale = data
    return MMRFTrainer(SMALL.with_overrides(**kw), side, scale)


def _batch(tr: MMRFTrainer, req, seed: int = 0, n: int = 32):
    return tr.batch(req, request_order(req, np.random.default_rng(seed))[:n])


def _touched(params) -> bool:
    return any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in params)


def _state(tr: MMRFTrainer, b):
    t = b.real
    return tr.net.state(tr.net.encode(t.hist_ids), t.hist_mask, t.user_ctx)


def test_eq4_main_goal_reaches_the_whole_joint_policy_and_no_critic(data):
    tr = _trainer(data)
    net = tr.net
    eq4_actor_loss(net, _state(tr, _batch(tr, data[2])), 1.0, [0.0] * 6).backward()
    assert _touched(net.main_actor.parameters()) and _touched(net.attention.parameters())
    for k in range(6):
        assert _touched(net.aux_actors[k].parameters()), k
    for k in range(7):
        assert _touched(net.agent_state[k].parameters()), k
    assert not _touched(net.critic_parameters())  # critics, encoder, item projection


@pytest.mark.parametrize("k", [0, 4])
def test_eq4_auxiliary_goal_reaches_only_the_agents_own_parameters(data, k):
    tr = _trainer(data)
    net = tr.net
    beta = [0.0] * 6
    beta[k] = 1.0
    eq4_actor_loss(net, _state(tr, _batch(tr, data[2])), 0.0, beta).backward()
    assert _touched(net.aux_actors[k].parameters()) and _touched(net.agent_state[k].parameters())
    others = [p for j, a in enumerate(net.aux_actors) if j != k for p in a.parameters()]
    others += [p for j, a in enumerate(net.agent_state) if j != k for p in a.parameters()]
    others += [*net.main_actor.parameters(), *net.attention.parameters()]
    assert not _touched(others)
    assert not _touched(net.critic_parameters())


def test_simulated_transitions_are_eq6_of_the_model_on_picked_non_impressions(data):
    tr = _trainer(data, sim_picks=2)
    b = _batch(tr, data[2])
    sims = tr.simulate(b)
    per_state = b.pool_mask.sum(1).clamp(max=2)
    assert len(sims) == int(per_state.sum()) > 0 and bool(sims.simulated.all())
    # Every simulated action is one of its state's sampled non-impressions.
    owner = torch.repeat_interleave(torch.arange(32), per_state)
    for i in range(len(sims)):
        pool = b.pool_ids[owner[i]][b.pool_mask[owner[i]]]
        assert (pool == sims.action[i]).all(1).any()
    torch.testing.assert_close(sims.hist_ids, b.real.hist_ids[owner])
    # The rewards are Eq. 6 of M (eval mode) at the real state, hate negated.
    tr.model.eval()
    with torch.no_grad():
        z, z2 = tr.model(tr.model.encode(sims.hist_ids), sims.hist_mask, sims.user_ctx,
                         sims.action[:, None])  # fmt: skip
    fb = simulated_reward(torch.sigmoid(z[:, 0]), torch.sigmoid(z2[:, 0]), 1.0)
    torch.testing.assert_close(sims.reward, aspect_rewards(fb))


def test_mmrf_ns_rewards_are_the_constant_and_mmrf_da_adds_no_samples(data):
    req = data[2]
    ns = _trainer(data, non_impressions="constant", ns_reward=-0.3)
    ns.step(_batch(ns, req))
    assert len(ns.buffer) > 0 and bool((ns.buffer.data.reward[: len(ns.buffer)] == -0.3).all())
    da = _trainer(data, non_impressions="none")
    m = da.step(_batch(da, req))
    assert len(da.buffer) == 0 and m["charts/simulated_share"] == 0.0
    assert "losses/model" not in m  # M is not needed without simulated feedback


def test_model_simulations_wait_for_the_warmup(data):
    tr = _trainer(data, model_warmup=2)
    req = data[2]
    for i in range(2):
        m = tr.step(_batch(tr, req, seed=i))
        assert len(tr.buffer) == 0 and "losses/model_watch_time" in m
    m = tr.step(_batch(tr, req, seed=2))
    assert len(tr.buffer) > 0 and m["charts/simulated_share"] > 0


def test_a_step_moves_the_targets_softly_and_mmrf_co_trains(data):
    for collaboration in ("attention", "concat"):
        tr = _trainer(data, collaboration=collaboration, target_tau=0.25)
        old_target = copy.deepcopy(tr.target)
        m = tr.step(_batch(tr, data[2]))
        assert all(np.isfinite(v) for v in m.values())
        for pt, po, p in zip(tr.target.parameters(), old_target.parameters(),
                             tr.net.parameters(), strict=True):  # fmt: skip
            torch.testing.assert_close(pt, 0.75 * po + 0.25 * p)


def test_interrupted_and_resumed_run_ends_where_an_uninterrupted_one_does(data, tmp_path):
    from training.drl.train import train

    ds, side, _, scale = data
    cfg = SMALL.with_overrides(max_instances=4 * 32, sim_batch=8)
    straight = MMRFTrainer(cfg, side, scale)
    train(straight, ds, progress=False)
    first = MMRFTrainer(cfg.with_overrides(max_instances=2 * 32), side, scale)
    train(first, ds, out=tmp_path, progress=False)
    resumed = MMRFTrainer(cfg, side, scale)
    train(resumed, ds, out=tmp_path, resume=True, progress=False)
    assert resumed.step_count == straight.step_count == 4
    for name in ("net", "model"):
        for pa, pb in zip(getattr(straight, name).parameters(),
                          getattr(resumed, name).parameters(), strict=True):  # fmt: skip
            torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["reward_scale"] == (
        scale.to_dict()
    )


def test_cli_trains_the_tiny_world_end_to_end(data, tmp_path, capsys):
    ds = data[0]
    sets = ["batch_size=32", "d_r=4", "gru_hidden=8", "memory=4", "agent_dim=8", "heads=2",
            "action_dim=4", "actor_hidden=8", "critic_mlp=8", "model_hidden=8",
            "sessions_per_chunk=32", "model_warmup=2", "sim_batch=16", "max_instances=192",
            "log_every=2"]  # fmt: skip
    argv = ["--data", str(ds.root), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*argv, *[x for s in sets for x in ("--set", s)]]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 6 and out["instances"] == 192
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["eval_split"] == "valid" and 0 < summary["eval"]["main_gauc_click"] < 1
    assert summary["history"][-1]["charts/simulated_share"] > 0
    assert "losses/critic_watch_time" in summary["history"][-1]
    saved = json.loads((tmp_path / "run" / "reward_scale.json").read_text())
    assert saved == fit_reward_scale(ds.paths("train")).to_dict()
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert summary["eval"]["non_impressions"] > 0 and summary["eval"]["model_kl_impressions"] > 0
    # A finished run is not overwritten by accident.
    assert main([*argv, "--set", "max_instances=32"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_cli_help_and_bad_settings(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "mmrf-ns" in capsys.readouterr().out
    argv = ["--data", str(data[0].root), "--out", str(tmp_path / "x"), "--no-progress"]
    assert main([*argv, "--set", "gamma=1.5"]) == 2
    assert "gamma=" in capsys.readouterr().err
    assert main([*argv, "--variant", "mmrf-co", "--set", "collaboration=attention"]) == 2
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "nowhere: not a folder" in capsys.readouterr().err  # the dataset check, first
    assert not (tmp_path / "x").exists()


def test_the_feedback_model_does_not_depend_on_the_agents_architecture(data):
    a, b = _trainer(data), _trainer(data, collaboration="concat", action_dim=6)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def _poison_batch(trainer: MMRFTrainer, at: int) -> None:
    """Seam: the ``at``-th batch the loop draws (1-based) carries NaN rewards."""
    import dataclasses

    make = trainer.batch
    drawn = [0]

    def batch(req, g):
        b = make(req, g)
        drawn[0] += 1
        if drawn[0] == at:
            nan = torch.full_like(b.real.reward, float("nan"))
            b = dataclasses.replace(b, real=dataclasses.replace(b.real, reward=nan))
        return b

    trainer.batch = batch  # type: ignore[method-assign]


def test_nan_loss_stops_the_run_at_its_step_and_keeps_the_last_good_checkpoint(data, tmp_path):
    from training.divergence import DivergenceError
    from training.drl.train import train

    ds = data[0]
    tr = _trainer(data, max_instances=8 * 32)
    _poison_batch(tr, at=3)
    with pytest.raises(DivergenceError) as e:
        train(tr, ds, out=tmp_path, checkpoint_every=1, progress=False)
    assert e.value.step == 3 and tr.step_count == 3
    assert "losses/critic_click" in e.value.values and "losses/critic" in e.value.values
    assert "diverged at step 3: non-finite losses/critic_click=nan" in str(e.value)
    assert not (tmp_path / "train.json").exists()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 2


def test_cli_divergence_is_one_line_and_exit_3(data, tmp_path, capsys):
    ds = data[0]
    sets = ["batch_size=32", "d_r=4", "gru_hidden=8", "memory=4", "agent_dim=8", "heads=2",
            "action_dim=4", "actor_hidden=8", "critic_mlp=8", "model_hidden=8",
            "sessions_per_chunk=32", "sim_batch=16", "max_instances=640", "critic_lr=1e30",
            "actor_lr=1e30"]  # fmt: skip
    argv = ["--data", str(ds.root), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*argv, *[x for s in sets for x in ("--set", s)]]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mmrf: error: training diverged at step")
    assert "non-finite losses/" in err
    assert not (tmp_path / "run" / "train.json").exists()


def test_ranker_mmrf_train_divergence_is_one_line_and_exit_3(data, tmp_path, capsys):
    from training.cli import main as ranker

    sets = ["batch_size=32", "d_r=4", "gru_hidden=8", "memory=4", "agent_dim=8", "heads=2",
            "action_dim=4", "actor_hidden=8", "critic_mlp=8", "model_hidden=8",
            "sessions_per_chunk=32", "sim_batch=16", "max_instances=640", "critic_lr=1e30",
            "actor_lr=1e30"]  # fmt: skip
    out = tmp_path / "run"
    argv = ["mmrf-train", "--data", str(data[0].root), "--out", str(out), "--no-progress"]
    assert ranker([*argv, *[x for s in sets for x in ("--set", s)]]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("ranker mmrf-train: error: training diverged at step")
    assert not out.exists()  # no checkpoint before the divergence: no folder is left


def test_evaluation_reads_a_hashed_share_of_the_split_or_all_of_it(data):
    from training.harness.data import split_impressions
    from training.mmrf.train import evaluate_mmrf

    ds = data[0]
    tr = _trainer(data)
    whole = evaluate_mmrf(tr, ds, "valid", max_impressions=0)
    assert whole["impressions"] == split_impressions(ds, "valid")
    part = evaluate_mmrf(tr, ds, "valid", max_impressions=whole["impressions"] // 4)
    assert 0 < part["impressions"] < whole["impressions"] / 2  # whole sessions, about a quarter
    assert evaluate_mmrf(tr, ds, "valid", max_impressions=whole["impressions"] // 4) == part
