"""MMRF networks: attentive collaboration, the actors' wiring, item scores, critics, M."""

from __future__ import annotations

import math

import pytest
import torch

from contract.features import DEFAULT_SPEC
from training.drl.networks import QNetConfig
from training.mmrf.networks import (
    AgentAttention,
    FeedbackModel,
    MMRFNetConfig,
    MultiAgentActorCritic,
    concat_others,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw) -> MMRFNetConfig:
    enc = QNetConfig.from_spec(DEFAULT_SPEC, d_r=4, gru_hidden=8, memory=3)
    base = dict(agent_dim=8, heads=2, action_dim=4, actor_hidden=(8,), critic_mlp=(8,),
                model_hidden=(8,))  # fmt: skip
    return MMRFNetConfig(encoder=enc, **{**base, **kw})


def _net(seed: int = 0, **kw) -> MultiAgentActorCritic:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MultiAgentActorCritic(_cfg(**kw))


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_attention_weights_sum_to_one_and_exclude_the_agent_itself():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        att = AgentAttention(8, heads=2)
    with torch.no_grad():
        e, alpha = att(_randn(3, 7, 8))
    assert e.shape == (3, 7, 8) and alpha.shape == (3, 2, 7, 7)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, 2, 7))
    assert float(alpha.diagonal(dim1=-2, dim2=-1).abs().max()) == 0.0
    assert float(alpha.min()) >= 0.0


def test_attention_matches_equation_1_by_hand_with_one_head():
    att = AgentAttention(2, heads=1)
    with torch.no_grad():
        att.w_q.weight.copy_(torch.eye(2))
        att.w_k.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        att.w_o.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # 3 agents
    e, alpha = att(h)
    # Agent 0: keys W_k h^1 = (0, 1), W_k h^2 = (2, 1); query h^0 = (1, 0); logits / sqrt(2).
    l1, l2 = 0.0 / math.sqrt(2), 2.0 / math.sqrt(2)
    a1 = math.exp(l1) / (math.exp(l1) + math.exp(l2))
    # Values ReLU(W_o h^j): h^1 -> (0, 0), h^2 -> (1, 0).
    expect = torch.tensor([0.0, 0.0]) * a1 + torch.tensor([1.0, 0.0]) * (1 - a1)
    torch.testing.assert_close(alpha[0, 0, 0], torch.tensor([0.0, a1, 1 - a1]))
    torch.testing.assert_close(e[0, 0], expect)


def test_concatenation_context_lists_the_other_agents_in_order():
    h = torch.arange(6.0).reshape(1, 3, 2)  # agents (0,1), (2,3), (4,5)
    e = concat_others(h)
    assert e.tolist() == [[[2, 3, 4, 5], [0, 1, 4, 5], [0, 1, 2, 3]]]


def test_mmrf_co_has_no_attention_and_a_wider_context():
    net = _net(collaboration="concat")
    assert net.attention is None
    out = net.policy(_randn(5, 8))
    assert out.alpha is None and out.e.shape == (5, 7, 6 * 8)
    assert out.actions.shape == (5, 7, 4)


def test_main_actor_receives_the_auxiliary_actions():
    net = _net()
    s = _randn(4, 8)
    before = net.policy(s)
    with torch.no_grad():
        net.aux_actors[2][-1].bias.add_(1.0)  # changes a^3 only, not h or e
    after = net.policy(s)
    torch.testing.assert_close(after.h, before.h)
    torch.testing.assert_close(after.e, before.e)
    assert not torch.allclose(after.actions[:, 2], before.actions[:, 2])
    assert not torch.allclose(after.actions[:, -1], before.actions[:, -1])
    torch.testing.assert_close(
        after.actions[:, [0, 1, 3, 4, 5]], before.actions[:, [0, 1, 3, 4, 5]]
    )


def test_actions_are_in_the_box_and_scores_are_dot_products_with_item_vectors():
    net = _net()
    s = _randn(2, 8)
    cand = torch.randint(0, 3, (2, 5, 12), generator=torch.Generator().manual_seed(0))
    a = net.policy(s).actions
    assert float(a.detach().abs().max()) <= 1.0
    v = net.item_vectors(cand)
    assert v.shape == (2, 5, 4) and float(v.detach().abs().max()) <= 1.0
    expect = (a[:, -1, None, :] * v).sum(-1)
    torch.testing.assert_close(net.scores(s, cand), expect)
    torch.testing.assert_close(net.scores(s, cand, agent=1), (a[:, 1, None, :] * v).sum(-1))


def test_each_critic_reads_its_own_agents_action():
    net = _net()
    s, acts = _randn(3, 8), _randn(3, 7, 4, seed=2).tanh()
    q = net.critic_q(s, acts)
    for i in range(7):
        torch.testing.assert_close(q[:, i], net.critics[i](s, acts[:, i : i + 1])[0][:, 0])
    acts2 = acts.clone()
    acts2[:, 4] += 0.5
    q2 = net.critic_q(s, acts2)
    changed = (q2 - q).abs().amax(0) > 0
    assert changed.tolist() == [False, False, False, False, True, False, False]


