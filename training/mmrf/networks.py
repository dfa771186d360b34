"""MMRF's networks: N collaborating actor-critic agents and the user-feedback model M.

This module owns the nn.Modules of METHODS.md ("MMRF") and the paper's Sec. 2.2-2.3 (Eqs.
1-3, 5): no losses (:mod:`training.mmrf.losses`) and no loop (:mod:`training.mmrf.train`).
Notation: ``B`` states, ``N`` agents (``ASPECTS``: six auxiliary agents, click .. long_view,
then the main WatchTime agent, last), ``H`` the encoder's state width, ``d`` the agent width
(``h^i``, ``e^i`` with attention), ``D`` the action width, ``C`` candidates.

Design, as settled for this project:

- State. The shared encoder of DRL-Rec (:class:`training.drl.networks.StateEncoder`: field
  self-attention per impression, GRU over the session's last ``m`` impressions) gives ``s_t
  (B, H)``; each agent's state embedding is ``h^i = tanh(W^i s_t + b^i)`` (B, N, d). One
  encoder, N projections: "each agent has a state embedding from the shared encoder design"
  at the cost of one encoder pass, and serving keeps one cached state. The encoder (and the
  item projection below) learn from the critics' TD losses only; actors read ``s_t``
  detached (as :mod:`training.drl.hrl` does), so the actors' ``-Q`` objectives cannot move
  the critics' inputs.
- Attentive collaboration (Eq. 1), :class:`AgentAttention`: ``e^i = sum_{j != i} alpha_ij
  ReLU(W_o h^j)``, ``alpha_ij = softmax_{j != i} ((W_k h^j)^T (W_q h^i) / sqrt(d_h))``, split
  into heads of ``d_h = d / heads`` (each head its own alpha over its slice of the values);
  ``W_q``, ``W_k``, ``W_o`` have no bias and are shared by all agents. The ``1 / sqrt(d_h)``
  is the usual scaled dot product; the paper's Eq. 1 writes the unscaled product (a
  per-head constant factor of the logits, equivalent up to the weights' scale).
- MMRF-CO (``collaboration="concat"``): no attention; ``e^i = Concat_{j != i} h^j``
  (B, N, (N-1) d), in agent order.
- Actors (Eqs. 2-3): auxiliary ``a^k = tanh(f_k(Concat(h^k, e^k)))`` for ``k < N``; main
  ``a^N = tanh(f_N(Concat(h^N, e^1 .. e^N, a^1 .. a^{N-1})))``; ``f`` are ReLU MLPs. Actions
  are continuous vectors in ``[-1, 1]^D``.
- Item vectors ``v = tanh(W_v a_t)`` with ``a_t = Flatten(E(item + list ids))`` the DRL-Rec
  candidate embedding and ``W_v`` linear without bias (B, C, D). A candidate's ranking score
  under agent ``i`` is ``<a^i, v>`` (METHODS.md: an action scores every candidate by a dot
  product with its item embedding); the served score is the main agent's. The tanh puts item
  vectors in the actions' box, so a critic trained at logged items' vectors is evaluated
  inside the region it was trained on when it reads an actor's action.
- Critics ``Q_i(s, a) = MLP(Concat(s_t, a))`` (a :class:`~training.drl.networks.QHead`),
  one per aspect, each reading its own agent's action (B, N). On logged data the action of
  every agent is the logged item's vector ``v`` (the logging policy's action is an item, not
  a point of the action space).

The user-feedback model M (:class:`FeedbackModel`, Sec. 2.3, Eq. 5): its own
:class:`~training.drl.networks.StateEncoder` (the RNN over the session), then two parallel
predictors ``P``, ``P'`` (ReLU MLPs on ``Concat(s, a_t)``, separately initialised), each
with one output per aspect; ``P'`` has dropout after every hidden layer, ``P`` none. The
predictors share the encoder: the siamese pair differs in its heads, which is where the
paper applies dropout ("to one of the predictors").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from contract.features import DEFAULT_SPEC, FeatureSpec
from contract.schema import FEEDBACK
from training.drl.networks import QHead, QNetConfig, StateEncoder

__all__ = [
    "ASPECTS",
    "AgentAttention",
    "FeedbackModel",
    "MMRFNetConfig",
    "MultiAgentActorCritic",
    "concat_others",
    "actor_flops_breakdown",
    "actor_flops_per_request",
    "encode_unique",
    "mlp",
    "seeded_dropout",
]

#: Agents / reward aspects in order; the last is the main (WatchTime) agent.
ASPECTS: tuple[str, ...] = FEEDBACK
COLLABORATIONS = ("attention", "concat")


@dataclass(frozen=True)
class MMRFNetConfig:
    """Shape of the MMRF agents and of M; ``encoder`` is the DRL-Rec state encoder's config."""

    encoder: QNetConfig
    """The shared state encoder (fields, ``d_r``, GRU width ``H``, memory ``m``)."""
    n_agents: int = len(ASPECTS)
    """``N``: auxiliary agents plus the main agent (last)."""
    agent_dim: int = 32
    """``d``: width of each agent's state embedding ``h^i`` (and of ``e^i`` with attention)."""
    heads: int = 4
    """Attention heads; must divide ``agent_dim``."""
    action_dim: int = 16
    """``D``: width of actions and item vectors."""
    actor_hidden: tuple[int, ...] = (64,)
    """Hidden widths of every actor MLP ``f_i``."""
    critic_mlp: tuple[int, ...] = (64, 32)
    """Hidden widths of every critic."""
    collaboration: str = "attention"
    """``attention`` (MMRF, Eq. 1) or ``concat`` (MMRF-CO)."""
    model_hidden: tuple[int, ...] = (64, 32)
    """Hidden widths of each of M's two predictors."""
    model_dropout: float = 0.2
    """Dropout rate in M's second predictor ``P'``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "actor_hidden", tuple(int(w) for w in self.actor_hidden))
        object.__setattr__(self, "critic_mlp", tuple(int(w) for w in self.critic_mlp))
        object.__setattr__(self, "model_hidden", tuple(int(w) for w in self.model_hidden))
        if self.n_agents < 2:
            raise ValueError(f"n_agents={self.n_agents}: MMRF needs at least one auxiliary agent")
        if self.collaboration not in COLLABORATIONS:
            raise ValueError(f"collaboration={self.collaboration!r}: one of {COLLABORATIONS}")
        if self.agent_dim % self.heads:
            raise ValueError(f"heads={self.heads} does not divide agent_dim={self.agent_dim}")
        if not self.critic_mlp or not self.model_hidden:
            raise ValueError("critic_mlp and model_hidden need at least one hidden layer")
        if not 0 <= self.model_dropout < 1:
            raise ValueError(f"model_dropout={self.model_dropout} must be in [0, 1)")

    @classmethod
    def default(cls, spec: FeatureSpec = DEFAULT_SPEC, **overrides: object) -> MMRFNetConfig:
        """Config on ``spec`` (a dataset's feature spec) with DRL-Rec's teacher encoder."""
        return cls(encoder=QNetConfig.from_spec(spec), **overrides)  # type: ignore[arg-type]

    @property
    def context_dim(self) -> int:
        """Width of ``e^i``: ``d`` with attention, ``(N - 1) d`` with concatenation."""
        if self.collaboration == "attention":
            return self.agent_dim
        return (self.n_agents - 1) * self.agent_dim

    @property
    def main_input_dim(self) -> int:
        """Input of ``f_N``: ``h^N``, all ``N`` contexts and the ``N - 1`` auxiliary actions."""
        n = self.n_agents
        return self.agent_dim + n * self.context_dim + (n - 1) * self.action_dim


def encode_unique(
    encode: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor
) -> torch.Tensor:
    """``encode`` applied to each distinct impression of ``ids (..., n)`` once: ``(..., E)``.

    The windows of a batch overlap (a request's slots share most of their history, a
    simulated transition copies its real state's window), so the field self-attention, the
    expensive part, runs on the distinct rows only and is gathered back; the values (and
    gradients, summed over the copies) equal ``encode(ids)``.
    """
    n = ids.shape[-1]
    uniq, inv = torch.unique(ids.reshape(-1, n), dim=0, return_inverse=True)
    enc = encode(uniq)
    return enc[inv].reshape(*ids.shape[:-1], enc.shape[-1])


def mlp_flops(d_in: int, hidden: Sequence[int], d_out: int) -> int:
    """Multiply-adds of one :func:`mlp` pass (weights only)."""
    widths = [d_in, *map(int, hidden), d_out]
    return sum(a * b for a, b in zip(widths, widths[1:], strict=False))


def actor_flops_breakdown(
    cfg: MMRFNetConfig, n_candidates: int = 200, k: int = 10
) -> dict[str, int]:
    """Multiply-adds of serving one list of ``k`` items from ``n_candidates`` with the main
    agent's actor (the bundle's ``mmrf_watchtime``), by part; the counting rules of
    :func:`training.drl.networks.flops_breakdown` (matrix products only; every slot scores
    every candidate, placed ones masked).

    Per slot: ``encoder`` (the placed impression, as DRL-Rec's), ``state`` (``h_0`` and the
    GRU steps, as DRL-Rec's, without an MLP), ``agents`` = ``N H d`` (the ``W^i``) + the
    collaboration (attention: ``3 N d^2`` for ``W_q``, ``W_k``, ``W_o`` and ``2 N^2 d`` for the
    scores and weighted sums; concatenation: 0) + the ``N - 1`` auxiliary actors on ``d +
    context`` inputs + the main actor on :attr:`MMRFNetConfig.main_input_dim` inputs, and
    ``candidates`` = ``n_candidates (A D + D)``: each candidate's item vector (``W_v`` on its
    ``A = n_cand d_r`` embedded ids) and its dot product with the action.
    """
    from training.drl.networks import encoder_flops, state_flops

    enc, n, d, a = cfg.encoder, cfg.n_agents, cfg.agent_dim, cfg.action_dim
    collab = 3 * n * d * d + 2 * n * n * d if cfg.collaboration == "attention" else 0
    agents = (
        n * enc.gru_hidden * d
        + collab
        + (n - 1) * mlp_flops(d + cfg.context_dim, cfg.actor_hidden, a)
        + mlp_flops(cfg.main_input_dim, cfg.actor_hidden, a)
    )
    return {
        "encoder": k * encoder_flops(enc),
        "state": k * state_flops(enc),
        "agents": k * agents,
        "candidates": k * n_candidates * (enc.cand_dim * a + a),
    }


def actor_flops_per_request(cfg: MMRFNetConfig, n_candidates: int = 200, k: int = 10) -> int:
    """Total multiply-adds of one request; :func:`actor_flops_breakdown` says what is counted."""
    return sum(actor_flops_breakdown(cfg, n_candidates, k).values())


def mlp(d_in: int, hidden: Sequence[int], d_out: int, dropout: float = 0.0) -> nn.Sequential:
    """``Linear -> ReLU (-> Dropout)`` per hidden width, then ``Linear(d_out)``."""
    layers: list[nn.Module] = []
    d = d_in
    for w in hidden:
        layers += [nn.Linear(d, int(w)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = int(w)
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class AgentAttention(nn.Module):
    """Attentive collaboration (Eq. 1; METHODS.md): ``e^i = sum_{j != i} alpha_ij ReLU(W_o h^j)``.

    ``alpha_ij = softmax over j != i of (W_k h^j)^T (W_q h^i) / sqrt(d_h)`` per head, with
    ``W_q``, ``W_k``, ``W_o`` ``(d, d)`` shared by all agents and no bias. Shapes: ``h (B, N,
    d)`` -> ``e (B, N, d)`` and ``alpha (B, heads, N, N)`` (row ``i`` sums to 1 over ``j``,
    ``alpha[..., i, i] = 0``). Raises ValueError when ``heads`` does not divide ``d``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads} does not divide dim={dim}")
        self.heads = heads
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_o = nn.Linear(dim, dim, bias=False)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = h.shape
        dh = d // self.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b, n, self.heads, dh).transpose(1, 2)  # (B, heads, N, dh)

        q, k, v = split(self.w_q(h)), split(self.w_k(h)), split(torch.relu(self.w_o(h)))
        logits = q @ k.transpose(-1, -2) / math.sqrt(dh)  # [.., i, j] = k_j . q_i
        # A float identity compared to 0, not a bool eye: ONNX's EyeLike has no bool kernel
        # in onnxruntime, and the bundle exports this module (training/export.py).
        self_mask = torch.eye(n, device=h.device) > 0
        alpha = torch.softmax(logits.masked_fill(self_mask, float("-inf")), dim=-1)
        e = (alpha @ v).transpose(1, 2).reshape(b, n, d)
        return e, alpha


