"""MMRF losses against hand-computed numbers (Eqs. 4-6, METHODS.md "MMRF")."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.drl.train import soft_update
from training.mmrf.losses import (
    MMRFLosses,
    actor_loss,
    bernoulli_kl,
    critic_losses,
    feedback_loss,
    simulated_reward,
    td_targets,
)


def test_td_targets_per_aspect_bootstrap_only_live_rows():
    reward = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    done = torch.tensor([False, True])
    q_next = torch.tensor([[2.0, 4.0], [float("inf"), 8.0]])
    y = td_targets(reward, done, 0.5, q_next)
    # Row 0: 1 + .5 * 2, 0 + .5 * 4; row 1 is terminal: the rewards alone (inf ignored).
    assert y.tolist() == [[2.0, 2.0], [0.5, 2.0]]
    assert not y.requires_grad


def test_td_targets_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="q_next"):
        td_targets(torch.zeros(2, 3), torch.zeros(2, dtype=torch.bool), 0.9, torch.zeros(2, 2))


def test_critic_losses_are_per_aspect_mean_squared_td_errors():
    q = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    y = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    loss = critic_losses(q, y)
    assert loss.tolist() == [2.5, 4.5]  # ((1)^2 + (2)^2) / 2, (0 + 3^2) / 2
    loss[0].backward()
    # Aspect 0's loss reaches only column 0: d/dq mean (q - y)^2 = (q - y).
    assert q.grad.tolist() == [[1.0, 0.0], [2.0, 0.0]]


def test_actor_loss_weights_the_main_goal_by_alpha_and_each_aux_goal_by_its_beta():
    q_main = torch.tensor([1.0, 3.0])  # mean 2
    q_aux = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # means 2, 4
    loss = actor_loss(q_main, q_aux, alpha_theta=0.5, beta=[1.0, 0.25])
    assert float(loss) == pytest.approx(-(0.5 * 2) - (1.0 * 2 + 0.25 * 4))
    assert float(actor_loss(q_main, q_aux, 0.0, [0.0, 0.0])) == 0.0
    with pytest.raises(ValueError, match="beta"):
        actor_loss(q_main, q_aux, 1.0, [1.0])


def test_feedback_loss_is_bce_for_binary_aspects_and_mse_for_watch_time():
    logits = torch.zeros(2, 3)  # every prediction 0.5
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.2]])
    loss = feedback_loss(logits, target, [True, True, False])
    # BCE at 0.5 is ln 2 whatever the label; MSE: ((0.5 - 1)^2 + (0.5 - 0.2)^2) / 2 = 0.17.
    torch.testing.assert_close(loss, torch.tensor([math.log(2), math.log(2), 0.17]))


def test_bernoulli_kl_by_hand():
    r, rp = torch.tensor([0.5, 0.3, 0.0]), torch.tensor([0.25, 0.3, 0.5])
    kl = bernoulli_kl(r, rp)
    # 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.5 ln(4 / 3); equal -> 0; r = 0 -> ln(1 / 0.5)
    # up to the eps = 1e-6 clamp of r (about 1.5e-5 here).
    expect = torch.tensor([0.5 * math.log(4 / 3), 0.0, math.log(2)])
    torch.testing.assert_close(kl, expect, atol=5e-5, rtol=0)
    assert float(bernoulli_kl(torch.tensor(1.0), torch.tensor(0.0))) < 20  # clamped, finite


def test_simulated_reward_is_the_mean_times_exp_lambda_kl():
    r, rp = torch.tensor([0.5]), torch.tensor([0.25])
    # mean 0.375; KL = 0.5 ln(4/3), so exp(2 KL) = 4/3 and exp(-2 KL) = 3/4.
    torch.testing.assert_close(simulated_reward(r, rp, lam=2.0), torch.tensor([0.5]))
    torch.testing.assert_close(simulated_reward(r, rp, lam=0.0), torch.tensor([0.375]))
    torch.testing.assert_close(simulated_reward(r, rp, lam=-2.0), torch.tensor([0.28125]))
    # Agreeing predictors: no bonus whatever lambda.
    same = torch.tensor([0.2])
    torch.testing.assert_close(simulated_reward(same, same, lam=5.0), same)


def test_soft_update_moves_the_target_tau_of_the_way():
    target, online = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        target.weight.fill_(0.0)
        target.bias.fill_(2.0)
        online.weight.fill_(1.0)
        online.bias.fill_(-2.0)
    soft_update(target, online, 0.25)
    assert float(target.weight.detach()) == 0.25  # 0.75 * 0 + 0.25 * 1
    assert float(target.bias.detach()) == 1.0  # 0.75 * 2 + 0.25 * -2


def test_losses_log_under_grouped_names():
    m = MMRFLosses(critic=torch.tensor([1.0, 2.0]), actor=torch.tensor(-3.0),
                   model=torch.tensor([0.5, 0.25]))  # fmt: skip
    assert m.metrics(["click", "watch_time"]) == {
        "losses/critic_click": 1.0,
        "losses/critic_watch_time": 2.0,
        "losses/critic": 3.0,
        "losses/actor": -3.0,
        "losses/model_click": 0.5,
        "losses/model_watch_time": 0.25,
        "losses/model": 0.75,
    }
