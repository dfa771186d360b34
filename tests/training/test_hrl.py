"""HRL-Rec's item recommender (DDPG): target, actor/critic separation, learning, resume, eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.drl.batches import request_order
from training.drl.hrl import (
    HRLConfig,
    HRLTrainer,
    actor_loss,
    ddpg_target,
    run_hrl,
    train_hrl,
)
from training.drl.networks import push

SMALL = HRLConfig(
    batch_size=64, d_r=8, gru_hidden=16, mlp=(32, 16, 8), actor_hidden=(16,), sessions_per_chunk=64
)


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(tr: HRLTrainer, req, n: int = 64, seed: int = 0):
    return tr.batch(req, request_order(req, np.random.default_rng(seed))[:n])


def _critic_side(tr: HRLTrainer) -> dict[str, torch.Tensor]:
    return {k: p for k, p in tr.net.named_parameters() if not k.startswith("actor.")}


def test_critic_target_uses_target_actor_argmax_and_target_critic_value(data):
    _, side, req = data
    tr = HRLTrainer(SMALL, side)
    b = _batch(tr, req, n=128)
    # Make the target networks differ from the online ones, then recompute y by hand.
    gen = torch.Generator().manual_seed(1)  # never torch's global generator
    with torch.no_grad():
        for p in tr.target.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    y = ddpg_target(tr.target, b, SMALL.gamma)

    def next_state_and_items(net):
        enc = net.encode(b.enc_ids)
        buf, mask = push(enc[b.hist_index], b.hist_mask, enc[b.cur_index])
        return net.state(buf, mask, b.next_user_ctx), net.item_vectors(b.next_cand)

    with torch.no_grad():
        s_tg, x_tg = next_state_and_items(tr.target)
        score_tg = (tr.target.action(s_tg)[:, None, :] * x_tg).sum(-1)  # <mu'(s'), W' a'>
        q_tg = tr.target.critic_q(s_tg, x_tg)
        s_on, x_on = next_state_and_items(tr.net)
        score_on = (tr.net.action(s_on)[:, None, :] * x_on).sum(-1)
    rows = torch.arange(len(y))
    best = score_tg.masked_fill(~b.next_mask, -1e30).argmax(1)
    live = ~b.done & b.next_mask.any(1)
    expect = b.reward + SMALL.gamma * torch.where(live, q_tg[rows, best], 0.0)
    torch.testing.assert_close(y, expect)

    # The batch can tell the right target from the plausible wrong ones.
    assert b.done.any() and live.any()
    assert (score_tg.argmax(1) != best)[live].any()  # the mask matters
    best_on = score_on.masked_fill(~b.next_mask, -1e30).argmax(1)
    assert (best_on != best)[live].any()  # the online actor would pick other items
    best_q = q_tg.masked_fill(~b.next_mask, -1e30).argmax(1)
    assert (best_q != best)[live].any()  # a max-Q target would differ

    # The step's critic loss is the MSE against exactly this target.
    with torch.no_grad():
        s = tr.net.state(tr.net.encode(b.enc_ids)[b.hist_index], b.hist_mask, b.user_ctx)
        q = tr.net.critic_q(s, tr.net.item_vectors(b.action[:, None]))[:, 0]
    m = tr.step(b)
    assert m["losses/critic"] == pytest.approx(float(((q - expect) ** 2).mean()), rel=1e-5)


def test_gamma_zero_target_is_the_reward(data):
    _, side, req = data
    tr = HRLTrainer(SMALL.with_overrides(gamma=0.0), side)
    b = _batch(tr, req)
    torch.testing.assert_close(ddpg_target(tr.target, b, 0.0), b.reward)


def test_actor_loss_moves_only_the_actor(data):
    _, side, req = data
    tr = HRLTrainer(SMALL, side)
    b = _batch(tr, req)
    s = tr.net.state(tr.net.encode(b.enc_ids)[b.hist_index], b.hist_mask, b.user_ctx)
    loss = actor_loss(tr.net, s)
    tr.actor_opt.zero_grad(set_to_none=True)
    loss.backward()
    for name, p in _critic_side(tr).items():  # critic, encoder, item projection
        assert p.grad is None or float(p.grad.abs().max()) == 0.0, name
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in tr.net.actor.parameters())

    before = {k: p.detach().clone() for k, p in _critic_side(tr).items()}
    actor_before = [p.detach().clone() for p in tr.net.actor.parameters()]
    tr.actor_opt.step()
    for k, p in _critic_side(tr).items():
        torch.testing.assert_close(p, before[k], rtol=0, atol=0)
    assert any(
        not torch.equal(p, q) for p, q in zip(tr.net.actor.parameters(), actor_before, strict=True)
    )


def test_critic_loss_trains_the_encoder_not_the_actor(data):
    _, side, req = data
    tr = HRLTrainer(SMALL, side)
    b = _batch(tr, req)
    enc = tr.net.encode(b.enc_ids)
    s = tr.net.state(enc[b.hist_index], b.hist_mask, b.user_ctx)
    q = tr.net.critic_q(s, tr.net.item_vectors(b.action[:, None]))[:, 0]
    ((q - ddpg_target(tr.target, b, SMALL.gamma)) ** 2).mean().backward()
    enc_params = list(tr.net.state_encoder.parameters()) + list(tr.net.item_proj.parameters())
    assert all(p.grad is not None for p in enc_params)
    assert all(p.grad is None for p in tr.net.actor.parameters())


def test_training_on_tiny_reduces_the_critic_loss(data):
    _, side, req = data
    tr = HRLTrainer(SMALL, side)
    order = request_order(req, np.random.default_rng(1))
    critic = [
        tr.step(tr.batch(req, order[lo : lo + 64]))["losses/critic"] for lo in range(0, 9600, 64)
    ]
    # 150 steps; smoothed: the first 10 against the last 30.
    first, last = np.mean(critic[:10]), np.mean(critic[-30:])
    assert np.all(np.isfinite(critic))
    assert last < 0.8 * first, (first, last)


def test_checkpoint_resume_reproduces_the_next_step(data, tmp_path):
    _, side, req = data
    a = HRLTrainer(SMALL, side)
    order = request_order(req, np.random.default_rng(3))
    a.step(a.batch(req, order[:64]))
    a.save(tmp_path / "ck.pt")
    a.rng.random()  # the RNG is restored too: one draw on each side lands on the same state
    a_rng = a.rng.bit_generator.state
    next_a = a.step(a.batch(req, order[64:128]))

    b = HRLTrainer(SMALL.with_overrides(seed=99), side)  # different init, overwritten by load
    b.load(tmp_path / "ck.pt")
    b.rng.random()
    assert b.rng.bit_generator.state == a_rng
    next_b = b.step(b.batch(req, order[64:128]))
    assert next_a == next_b
    for pa, pb in zip(a.net.parameters(), b.net.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    for pa, pb in zip(a.target.parameters(), b.target.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_resumed_run_sees_the_same_batches_as_an_uninterrupted_one(data, tmp_path):
    ds, side, _ = data
    whole = HRLTrainer(SMALL.with_overrides(max_instances=640), side)
    train_hrl(whole, ds, out=tmp_path / "whole", progress=False)

    first = HRLTrainer(SMALL.with_overrides(max_instances=320), side)
    train_hrl(first, ds, out=tmp_path / "split", progress=False)
    resumed = HRLTrainer(SMALL.with_overrides(max_instances=640), side)
    summary = train_hrl(resumed, ds, out=tmp_path / "split", resume=True, progress=False)
    assert summary["steps"] == whole.step_count == 10
    for pa, pb in zip(whole.net.parameters(), resumed.net.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_run_hrl_writes_the_run_folder_and_aucs(data, tmp_path):
    ds, _, _ = data
    s = run_hrl(ds.root, tmp_path, SMALL.with_overrides(max_instances=256), progress=False)
    assert (tmp_path / "checkpoint.pt").exists()
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved["eval"] == s["eval"] and saved["steps"] == 4
    assert s["eval"]["impressions"] > 0
    for key in ("auc_actor", "auc_critic"):
        assert 0.0 <= s["eval"][key] <= 1.0


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="nope"):
        SMALL.with_overrides(nope=1)


def test_nan_loss_stops_the_run_at_its_step(data, tmp_path):
    import dataclasses

    from training.divergence import DivergenceError

    ds, side, _ = data
    tr = HRLTrainer(SMALL.with_overrides(max_instances=8 * 64), side)
    make, drawn = tr.batch, [0]

    def poisoned(req, g):  # seam: the second batch carries NaN rewards
        b = make(req, g)
        drawn[0] += 1
        return dataclasses.replace(b, reward=b.reward * float("nan")) if drawn[0] == 2 else b

    tr.batch = poisoned  # type: ignore[method-assign]
    with pytest.raises(DivergenceError) as e:
        train_hrl(tr, ds, out=tmp_path, progress=False)
    assert e.value.step == 2 and tr.step_count == 2
    assert "diverged at step 2: non-finite losses/critic=nan" in str(e.value)
    assert not (tmp_path / "train.json").exists()
