"""DRL-Rec's losses against numbers computed by hand (or in numpy)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from training.drl.losses import (
    DistillLosses,
    combine,
    confidence,
    double_dqn_target,
    filter_lessons,
    hint_loss,
    lesson_hint_loss,
    lesson_weights,
    listwise_kl,
    make_hint_adapter,
    td_loss,
)


def test_double_dqn_target_uses_online_argmax_and_target_value():
    reward = torch.tensor([1.0, 0.0, 2.0, 3.0])
    done = torch.tensor([False, False, True, False])
    q_online = torch.tensor(
        [
            [1.0, 5.0, 2.0],  # online argmax = 1, target's own argmax = 0
            [9.0, 1.0, 2.0],  # candidate 0 invalid: argmax over {1, 2} = 2
            [1.0, 2.0, 3.0],  # done: y = r
            [1.0, 2.0, 3.0],  # no valid next candidate: terminal, y = r
        ],
        requires_grad=True,
    )
    q_target = torch.tensor(
        [[10.0, 0.5, 3.0], [100.0, 4.0, 7.0], [1.0, 1.0, 1.0], [5.0, 5.0, 5.0]],
        requires_grad=True,
    )
    mask = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    y = double_dqn_target(reward, done, 0.4, q_online, q_target, mask)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.4 * 0.5, 0.4 * 7.0, 2.0, 3.0]))
    assert not y.requires_grad


def test_double_dqn_target_takes_a_discount_per_instance():
    # Per-request discount: 1 to the same request's next slot, gamma 0.4 to the next request.
    reward = torch.tensor([1.0, 0.0, 2.0])
    done = torch.tensor([False, False, True])
    q = torch.tensor([[1.0, 3.0], [2.0, 1.0], [4.0, 4.0]])
    mask = torch.ones(3, 2, dtype=torch.bool)
    gamma = torch.tensor([1.0, 0.4, 0.4])
    y = double_dqn_target(reward, done, gamma, q, q + 10.0, mask)
    torch.testing.assert_close(y, torch.tensor([1.0 + 13.0, 0.4 * 12.0, 2.0]))
    with pytest.raises(ValueError, match="gamma"):
        double_dqn_target(reward, done, gamma[:2], q, q, mask)


def test_double_dqn_target_ignores_non_finite_values_of_padded_rows():
    q = torch.tensor([[float("inf"), float("nan")]])
    y = double_dqn_target(
        torch.tensor([1.5]), torch.tensor([False]), 0.9, q, q, torch.zeros(1, 2, dtype=torch.bool)
    )
    assert y.tolist() == [1.5]


def test_td_loss_is_mse_or_huber():
    q, y = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])
    assert td_loss(q, y).item() == pytest.approx((1 + 9) / 2)
    # Huber, delta 1: 0.5 * 1^2 and 1 * (3 - 0.5)
    assert td_loss(q, y, huber=True).item() == pytest.approx((0.5 + 2.5) / 2)
    with pytest.raises(ValueError, match="same shape"):
        td_loss(q, y[:1])


def test_confidence_scales_squared_error_by_the_batch_maximum():
    q = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    c = confidence(q, torch.tensor([1.0, 1.0, 1.0]), eps=1e-6)
    eta = 4.0 + 1e-6
    torch.testing.assert_close(c, torch.tensor([1.0, 1.0 - 1.0 / eta, 1.0 - 4.0 / eta]))
    assert c.tolist() == pytest.approx([1.0, 0.75, 0.0], abs=1e-6)
    assert not c.requires_grad


def _numpy_listwise_kl(qt, qs, mask, w, tau):
    total, lists = 0.0, 0
    for b in range(qt.shape[0]):
        m = mask[b]
        if not m.any():
            continue
        lists += 1
        pt = np.exp(qt[b, m] / tau) / np.exp(qt[b, m] / tau).sum()
        ps = np.exp(qs[b, m] / tau) / np.exp(qs[b, m] / tau).sum()
        total += w[b] * tau**2 * np.sum(pt * np.log(pt / ps))
    return total / lists


@pytest.mark.parametrize("tau", [1.0, 10.0])
def test_listwise_kl_matches_numpy_and_ignores_masked_entries(tau):
    qt = np.array([[1.0, 2.0, 0.5, 9.0], [3.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    qs = np.array([[0.0, 1.0, 2.0, -9.0], [1.0, 1.0, 5.0, 7.0], [1.0, 2.0, 3.0, 4.0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    w = np.array([0.5, 1.0, 0.7])
    got = listwise_kl(
        torch.tensor(qt), torch.tensor(qs), torch.tensor(mask), torch.tensor(w), tau=tau
    )
    assert got.item() == pytest.approx(_numpy_listwise_kl(qt, qs, mask, w, tau), rel=1e-9)
    # Masked entries (the 9 / -9, the whole third row) can take any value.
    qs2 = qs.copy()
    qs2[0, 3], qs2[2] = 1e6, -1e6
    got2 = listwise_kl(
        torch.tensor(qt), torch.tensor(qs2), torch.tensor(mask), torch.tensor(w), tau=tau
    )
    assert got2.item() == pytest.approx(got.item(), rel=1e-12)


def test_listwise_kl_is_zero_when_student_equals_teacher():
    q = torch.tensor([[1.0, 4.0, -2.0], [0.3, 0.2, 0.1]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 1]], dtype=torch.bool)
    assert listwise_kl(q, q.clone(), mask, torch.ones(2)).item() == pytest.approx(0.0, abs=1e-7)


def test_listwise_kl_gradient_reaches_the_student_but_not_the_teacher():
    qt = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    qs = torch.tensor([[3.0, 2.0, 1.0]], requires_grad=True)
    loss = listwise_kl(qt, qs, torch.ones(1, 3, dtype=torch.bool), torch.ones(1), tau=1.0)
    loss.backward()
    assert qt.grad is None
    assert qs.grad is not None and qs.grad.abs().sum() > 0
    # d/dqs of tau^2 KL = tau (p_s - p_t): pushes the student's first entry down.
    p_t, p_s = torch.softmax(qt.detach(), 1), torch.softmax(qs.detach(), 1)
    torch.testing.assert_close(qs.grad, p_s - p_t)


def test_hint_loss_is_the_weighted_mean_of_squared_distances():
    ht = torch.tensor([[1.0, 2.0], [0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    hs = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]], requires_grad=True)
    w = torch.tensor([0.5, 0.1, 1.0])
    loss = hint_loss(ht, hs, w)
    # distances^2: 4, 25, 0 -> (0.5*4 + 0.1*25 + 0) / 3
    assert loss.item() == pytest.approx((2.0 + 2.5) / 3)
    loss.backward()
    assert ht.grad is None and hs.grad is not None


def test_hint_adapter_is_identity_when_widths_are_equal():
    assert isinstance(make_hint_adapter(16, 16), torch.nn.Identity)
    g = make_hint_adapter(16, 32)
    assert isinstance(g, torch.nn.Linear) and g(torch.zeros(5, 16)).shape == (5, 32)


def test_combine_weights_two_two_one_one_and_is_frozen():
    t = [torch.tensor(x) for x in (1.0, 2.0, 3.0, 4.0)]
    losses = combine(*t)
    assert losses.total.item() == pytest.approx(2 + 4 + 3 + 4)
    assert combine(*t, weights=(2, 2, 0, 1)).total.item() == pytest.approx(2 + 4 + 4)
    assert losses.metrics()["losses/kl"] == 3.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        losses.total = torch.tensor(0.0)  # type: ignore[misc]
    assert isinstance(losses, DistillLosses)


def test_filter_keeps_each_networks_own_top_k_of_the_valid_inputs():
    # Five inputs; input 4 is invalid (placed or padding) and best for both networks.
    q_teacher = torch.tensor([[5.0, 4.0, 1.0, 0.0, 9.0]])
    q_student = torch.tensor([[0.0, 1.0, 3.0, 2.0, 9.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    idx, valid = filter_lessons(q_teacher, q_student, mask, k=2)
    # Teacher's top 2 by its own Q: 0 (5.0), 1 (4.0); the student's by *its* Q: 2, 3.
    assert idx.tolist() == [[0, 1, 2, 3]]
    assert valid.tolist() == [[True, True, True, True]]


def test_filter_counts_a_student_pick_the_teacher_also_picked_once():
    q_teacher = torch.tensor([[5.0, 4.0, 1.0, 0.0]])
    q_student = torch.tensor([[0.0, 7.0, 3.0, 2.0]])  # student's top 2: 1 (teacher's too), 2
    mask = torch.ones(1, 4, dtype=torch.bool)
    idx, valid = filter_lessons(q_teacher, q_student, mask, k=2)
    assert idx.tolist() == [[0, 1, 1, 2]]
    assert valid.tolist() == [[True, True, False, True]]


def test_filter_marks_picks_beyond_the_valid_inputs_invalid_and_caps_k():
    q = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, False, False]])
    idx, valid = filter_lessons(q, -q, mask, k=5)  # k capped at X = 3
    assert idx.shape == (1, 6) and idx[0, 0] == 0 and idx[0, 3] == 0
    assert valid.tolist() == [[True, False, False, False, False, False]]
    with pytest.raises(ValueError, match="k=0"):
        filter_lessons(q, q, mask, k=0)


def test_lesson_weights_give_exploration_lessons_the_batch_mean_confidence():
    c = torch.tensor([1.0, 0.5, 0.0])
    w = lesson_weights(c, 3)
    # Real item: its own confidence; each exploration lesson: mean(1, 0.5, 0) = 0.5.
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.5, 0.5], [0.5, 0.5, 0.5], [0.0, 0.5, 0.5]]))
    torch.testing.assert_close(lesson_weights(c, 1), c[:, None])
    torch.testing.assert_close(lesson_weights(torch.ones(2), 4), torch.ones(2, 4))


def test_lesson_hint_loss_averages_over_the_valid_lessons_only():
    h_t = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[2.0, 2.0], [0.0, 0.0]]])
    h_s = torch.tensor([[[0.0, 0.0], [100.0, 0.0]], [[2.0, 0.0], [0.0, 3.0]]])
    w = torch.tensor([[1.0, 1.0], [0.5, 0.25]])
    mask = torch.tensor([[True, False], [True, True]])
    # Valid: (0,0) d^2 = 1, w 1; (1,0) d^2 = 4, w 0.5; (1,1) d^2 = 9, w 0.25.
    # The masked lesson (d^2 = 10,000) counts neither in the sum nor in the count.
    loss = lesson_hint_loss(h_t, h_s, w, mask)
    assert loss.item() == pytest.approx((1.0 + 2.0 + 2.25) / 3)
    g = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        g.weight.copy_(2 * torch.eye(2))  # g(h) = 2 h undoes the 0.5: the same distances
    loss_g = lesson_hint_loss(h_t, 0.5 * h_s, w, mask, adapter=g)
    assert loss_g.item() == pytest.approx(loss.item())
