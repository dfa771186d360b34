"""Behaviour of DRL-Rec's Q networks: shapes, sizes, serving = training, masking, ablations."""

from __future__ import annotations

import pytest
import torch

from contract.features import DEFAULT_SPEC
from training.drl.networks import (
    ActorCritic,
    FieldSelfAttention,
    QNetConfig,
    QNetwork,
    flops_breakdown,
    flops_per_request,
    param_count,
    push,
)

TEACHER = QNetConfig.from_spec(DEFAULT_SPEC)
STUDENT = TEACHER.scaled(0.5)
POOLED = QNetConfig(sizes=TEACHER.sizes, self_attention=False, gru=False)  # both ablations


def _ids(g: torch.Generator, sizes: tuple[int, ...], *lead: int) -> torch.Tensor:
    """Random valid ids of shape ``(*lead, len(sizes))``, field j in ``[0, sizes[j])``."""
    u = torch.rand(*lead, len(sizes), generator=g)
    return (u * torch.tensor(sizes, dtype=torch.float64)).long()


def _net(cfg: QNetConfig, seed: int = 0) -> QNetwork:
    torch.manual_seed(seed)
    return QNetwork(cfg).eval()


def _inputs(cfg: QNetConfig, b: int = 3, t: int = 13, c: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    history = _ids(g, cfg.sizes, b, t)
    user_ctx = _ids(g, cfg.sizes[: cfg.n_user_ctx], b)
    cands = _ids(g, cfg.sizes[cfg.n_user_ctx :], b, c)
    return history, user_ctx, cands


def test_student_config_halves_field_dim_and_every_width():
    assert (STUDENT.d_r, STUDENT.gru_hidden, STUDENT.mlp) == (8, 32, (64, 32, 16))
    assert STUDENT.memory == TEACHER.memory and STUDENT.sizes == TEACHER.sizes
    # d_r stays a multiple of the heads; halves round up, never to 0.
    assert TEACHER.scaled(0.875).d_r == 14 and TEACHER.scaled(0.25).d_r == 4
    assert TEACHER.scaled(0.001).mlp == (1, 1, 1)


def test_config_from_spec_splits_user_context_from_candidate_fields():
    assert (TEACHER.n_fields, TEACHER.n_user_ctx, TEACHER.n_cand) == (22, 10, 12)
    assert TEACHER.enc_dim == 22 * 16 and TEACHER.cand_dim == 12 * 16
    with pytest.raises(ValueError, match="heads"):
        QNetConfig(sizes=(5,) * 4, n_user_ctx=2, d_r=5, heads=2)


def test_shapes_of_encode_push_and_score():
    net = _net(STUDENT)
    history, user_ctx, cands = _inputs(STUDENT, b=4, c=9)
    enc = net.encode(history[:, 0])
    assert enc.shape == (4, STUDENT.enc_dim)
    buffer, mask = net.empty_buffer(4)
    assert buffer.shape == (4, 10, STUDENT.enc_dim) and not mask.any()
    buffer, mask = push(buffer, mask, enc)
    assert mask[:, -1].all() and not mask[:, :-1].any()
    assert torch.equal(buffer[:, -1], enc)
    q, hint = net.score(buffer, mask, user_ctx, cands)
    assert q.shape == (4, 9) and hint.shape == (4, 9, STUDENT.hint_dim)
    q2, _ = net(buffer, mask, user_ctx, cands)
    assert torch.equal(q, q2)
    with pytest.raises(ValueError, match="cand_ids"):
        net.score(buffer, mask, user_ctx, cands[..., :5])


def test_student_has_about_half_the_teacher_parameters():
    n_t, n_s = param_count(_net(TEACHER)), param_count(_net(STUDENT))
    print(f"params teacher={n_t} student={n_s} ratio={n_s / n_t:.3f}")
    # Embedding rows dominate and halve exactly; the dense layers shrink ~4x.
    assert 0.42 < n_s / n_t < 0.52


@pytest.mark.parametrize("t", [4, 13])  # a partly filled buffer, and one that has slid
@pytest.mark.parametrize("cfg", [TEACHER, STUDENT, POOLED], ids=["teacher", "student", "pooled"])
def test_pushing_one_by_one_equals_the_buffer_built_in_one_go(cfg, t):
    net = _net(cfg)
    history, user_ctx, cands = _inputs(cfg, b=3, t=t, c=6)
    m = cfg.memory
    with torch.no_grad():
        buffer, mask = net.empty_buffer(3)
        for i in range(t):
            buffer, mask = push(buffer, mask, net.encode(history[:, i]))
        q_serve, h_serve = net.score(buffer, mask, user_ctx, cands)

        kept = history[:, -m:]
        block = net.encode_history(kept)  # (B, min(t, m), E)
        pad = m - kept.shape[1]
        train_buffer = torch.cat([torch.zeros(3, pad, cfg.enc_dim), block], dim=1)
        train_mask = torch.arange(m).expand(3, m) >= pad
        q_train, h_train = net.score(train_buffer, train_mask, user_ctx, cands)
    torch.testing.assert_close(q_serve, q_train, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_serve, h_train, atol=1e-5, rtol=1e-5)


def test_candidates_do_not_interact_and_state_is_computed_once():
    net = _net(STUDENT)
    history, user_ctx, cands = _inputs(STUDENT, b=2, c=5)
    buffer = net.encode_history(history[:, -10:])
    mask = torch.ones(2, 10, dtype=torch.bool)
    with torch.no_grad():
        q_all, _ = net.score(buffer, mask, user_ctx, cands)
        s = net.state(buffer, mask, user_ctx)
        singles = torch.cat([net.q_from_state(s, cands[:, j : j + 1])[0] for j in range(5)], 1)
    torch.testing.assert_close(q_all, singles, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("gru", [True, False])
def test_buffer_entries_outside_the_mask_do_not_change_the_output(gru):
    cfg = QNetConfig(sizes=STUDENT.sizes, d_r=8, gru_hidden=32, mlp=(64, 32, 16), gru=gru)
    net = _net(cfg)
    history, user_ctx, cands = _inputs(cfg, b=3, c=4)
    g = torch.Generator().manual_seed(5)
    buffer = net.encode_history(history[:, -10:]).detach()
    mask = torch.rand(3, 10, generator=g) < 0.5  # holes anywhere, not only left padding
    mask[:, -1] = True
    garbage = torch.where(mask[..., None], buffer, 100 * torch.randn(buffer.shape, generator=g))
    with torch.no_grad():
        q, _ = net.score(buffer, mask, user_ctx, cands)
        q_garbage, _ = net.score(garbage, mask, user_ctx, cands)
        changed = buffer.clone()
        changed[:, -1] += 1.0  # a valid entry: this one must matter
        q_changed, _ = net.score(changed, mask, user_ctx, cands)
    torch.testing.assert_close(q, q_garbage, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(q, q_changed, atol=1e-4)


def test_ablations_remove_attention_and_gru_modules_and_keep_shapes():
    cfg = QNetConfig(sizes=STUDENT.sizes, d_r=8, self_attention=False, gru=False)
    net = _net(cfg)
    kinds = {type(m) for m in net.modules()}
    assert FieldSelfAttention not in kinds
    assert not kinds & {torch.nn.GRU, torch.nn.GRUCell, torch.nn.MultiheadAttention}
    assert FieldSelfAttention in {type(m) for m in _net(STUDENT).modules()}
    assert torch.nn.GRUCell in {type(m) for m in _net(STUDENT).modules()}

    history, user_ctx, cands = _inputs(cfg, b=2, c=3)
    assert cfg.enc_dim == 8 and net.encode(history[:, 0]).shape == (2, 8)
    buffer, mask = net.empty_buffer(2)
    buffer, mask = push(buffer, mask, net.encode(history[:, 0]))
    q, hint = net.score(buffer, mask, user_ctx, cands)
    assert q.shape == (2, 3) and hint.shape == (2, 3, cfg.hint_dim)
    assert torch.isfinite(q).all()


def test_flops_count_matches_a_hand_count():
    cfg = QNetConfig(
        sizes=(3,) * 4, n_user_ctx=2, d_r=2, heads=1, gru_hidden=3, mlp=(4, 2), memory=2
    )
    # encoder: 3*4*2*2 + 2*4*4*2 + 4*2*2 = 48 + 64 + 16 = 128 (E = 8)
    # state: h0 2*2*3 = 12, GRU 2 * 3*3*(8+3) = 198, first layer's state part 3*4 = 12 -> 222
    # candidate: a_t (2*2)*4 = 16, 4*2 = 8, output 2 -> 26; 5 candidates -> 130
    assert flops_breakdown(cfg, n_candidates=5, k=1) == {
        "encoder": 128,
        "state": 222,
        "candidates": 130,
    }
    assert flops_per_request(cfg, n_candidates=5, k=3) == 3 * (128 + 222 + 130)


def test_student_serves_a_request_with_fewer_flops_than_the_teacher():
    f_t, f_s = flops_per_request(TEACHER), flops_per_request(STUDENT)
    print(f"flops/request (200 cand, k=10) teacher={f_t} student={f_s} ratio={f_s / f_t:.3f}")
    assert 0 < f_s / f_t < 1


def test_actor_critic_scores_are_the_dot_product_of_action_and_item_vectors():
    torch.manual_seed(0)
    ac = ActorCritic(STUDENT).eval()
    history, user_ctx, cands = _inputs(STUDENT, b=2, c=4)
    buffer, mask = ac.state_encoder.encode(history[:, -10:]), torch.ones(2, 10, dtype=torch.bool)
    with torch.no_grad():
        scores = ac(buffer, mask, user_ctx, cands)
        s = ac.state(buffer, mask, user_ctx)
        action, items = ac.action(s), ac.item_vectors(cands)
        q_items = ac.critic_q(s, items)
        q_action = ac.critic_q(s, action.unsqueeze(1))
    assert scores.shape == (2, 4) and q_items.shape == (2, 4) and q_action.shape == (2, 1)
    assert action.abs().max() <= 1
    expected = (action[:, None, :] * items).sum(-1)
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=1e-6)
