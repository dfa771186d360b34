"""DRL-Rec training: stop-gradient, ablation switches, checkpoint resume, data-parallel runs."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.drl.batches import make_batch, request_order
from training.drl.train import DRLConfig, DRLTrainer

SMALL = DRLConfig(
    n_explore=60, batch_size=64, d_r=8, gru_hidden=16, mlp=(32, 16, 8), sessions_per_chunk=64
)


def _spread(tr: DRLTrainer) -> DRLTrainer:
    """At initialisation Q barely varies across items, so the KL is float noise; a wider
    teacher output layer makes the teacher's Q lists (and the KL) clearly non-zero."""
    with torch.no_grad():
        tr.model.teacher.head.out.weight.mul_(200.0)
    return tr


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(trainer: DRLTrainer, req, n: int = 64, seed: int = 0):
    g = request_order(req, np.random.default_rng(seed))[:n]
    return trainer.batch(req, g)


def _losses(cfg: DRLConfig, side, batch):
    tr = _spread(DRLTrainer(cfg, side))
    losses, _ = tr.model(batch, tr.teacher_target, tr.student_target)
    return tr, losses


def test_teacher_gets_no_gradient_from_distillation(data):
    _, side, req = data
    cfg = SMALL.with_overrides(loss_weights=(0.0, 2.0, 1.0, 1.0))
    tr = _spread(DRLTrainer(cfg, side))
    losses, _ = tr.model(_batch(tr, req), tr.teacher_target, tr.student_target)
    assert float(losses.kl.detach()) > 1e-4 and float(losses.hint.detach()) > 0
    losses.total.backward()
    for name, p in tr.model.teacher.named_parameters():
        assert p.grad is None or float(p.grad.abs().max()) == 0.0, name
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in tr.model.student.parameters())


def test_teacher_learns_from_its_td_loss(data):
    _, side, req = data
    tr = DRLTrainer(SMALL.with_overrides(loss_weights=(2.0, 0.0, 0.0, 0.0)), side)
    losses, _ = tr.model(_batch(tr, req), tr.teacher_target, tr.student_target)
    losses.total.backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in tr.model.teacher.parameters())


def test_double_dqn_target_in_a_step_uses_online_argmax_and_target_value(data):
    _, side, req = data
    tr = DRLTrainer(SMALL, side)
    b = _batch(tr, req)
    # Make the target network differ from the online one, then recompute y by hand.
    with torch.no_grad():
        for p in tr.student_target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net, target = tr.model.student, tr.student_target
    y = tr.model._target(net, target, b, net.project(net.encode(b.enc_ids)))
    from training.drl.networks import push

    def next_q(m):
        enc = m.encode(b.enc_ids)
        buf, mask = push(enc[b.hist_index], b.hist_mask, enc[b.cur_index])
        return m.q_from_state(m.state(buf, mask, b.next_user_ctx), b.next_cand)[0]

    with torch.no_grad():
        q_on, q_tg = next_q(net), next_q(target)
    best = q_on.masked_fill(~b.next_mask, -1e30).argmax(1)
    live = ~b.done & b.next_mask.any(1)
    expect = b.reward + SMALL.gamma * torch.where(live, q_tg[torch.arange(len(best)), best], 0.0)
    torch.testing.assert_close(y, expect)
    assert not torch.allclose(q_on, q_tg)
    assert b.done.any() or b.next_mask.any(1).all()