def test_frozen_critic_parameters_give_the_same_values_and_no_critic_gradient():
    net = _net()
    s, acts = _randn(3, 8), _randn(3, 7, 4, seed=2).tanh().requires_grad_(True)
    q = net.critic_q(s, acts, params=net.frozen_critic_params())
    torch.testing.assert_close(q, net.critic_q(s, acts))
    q.sum().backward()
    assert acts.grad is not None and float(acts.grad.abs().max()) > 0
    assert all(p.grad is None for p in net.critics.parameters())


def test_parameter_groups_split_the_network():
    net = _net()
    actor = {id(p) for p in net.actor_parameters()}
    critic = {id(p) for p in net.critic_parameters()}
    assert not actor & critic
    assert actor | critic == {id(p) for p in net.parameters()}


def test_feedback_model_has_dropout_in_one_predictor_only():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = FeedbackModel(_cfg(model_dropout=0.5))
    enc_cfg = m.cfg.encoder
    hist = torch.randint(0, 2, (4, 3, enc_cfg.n_fields), generator=torch.Generator().manual_seed(1))
    buf = m.encode(hist)
    mask = torch.ones(4, 3, dtype=torch.bool)
    uc, cand = hist[:, -1, :10], hist[:, -1:, 10:]
    m.train()
    gen = torch.Generator().manual_seed(0)
    z_a, zd_a = m(buf, mask, uc, cand, generator=gen)
    z_b, zd_b = m(buf, mask, uc, cand, generator=gen)
    assert z_a.shape == zd_a.shape == (4, 1, 7)
    torch.testing.assert_close(z_a, z_b)  # P: deterministic
    assert not torch.allclose(zd_a, zd_b)  # P': dropout
    again = m(buf, mask, uc, cand, generator=torch.Generator().manual_seed(0))[1]
    torch.testing.assert_close(again, zd_a)  # the masks come from the generator alone
    with pytest.raises(ValueError, match="Generator"):
        m(buf, mask, uc, cand)
    m.eval()
    torch.testing.assert_close(m(buf, mask, uc, cand)[1], m(buf, mask, uc, cand)[1])


def test_config_refuses_bad_shapes():
    with pytest.raises(ValueError, match="heads=3"):
        _cfg(heads=3)
    with pytest.raises(ValueError, match="collaboration"):
        _cfg(collaboration="sum")
    with pytest.raises(ValueError, match="actions"):
        _net().critic_q(_randn(2, 8), _randn(2, 6, 4))


def test_actor_flops_match_a_hand_count():
    """22 fields (10 user/context, 12 candidate), d_r 4, H 8, m 2, N 3 agents, d 4, D 2, one
    actor hidden layer of 5; 7 candidates, 2 slots."""
    from contract.features import DEFAULT_SPEC
    from training.drl.networks import QNetConfig
    from training.mmrf.networks import MMRFNetConfig, actor_flops_breakdown, actor_flops_per_request

    enc = QNetConfig.from_spec(DEFAULT_SPEC, d_r=4, gru_hidden=8, memory=2)
    cfg = MMRFNetConfig(encoder=enc, n_agents=3, agent_dim=4, heads=2, action_dim=2,
                        actor_hidden=(5,))  # fmt: skip
    # encoder 3*22*16 + 2*22*22*4 + 22*16 = 5280; state 10*4*8 + 2*3*8*(88+8) = 4928;
    # agents 3*8*4 (W^i) + 3*3*16 + 2*9*4 (attention) + 2*(8*5 + 5*2) (aux actors on h+e)
    # + (20*5 + 5*2) (main actor on h^N, 3 contexts, 2 aux actions) = 522;
    # candidates 7 * (48*2 + 2) = 686; each per slot, 2 slots
    assert actor_flops_breakdown(cfg, n_candidates=7, k=2) == {
        "encoder": 10560, "state": 9856, "agents": 1044, "candidates": 1372,
    }  # fmt: skip
    assert actor_flops_per_request(cfg, n_candidates=7, k=2) == 10560 + 9856 + 1044 + 1372
    # MMRF-CO: contexts are the other two h (8 wide), no attention products:
    # 96 + 2*(12*5 + 5*2) + ((4 + 3*8 + 2*2)*5 + 5*2) = 96 + 140 + 170 = 406 per slot
    co = MMRFNetConfig(encoder=enc, n_agents=3, agent_dim=4, heads=2, action_dim=2,
                       actor_hidden=(5,), collaboration="concat")  # fmt: skip
    assert actor_flops_breakdown(co, n_candidates=7, k=1)["agents"] == 406