def concat_others(h: torch.Tensor) -> torch.Tensor:
    """MMRF-CO's context: ``e^i = Concat_{j != i} h^j`` in agent order.

    ``h (B, N, d)`` -> ``(B, N, (N - 1) d)``.
    """
    b, n, d = h.shape
    idx = torch.tensor([[j for j in range(n) if j != i] for i in range(n)], device=h.device)
    return h[:, idx].reshape(b, n, (n - 1) * d)


@dataclass
class ActorOutput:
    """What the joint policy ``pi_Theta(s)`` computes for a batch of states."""

    actions: torch.Tensor
    """``(B, N, D)``: ``a^1 .. a^{N-1}`` and the main ``a^N`` (last)."""
    h: torch.Tensor
    """``(B, N, d)``: the agents' state embeddings."""
    e: torch.Tensor
    """``(B, N, context_dim)``: what each agent gathers from the others."""
    alpha: torch.Tensor | None
    """``(B, heads, N, N)`` attention weights; ``None`` with concatenation."""


class MultiAgentActorCritic(nn.Module):
    """The N agents: shared encoder, per-agent states, collaboration, actors and critics.

    Parameter groups (what the trainer's optimisers and Eq. 4 refer to): :meth:`critic_parameters`
    (encoder, item projection ``W_v``, critics) and :meth:`actor_parameters` (state
    projections ``W^i``, attention, actors). Shapes are in the module docstring.
    """

    def __init__(self, cfg: MMRFNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoder
        n, d = cfg.n_agents, cfg.agent_dim
        self.state_encoder = StateEncoder(enc)
        self.item_proj = nn.Linear(enc.cand_dim, cfg.action_dim, bias=False)
        self.agent_state = nn.ModuleList(nn.Linear(enc.gru_hidden, d) for _ in range(n))
        self.attention = AgentAttention(d, cfg.heads) if cfg.collaboration == "attention" else None
        self.aux_actors = nn.ModuleList(
            mlp(d + cfg.context_dim, cfg.actor_hidden, cfg.action_dim) for _ in range(n - 1)
        )
        self.main_actor = mlp(cfg.main_input_dim, cfg.actor_hidden, cfg.action_dim)
        self.critics = nn.ModuleList(
            QHead(enc.gru_hidden, cfg.action_dim, cfg.critic_mlp) for _ in range(n)
        )

    # --- groups -------------------------------------------------------------------------
    def actor_parameters(self) -> list[nn.Parameter]:
        """``Theta``: state projections, attention (if any), auxiliary and main actors."""
        mods: list[nn.Module] = [self.agent_state, self.aux_actors, self.main_actor]
        if self.attention is not None:
            mods.append(self.attention)
        return [p for m in mods for p in m.parameters()]

    def critic_parameters(self) -> list[nn.Parameter]:
        """``Phi`` and what learns with it: encoder, item projection, critics."""
        mods = [self.state_encoder, self.item_proj, self.critics]
        return [p for m in mods for p in m.parameters()]

    # --- state --------------------------------------------------------------------------
    def encode(self, impression_ids: torch.Tensor) -> torch.Tensor:
        """``(..., n)`` impression ids -> ``(..., E)`` encodings (serving's state step)."""
        return self.state_encoder.encode(impression_ids)

    def state(
        self, buffer: torch.Tensor, mask: torch.Tensor, user_ctx_ids: torch.Tensor
    ) -> torch.Tensor:
        """``s_t (B, H)`` from the buffer ``(B, m, E)``, its mask and the user/context ids."""
        return self.state_encoder(buffer, mask, user_ctx_ids)

    def item_vectors(self, cand_ids: torch.Tensor) -> torch.Tensor:
        """``v = tanh(W_v Flatten(E(item + list ids)))``: ``(B, C, n_cand) -> (B, C, D)``."""
        emb = self.state_encoder.embedding(cand_ids, self.cfg.encoder.n_user_ctx).flatten(-2)
        return torch.tanh(self.item_proj(emb))

    # --- actors -------------------------------------------------------------------------
    def agent_states(self, s: torch.Tensor) -> torch.Tensor:
        """``h^i = tanh(W^i s + b^i)``: ``(B, H) -> (B, N, d)``."""
        return torch.stack([torch.tanh(lin(s)) for lin in self.agent_state], dim=1)

    def collaborate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``e (B, N, context_dim)`` and the attention weights (``None`` for MMRF-CO)."""
        if self.attention is None:
            return concat_others(h), None
        return self.attention(h)

    def aux_actions(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``a^k = tanh(f_k(Concat(h^k, e^k)))`` for ``k < N`` (Eq. 2): ``(B, N - 1, D)``."""
        return torch.stack(
            [torch.tanh(f(torch.cat([h[:, k], e[:, k]], dim=1)))
             for k, f in enumerate(self.aux_actors)],
            dim=1,
        )  # fmt: skip

    def main_action(self, h: torch.Tensor, e: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        """``a^N = tanh(f_N(Concat(h^N, e^1..e^N, a^1..a^{N-1})))`` (Eq. 3): ``(B, D)``."""
        x = torch.cat([h[:, -1], e.flatten(1), aux.flatten(1)], dim=1)
        return torch.tanh(self.main_actor(x))

    def policy(self, s: torch.Tensor) -> ActorOutput:
        """The joint policy ``pi_Theta(s)``: every agent's action from ``s (B, H)``."""
        h = self.agent_states(s)
        e, alpha = self.collaborate(h)
        aux = self.aux_actions(h, e)
        main = self.main_action(h, e, aux)
        return ActorOutput(torch.cat([aux, main[:, None]], dim=1), h, e, alpha)

    def own_aux_actions(self, out: ActorOutput) -> torch.Tensor:
        """``pi_theta_k(s)`` as Eq. 4's auxiliary term differentiates it: ``f_k(h^k, e^k)`` with
        ``e^k`` detached, so only agent ``k``'s own parameters (``W^k``, ``f_k``) are reached;
        the shared attention learns through the main goal. Same values as
        ``out.actions[:, :-1]``; ``(B, N - 1, D)``."""
        return self.aux_actions(out.h, out.e.detach())

    def scores(self, s: torch.Tensor, cand_ids: torch.Tensor, agent: int = -1) -> torch.Tensor:
        """Ranking scores ``<a^agent(s), v>`` of candidates ``(B, C, n_cand)`` -> ``(B, C)``;
        the default is the main (WatchTime) agent, the one served."""
        a = self.policy(s).actions[:, agent]
        return torch.einsum("bd,bcd->bc", a, self.item_vectors(cand_ids))

    # --- critics ------------------------------------------------------------------------
    def critic_q(
        self, s: torch.Tensor, actions: torch.Tensor, params: dict | None = None
    ) -> torch.Tensor:
        """``Q_i(s, a^i)`` for every agent: ``s (B, H)``, ``actions (B, N, D)`` -> ``(B, N)``.

        ``params``: replacement critic parameters (``torch.func.functional_call`` names of
        ``self.critics``), e.g. detached ones, so an actor loss moves only the actions.
        """
        if actions.shape[1:] != (self.cfg.n_agents, self.cfg.action_dim):
            raise ValueError(
                f"actions {tuple(actions.shape)}: expected (B, {self.cfg.n_agents}, "
                f"{self.cfg.action_dim})"
            )
        if params is None:
            qs = [c(s, actions[:, i : i + 1])[0] for i, c in enumerate(self.critics)]
        else:
            qs = [
                _call_critic(self.critics, i, params, s, actions[:, i : i + 1])
                for i in range(len(self.critics))
            ]
        return torch.cat(qs, dim=1)

    def frozen_critic_params(self) -> dict[str, torch.Tensor]:
        """The critics' parameters detached (for :meth:`critic_q` in an actor loss)."""
        return {k: v.detach() for k, v in self.critics.named_parameters()}


def _call_critic(
    critics: nn.ModuleList, i: int, params: dict, s: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    own = {k.split(".", 1)[1]: v for k, v in params.items() if k.split(".", 1)[0] == str(i)}
    q, _ = torch.func.functional_call(critics[i], own, (s, a))
    return q


def seeded_dropout(
    x: torch.Tensor, p: float, generator: torch.Generator | None, training: bool
) -> torch.Tensor:
    """Inverted dropout drawing its mask from ``generator`` (never torch's global RNG):
    ``x * keep / (1 - p)``, ``keep ~ Bernoulli(1 - p)``. Identity when not training or ``p =
    0``. Raises ValueError when a mask is needed and ``generator`` is ``None``."""
    if not training or p == 0:
        return x
    if generator is None:
        raise ValueError("dropout in training mode needs a torch.Generator (seeded runs only)")
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1 - p)


class FeedbackModel(nn.Module):
    """The user-feedback model M (Sec. 2.3, Eq. 5): session RNN, siamese per-aspect heads.

    ``forward(buffer (B, m, E), mask (B, m), user_ctx_ids (B, n_uc), cand_ids (B, C, n_cand))``
    returns the logits of both predictors, ``(z, z')`` each ``(B, C, A)`` with ``A =
    len(ASPECTS)``; ``sigmoid(z)`` is ``r`` (a probability for binary aspects, watch time on
    the [0, 1] scale of :class:`training.mmrf.rewards.RewardScale`). ``P'`` carries dropout
    (active in train mode only, its masks drawn from the ``generator`` passed to ``forward``).
    """

    def __init__(self, cfg: MMRFNetConfig, n_aspects: int = len(ASPECTS)) -> None:
        super().__init__()
        enc = cfg.encoder
        self.cfg = cfg
        self.state_encoder = StateEncoder(enc)
        d_in = enc.gru_hidden + enc.cand_dim
        self.head = mlp(d_in, cfg.model_hidden, n_aspects)
        self.head_dropout = mlp(d_in, cfg.model_hidden, n_aspects)

    def encode(self, impression_ids: torch.Tensor) -> torch.Tensor:
        return self.state_encoder.encode(impression_ids)

    def forward(
        self,
        buffer: torch.Tensor,
        mask: torch.Tensor,
        user_ctx_ids: torch.Tensor,
        cand_ids: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.state_encoder(buffer, mask, user_ctx_ids)  # (B, H)
        x = self.state_encoder.embedding(cand_ids, self.cfg.encoder.n_user_ctx).flatten(-2)
        inp = torch.cat([s[:, None].expand(-1, x.shape[1], -1), x], dim=-1)
        z_prime = inp
        for layer in self.head_dropout:
            z_prime = layer(z_prime)
            if isinstance(layer, nn.ReLU):
                z_prime = seeded_dropout(z_prime, self.cfg.model_dropout, generator, self.training)
        return self.head(inp), z_prime