def test_step_weights_lessons_by_the_teachers_confidence(data):
    """The composition of forward: confidence from the teacher's Q and target (Eq. 8), the
    KL weighted by it per state, the hint by :func:`lesson_weights` over the valid lessons."""
    from training.drl.losses import (
        confidence,
        filter_lessons,
        lesson_hint_loss,
        lesson_weights,
        listwise_kl,
    )

    _, side, req = data
    tr = _spread(DRLTrainer(SMALL.with_overrides(n_filtered=5), side))
    model = tr.model
    with torch.no_grad():  # hints far apart across items, so every lesson counted shows
        model.teacher.head.hidden[-1].weight.mul_(30.0)
    b = _batch(tr, req)
    losses, info = model(b, tr.teacher_target, tr.student_target)

    def real(net, target):
        # Q of the shown items through the serving path (encode, state, score).
        enc = net.encode(b.enc_ids)
        q, _ = net.score(enc[b.hist_index], b.hist_mask, b.user_ctx, b.action[:, None])
        s = net.state(enc[b.hist_index], b.hist_mask, b.user_ctx)
        return q[:, 0], model._target(net, target, b, net.project(enc)), s

    with torch.no_grad():
        q_t, y_t, s_t = real(model.teacher, tr.teacher_target)
        q_s, y_s, s_s = real(model.student, tr.student_target)
        c_t, c_s = confidence(q_t, y_t), confidence(q_s, y_s)
        # Lessons: the real item, then each network's own top 5 of the exploration input.
        q_te, _ = model.teacher.q_from_state(s_t, b.explore)
        q_se, _ = model.student.q_from_state(s_s, b.explore)
        idx, valid = filter_lessons(q_te, q_se, b.explore_mask, 5)
        ids = torch.cat([b.action[:, None], b.explore[torch.arange(len(idx))[:, None], idx]], 1)
        mask = torch.cat([torch.ones_like(valid[:, :1]), valid], 1)
        got_ids, got_mask = model._lessons(b, s_t, s_s)
        assert torch.equal(got_ids, ids) and torch.equal(got_mask, mask)
        assert not mask[:, 1:].all()  # some student picks were the teacher's too
        assert not torch.equal(filter_lessons(q_te, q_te, b.explore_mask, 5)[0], idx)
        q_tl, h_tl = model.teacher.q_from_state(s_t, ids)
        q_sl, h_sl = model.student.q_from_state(s_s, ids)
        kl = listwise_kl(q_tl, q_sl, mask, c_t, tau=SMALL.temperature)
        w = lesson_weights(c_t, ids.shape[1])
        hint = lesson_hint_loss(h_tl, h_sl, w, mask, model.adapter)
        every = lesson_hint_loss(h_tl, h_sl, w, torch.ones_like(mask), model.adapter)
    # The batch tells the right weights and lessons from the plausible wrong ones.
    assert abs(float(c_t.mean() - c_s.mean())) > 0.05  # the two confidences differ
    assert abs(float(every - hint)) > 1e-3 * float(hint)  # so do the masked and unmasked hints
    assert info["charts/confidence"] == pytest.approx(float(c_t.mean()), abs=1e-5)
    torch.testing.assert_close(losses.kl.detach(), kl, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses.hint.detach(), hint, rtol=1e-5, atol=1e-7)


def test_soft_update_moves_the_target_tau_of_the_way_to_the_online_network():
    from training.drl.train import soft_update

    online, target = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        online.weight.fill_(1.0), online.bias.fill_(-2.0)
        target.weight.fill_(0.0), target.bias.fill_(2.0)
    soft_update(target, online, 0.25)  # theta' = 0.75 theta' + 0.25 theta
    assert target.weight.item() == pytest.approx(0.25) and target.bias.item() == pytest.approx(1.0)
    soft_update(target, online, 0.25)
    assert target.weight.item() == pytest.approx(0.4375)
    assert online.weight.item() == 1.0  # the online network is untouched


@pytest.mark.parametrize(
    "switch,value",
    [
        ("use_kl", False),
        ("use_hint", False),
        ("use_confidence", False),
        ("explore_filter", False),
        ("gamma", 0.0),
    ],
)
def test_each_ablation_switch_changes_only_its_part(data, switch, value):
    _, side, req = data
    base = SMALL
    abl = SMALL.with_overrides(**{switch: value})
    diff = {k for k, v in dataclasses.asdict(abl).items() if dataclasses.asdict(base)[k] != v}
    assert diff == {switch}
    tr0 = DRLTrainer(base, side)
    b = _batch(tr0, req)
    _, l0 = _losses(base, side, b)
    _, l1 = _losses(abl, side, b)
    same = lambda a, c: torch.allclose(a, c)  # noqa: E731
    if switch == "use_kl":
        assert float(l1.kl.detach()) == 0 and float(l0.kl.detach()) > 1e-4
        assert same(l0.td_student, l1.td_student) and same(l0.hint, l1.hint)
    elif switch == "use_hint":
        assert float(l1.hint.detach()) == 0 and float(l0.hint.detach()) > 0
        assert same(l0.kl, l1.kl) and same(l0.td_teacher, l1.td_teacher)
    elif switch == "use_confidence":
        assert same(l0.td_student, l1.td_student) and same(l0.td_teacher, l1.td_teacher)
        assert not same(l0.kl, l1.kl) and not same(l0.hint, l1.hint)
    elif switch == "explore_filter":
        # Without exploration lessons a state's list is its real item alone: no KL.
        assert float(l1.kl.detach()) == 0
        assert same(l0.td_student, l1.td_student) and not same(l0.hint, l1.hint)
    elif switch == "gamma":
        # Only the target changes (and, through it, the confidence weights).
        assert not same(l0.td_student, l1.td_student)
        assert not same(l0.td_teacher, l1.td_teacher)


def test_gamma_zero_target_is_the_reward(data):
    _, side, req = data
    tr = DRLTrainer(SMALL.with_overrides(gamma=0.0), side)
    b = _batch(tr, req)
    st = tr.model.student
    y = tr.model._target(st, tr.student_target, b, st.project(st.encode(b.enc_ids)))
    torch.testing.assert_close(y, b.reward)


