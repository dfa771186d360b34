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
    hint_loss,
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