def test_per_request_discount_is_one_within_a_request_and_gamma_at_its_end(data):
    _, side, req = data
    slot = DRLTrainer(SMALL, side)
    b = _batch(slot, req, n=256)
    assert b.same_request.any() and (~b.same_request & ~b.done).any()
    st, tg = slot.model.student, slot.student_target
    enc = st.project(st.encode(b.enc_ids))
    y_slot = slot.model._target(st, tg, b, enc)
    boot = (y_slot - b.reward) / SMALL.gamma  # the bootstrapped value, 0 where terminal
    for gamma in (0.4, 0.0):
        cfg = SMALL.with_overrides(discount="request", gamma=gamma)
        tr = DRLTrainer(cfg, side)
        tr.model.load_state_dict(slot.model.state_dict())
        tr.student_target.load_state_dict(tg.state_dict())
        y = tr.model._target(tr.model.student, tr.student_target, b, enc)
        expect = b.reward + torch.where(b.same_request, 1.0, gamma) * boot
        torch.testing.assert_close(y, expect)
    with pytest.raises(ValueError, match="discount"):
        SMALL.with_overrides(discount="session")


@pytest.mark.parametrize("switch", ["gru", "self_attention"])
def test_network_ablations_replace_the_module(data, switch):
    _, side, req = data
    on = DRLTrainer(SMALL, side).model.teacher
    off = DRLTrainer(SMALL.with_overrides(**{switch: False}), side).model.teacher
    kinds_on = {type(m).__name__ for m in on.modules()}
    kinds_off = {type(m).__name__ for m in off.modules()}
    gone = {"gru": "GRUCell", "self_attention": "FieldSelfAttention"}[switch]
    assert gone in kinds_on and gone not in kinds_off
    tr = DRLTrainer(SMALL.with_overrides(**{switch: False}), side)
    m = tr.step(_batch(tr, req))
    assert np.isfinite(m["losses/total"])


def test_checkpoint_resume_reproduces_the_next_step(data, tmp_path):
    _, side, req = data
    a = DRLTrainer(SMALL, side)
    order = request_order(req, np.random.default_rng(3))
    a.step(a.batch(req, order[:64]))
    a.save(tmp_path / "ck.pt")
    next_a = a.step(a.batch(req, order[64:128]))  # draws exploration items from a.rng

    b = DRLTrainer(SMALL.with_overrides(seed=99), side)  # different init, overwritten by load
    b.load(tmp_path / "ck.pt")
    next_b = b.step(b.batch(req, order[64:128]))
    assert next_a == next_b
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_batches_read_each_distinct_impression_once(data):
    _, side, req = data
    g = request_order(req, np.random.default_rng(0))[:64]
    b = make_batch(req, side, g, memory=10)
    assert b.enc_ids.shape[0] < 64 * 11
    assert len(np.unique(b.enc_ids.numpy(), axis=0)) <= b.enc_ids.shape[0]
    # The gathered windows equal the per-instance history.
    from training.drl.batches import history

    hist, mask = history(req, g, 10)
    np.testing.assert_array_equal(mask, b.hist_mask.numpy())
    got = b.enc_ids.numpy()[b.hist_index.numpy()]
    np.testing.assert_array_equal(np.where(mask[..., None], got, 0), hist)


@pytest.mark.slow
def test_two_gloo_processes_train_in_lockstep(data, tmp_path):
    ds, _, _ = data
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "training.cli", "drl-train", "--data", str(ds.root), "--out", str(tmp_path / "run"),
        "--no-progress", "--threads", "1",
        "--set", "n_explore=40", "--set", "batch_size=32", "--set", "max_instances=96",
        "--set", "d_r=8", "--set", "gru_hidden=16", "--set", "mlp=32,16,8",
        "--set", "sessions_per_chunk=32",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["steps"] >= 2 and "eval" in summary
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == summary["steps"]


def test_distributed_ranks_read_disjoint_shards(data):
    from training.data.pipeline import shard_for_rank

    ds, _, _ = data
    paths = ds.paths()
    r0, r1 = shard_for_rank(paths, 0, 2), shard_for_rank(paths, 1, 2)
    assert not set(r0) & set(r1) and sorted(r0 + r1) == sorted(paths)


def test_cli_drl_train_rejects_unknown_keys(data, capsys):
    from training.cli import main

    ds, _, _ = data
    assert main(["drl-train", "--data", str(ds.root), "--out", "/tmp/x", "--set", "nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_run_dir_is_written(data, tmp_path):
    from training.drl.train import run

    ds, _, _ = data
    s = run(ds.root, tmp_path, SMALL.with_overrides(max_instances=128), progress=False)
    assert (tmp_path / "checkpoint.pt").exists()
    assert 0.0 <= s["eval"]["auc_student"] <= 1.0
    assert Path(tmp_path / "train.json").exists()


def test_interrupted_and_resumed_run_ends_where_an_uninterrupted_one_does(data, tmp_path):
    from training.drl.train import train

    ds, side, _ = data
    cfg = SMALL.with_overrides(max_instances=6 * 64, log_every=2)
    straight = DRLTrainer(cfg, side)
    train(straight, ds, out=tmp_path / "a", progress=False)

    half = DRLTrainer(cfg.with_overrides(max_instances=3 * 64), side)
    train(half, ds, out=tmp_path / "b", progress=False)
    resumed = DRLTrainer(cfg, side)
    train(resumed, ds, out=tmp_path / "b", resume=True, progress=False)

    assert resumed.step_count == straight.step_count == 6
    for pa, pb in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


@pytest.mark.parametrize("gru", [True, False])
def test_projected_state_equals_the_serving_state(data, gru):
    _, side, req = data
    tr = DRLTrainer(SMALL.with_overrides(gru=gru), side)
    b = _batch(tr, req)
    net = tr.model.teacher
    with torch.no_grad():
        enc = net.encode(b.enc_ids)
        served = net.state(enc[b.hist_index], b.hist_mask, b.user_ctx)
        trained = net.state_projected(net.project(enc)[b.hist_index], b.hist_mask, b.user_ctx)
    torch.testing.assert_close(trained, served, rtol=1e-5, atol=1e-6)


# ---- a diverging run stops at once ----


def _poison_batch(trainer, at: int) -> None:
    """Seam: the ``at``-th batch the loop draws (1-based) carries NaN rewards."""
    make = trainer.batch
    drawn = [0]

    def batch(req, g):
        b = make(req, g)
        drawn[0] += 1
        if drawn[0] == at:
            b = dataclasses.replace(b, reward=torch.full_like(b.reward, float("nan")))
        return b

    trainer.batch = batch


def test_nan_loss_stops_the_run_at_its_step_and_keeps_the_last_good_checkpoint(data, tmp_path):
    from training.divergence import DivergenceError
    from training.drl.train import train

    ds, side, _ = data
    tr = DRLTrainer(SMALL.with_overrides(max_instances=8 * 64), side)
    _poison_batch(tr, at=3)
    with pytest.raises(DivergenceError) as e:
        train(tr, ds, out=tmp_path, checkpoint_every=1, progress=False)
    assert e.value.step == 3 and tr.step_count == 3  # stopped there, not after 8 steps
    assert math.isnan(e.value.values["losses/td_teacher"])
    assert "diverged at step 3: non-finite losses/td_teacher=nan" in str(e.value)
    assert not (tmp_path / "train.json").exists()  # not marked finished
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 2  # the last good step's checkpoint
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_exploding_learning_rate_stops_at_the_first_non_finite_step(data, tmp_path):
    from training.divergence import DivergenceError
    from training.drl.train import train

    ds, side, _ = data
    tr = DRLTrainer(SMALL.with_overrides(lr=1e30, max_instances=20 * 64), side)
    with pytest.raises(DivergenceError) as e:
        train(tr, ds, out=tmp_path, checkpoint_every=1, progress=False)
    assert e.value.step == tr.step_count < 20
    assert any(k.startswith("losses/") for k in e.value.values)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == e.value.step - 1


def test_a_checkpoint_of_non_finite_parameters_is_not_written(data, tmp_path):
    from training.divergence import DivergenceError

    _, side, _ = data
    tr = DRLTrainer(SMALL, side)
    with torch.no_grad():
        tr.model.student.head.out.bias.fill_(float("nan"))
    with pytest.raises(DivergenceError, match=r"model\.student\.head\.out\.bias=nan"):
        tr.save(tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []


def test_cli_drl_train_divergence_is_one_line_and_exit_3(data, tmp_path, capsys):
    from training.cli import main

    ds, _, _ = data
    out = tmp_path / "run"
    small = ["n_explore=60", "batch_size=64", "d_r=8", "gru_hidden=16", "mlp=32,16,8",
             "sessions_per_chunk=64", "max_instances=1280", "lr=1e30"]  # fmt: skip
    args = ["drl-train", "--data", str(ds.root), "--out", str(out), "--no-progress"]
    assert main([*args, *(x for kv in small for x in ("--set", kv))]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("ranker drl-train: error: training diverged at step ")
    assert "non-finite losses/" in err
    assert not out.exists()  # it failed before its first checkpoint: no folder is left
