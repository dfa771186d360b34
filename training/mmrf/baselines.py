"""The multi-agent baselines of MMRF's Table 1: Pareto, TSCAC and MASSA, on MMRF's machinery.

Each baseline is the few functions in which it differs from MMRF (the d3rlpy way: an
algorithm is a network and a loss on a shared loop). Everything else is
:mod:`training.mmrf.train`'s: the shared DRL-Rec state encoder, per-agent state projections
``h^i``, item vectors ``v``, per-aspect critics with target networks and TD losses, the
streamed slot-level batches, checkpoints, resume and evaluation. None of the three uses
MMRF's user-feedback model or non-impression samples (the variants set
``non_impressions=none``): those are MMRF's contribution, not theirs. No public code exists
for MMRF or MASSA; what each simplifies is said below and in its class.

- **Pareto** (the paper's ref. [4], Chen et al. 2021, multi-aspect RL that finds a Pareto
  optimal solution): one independent actor-critic per aspect (:class:`IndependentAgents`:
  ``a^i = tanh(f_i(h^i))``, critic ``i`` on aspect ``i``; no collaboration, the main agent
  reads no auxiliary action), each actor following its own critic (Eq. 4 with independent
  actors is exactly that). After training, the served score is a weighted sum of the agents'
  scores, ``sum_i w_i <a^i, v> / sd_i`` (``sd_i`` the spread of agent ``i``'s scores), with
  ``w`` chosen on the validation split (:func:`choose_pareto_weights`): the candidate weights
  are a grid on the simplex, each is scored by one objective per aspect (GAUC, with hate's
  sign reversed; watch time by correlation), the Pareto-efficient candidates are kept and the
  most balanced of them (largest worst normalised objective) is chosen. Simplified: the
  original learns the preference weights with a multi-gradient descent inside training; here
  the front is searched over fixed weights after training, on the validation split.
- **TSCAC** (ref. [2], Cai et al. 2023, two-stage constrained actor-critic): stage 1 trains
  one policy per auxiliary aspect on its own critic (the first ``tscac_stage1_steps`` steps;
  the main actor does not move); stage 2 trains the WatchTime policy on its critic with one
  constraint per auxiliary policy, ``d_k = mean ||a^N - a^k||^2 / D <= epsilon``
  (:func:`action_distances`), by the Lagrangian ``-Q_N + sum_k lambda_k d_k``
  (:func:`tscac_actor_loss`) and dual ascent on the multipliers (:func:`dual_update`); the
  auxiliary policies are frozen. For deterministic actions a squared distance is the KL of
  fixed-variance Gaussian policies up to a constant (``KL(N(a, s^2) || N(b, s^2)) = ||a -
  b||^2 / 2 s^2``), so this is the paper's KL constraint for such policies; the original's
  closed-form stage-2 solution for stochastic policies is replaced by the penalised
  gradient. Critics learn from TD errors in both stages.
- **MASSA** (ref. [8], He et al. 2020, multi-agent RL with a signal network, "without
  communication"): agents do not read each other (no attention, no auxiliary action into
  the main actor); a signal network turns the shared state into one signal per agent
  (:class:`SignalAgents`), each actor reads its own state embedding and its signal, and the
  signal network learns from every agent's goal (Eq. 4's weights: the main critic through
  the main actor, each auxiliary critic through its actor). Simplified: the original's
  signal is trained against a centralised critic and its actors are soft (entropy-
  regularised); here the signal comes from the state, the critics stay per aspect and the
  actors deterministic, as in MMRF.

``python -m training.mmrf.train --variant pareto|tscac|massa`` trains them (``ranker
mmrf-train`` the same); their settings are the ``pareto_*``, ``tscac_*``, ``massa_*`` fields
of :class:`~training.mmrf.train.MMRFConfig`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from training.data.features import Requests, build_requests
from training.data.pipeline import Dataset
from training.distributed import all_mean
from training.mmrf.losses import actor_loss
from training.mmrf.networks import (
    ASPECTS,
    ActorOutput,
    MMRFNetConfig,
    MultiAgentActorCritic,
    mlp,
)
from training.mmrf.rewards import BINARY, model_scale
from training.mmrf.train import MMRFTrainer, impression_outputs

__all__ = [
    "IndependentAgents",
    "MASSATrainer",
    "ParetoAgents",
    "ParetoTrainer",
    "SignalAgents",
    "TRAINERS",
    "TSCACTrainer",
    "action_distances",
    "balanced_choice",
    "choose_pareto_weights",
    "dual_update",
    "pareto_mask",
    "pareto_objectives",
    "simplex_grid",
    "tscac_actor_loss",
]


# --- networks -------------------------------------------------------------------------------
class IndependentAgents(MultiAgentActorCritic):
    """Pareto's and TSCAC's agents: MMRF's encoder, projections, item vectors and critics,
    no collaboration: ``a^i = tanh(f_i(h^i))`` for every agent, the main one included (it
    reads no auxiliary action). ``ActorOutput.e`` is an empty ``(B, N, 0)``."""

    def __init__(self, cfg: MMRFNetConfig) -> None:
        super().__init__(cfg)
        d, n = cfg.agent_dim, cfg.n_agents
        self.attention = None
        self.aux_actors = nn.ModuleList(
            mlp(d, cfg.actor_hidden, cfg.action_dim) for _ in range(n - 1)
        )
        self.main_actor = mlp(d, cfg.actor_hidden, cfg.action_dim)

    def collaborate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return h.new_zeros(*h.shape[:2], 0), None

    def main_action(self, h: torch.Tensor, e: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.main_actor(h[:, -1]))


class ParetoAgents(IndependentAgents):
    """:class:`IndependentAgents` whose served score mixes every agent's score.

    ``mix (N,)`` (a buffer, saved with the model): the served score of a candidate is
    ``<sum_i mix_i a^i, v> = sum_i mix_i <a^i, v>``, with ``mix_i = w_i / sd_i`` set by
    :meth:`ParetoTrainer.finish`. Until then ``mix`` is the main agent's one-hot.
    """

    def __init__(self, cfg: MMRFNetConfig) -> None:
        super().__init__(cfg)
        mix = torch.zeros(cfg.n_agents)
        mix[-1] = 1.0
        self.register_buffer("mix", mix)

    def scores(self, s: torch.Tensor, cand_ids: torch.Tensor, agent: int = -1) -> torch.Tensor:
        """``agent=-1`` (the served score, what :class:`~training.eval.policies.ActorPolicy`
        ranks by): the mixed score ``(B, C)``; ``0 .. N-1``: that agent's own score."""
        if agent != -1:
            return super().scores(s, cand_ids, agent)
        a = torch.einsum("n,bnd->bd", self.mix, self.policy(s).actions)
        return torch.einsum("bd,bcd->bc", a, self.item_vectors(cand_ids))


class SignalAgents(MultiAgentActorCritic):
    """MASSA's agents: a signal network instead of collaboration.

    ``m = tanh(g(s_t))`` reshaped to ``(B, N, signal_dim)``, ``g`` a ReLU MLP (the actors'
    hidden widths); ``a^k = tanh(f_k(h^k, m^k))`` for every agent, the main one included (no
    auxiliary action enters it). ``ActorOutput.e`` is ``m``. The signal network is an actor
    parameter and learns from every goal of Eq. 4 (:meth:`own_aux_actions` does not detach).
    """

    def __init__(self, cfg: MMRFNetConfig, signal_dim: int) -> None:
        super().__init__(cfg)
        if signal_dim < 1:
            raise ValueError(f"signal_dim={signal_dim} must be >= 1")
        d, n = cfg.agent_dim, cfg.n_agents
        self.signal_dim = int(signal_dim)
        self.attention = None
        self.signal = mlp(cfg.encoder.gru_hidden, cfg.actor_hidden, n * self.signal_dim)
        self.aux_actors = nn.ModuleList(
            mlp(d + self.signal_dim, cfg.actor_hidden, cfg.action_dim) for _ in range(n - 1)
        )
        self.main_actor = mlp(d + self.signal_dim, cfg.actor_hidden, cfg.action_dim)

    def signals(self, s: torch.Tensor) -> torch.Tensor:
        """``(B, H) -> (B, N, signal_dim)``: one signal per agent."""
        return torch.tanh(self.signal(s)).reshape(s.shape[0], self.cfg.n_agents, self.signal_dim)

    def actor_parameters(self) -> list[nn.Parameter]:
        return [*super().actor_parameters(), *self.signal.parameters()]

    def policy(self, s: torch.Tensor) -> ActorOutput:
        h = self.agent_states(s)
        m = self.signals(s)
        aux = self.aux_actions(h, m)
        main = torch.tanh(self.main_actor(torch.cat([h[:, -1], m[:, -1]], dim=1)))
        return ActorOutput(torch.cat([aux, main[:, None]], dim=1), h, m, None)

    def own_aux_actions(self, out: ActorOutput) -> torch.Tensor:
        return out.actions[:, :-1]


# --- Pareto: the weight search --------------------------------------------------------------
def simplex_grid(n: int, steps: int) -> np.ndarray:
    """Every weight vector of ``n`` non-negative entries in multiples of ``1 / steps`` summing
    to 1: ``(M, n)``, ``M = C(steps + n - 1, n - 1)``, in lexicographic order of the integer
    compositions (largest first entry last). Raises ValueError for ``n < 1`` or ``steps < 1``."""
    if n < 1 or steps < 1:
        raise ValueError(f"simplex_grid needs n >= 1 and steps >= 1, got {n}, {steps}")
    rows = [c for c in itertools.product(range(steps + 1), repeat=n) if sum(c) == steps]
    return np.asarray(rows, dtype=np.float64) / steps


def pareto_mask(objectives: np.ndarray) -> np.ndarray:
    """``(M,)`` bool: the Pareto-efficient rows of ``objectives (M, J)`` (all maximised).

    Row ``i`` is dominated when some row ``j`` is ``>=`` on every objective and ``>`` on one;
    equal rows do not dominate each other (both are kept). Raises ValueError on a non-2-D or
    non-finite input.
    """
    o = np.asarray(objectives, dtype=np.float64)
    if o.ndim != 2 or not np.isfinite(o).all():
        raise ValueError(f"objectives must be a finite (M, J) array, got shape {o.shape}")
    ge = (o[:, None, :] >= o[None, :, :]).all(-1)  # [j, i]: j >= i everywhere
    gt = (o[:, None, :] > o[None, :, :]).any(-1)
    return np.asarray(~(ge & gt).any(axis=0))


def balanced_choice(objectives: np.ndarray, mask: np.ndarray) -> int:
    """The index of the most balanced allowed row: each objective is min-max normalised over
    all rows (a constant column counts 1), a row's score is its worst normalised objective,
    and the allowed (``mask``) row with the highest score wins (the first on ties)."""
    o = np.asarray(objectives, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if o.ndim != 2 or m.shape != o.shape[:1] or not m.any():
        raise ValueError(f"objectives (M, J) and a mask (M,) with a True needed, got {o.shape}, "
                         f"{m.shape}")  # fmt: skip
    lo, hi = o.min(axis=0), o.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    norm = np.where(hi > lo, (o - lo) / span, 1.0)
    worst = np.where(m, norm.min(axis=1), -np.inf)
    return int(np.argmax(worst))


def pareto_objectives(
    agent_scores: np.ndarray,
    mix: np.ndarray,
    feedback: np.ndarray,
    users: np.ndarray,
    aspects: Sequence[str] = ASPECTS,
) -> dict[str, float]:
    """One objective per aspect (higher is better) of the mixed score ``agent_scores @ mix``.

    ``agent_scores (G, N)``, ``mix (N,)``, ``feedback (G, A)`` on the model scale (columns
    in ``aspects`` order, names from ``ASPECTS``), ``users (G,)``. Binary aspects: the GAUC
    of the score (hate: of the negated score, fewer hates ranked high is better); watch time:
    the Pearson correlation with model-scale watch time.
    An aspect whose figure is undefined here (one class for every user, or no spread) is left
    out of the dict.
    """
    from training.eval.metrics import gauc

    score = np.asarray(agent_scores, dtype=np.float64) @ np.asarray(mix, dtype=np.float64)
    out: dict[str, float] = {}
    for j, a in enumerate(aspects):
        y = feedback[:, j]
        if BINARY[ASPECTS.index(a)]:
            try:
                out[a] = gauc(users, y, -score if a == "hate" else score)[0]
            except ValueError:
                continue
        elif score.std() > 0 and y.std() > 0:
            out[a] = float(np.corrcoef(score, y)[0, 1])
    return out


def choose_pareto_weights(
    agent_scores: np.ndarray,
    feedback: np.ndarray,
    users: np.ndarray,
    steps: int,
    aspects: Sequence[str] = ASPECTS,
) -> dict[str, Any]:
    """Pareto's weights on validation impressions (module docstring).

    The agents' scores are divided by their standard deviations (``sd``; an agent with no
    spread gets weight 0); every :func:`simplex_grid` weight ``w`` over the ``N`` agents is
    scored by :func:`pareto_objectives` of ``mix = w / sd``; aspects undefined for any
    candidate are dropped; :func:`pareto_mask` keeps the efficient candidates and
    :func:`balanced_choice` picks one.

    Returns a dict: ``weights`` (``N``, the chosen ``w``), ``mix`` (``w / sd``), ``sd``,
    ``objectives`` (the chosen candidate's, per aspect), ``aspects`` (those used),
    ``candidates`` and ``efficient`` (counts). Raises ValueError when no aspect is defined.
    """
    s = np.asarray(agent_scores, dtype=np.float64)
    sd = s.std(axis=0)
    inv = np.where(sd > 0, 1.0 / np.where(sd > 0, sd, 1.0), 0.0)
    grid = simplex_grid(s.shape[1], steps)
    rows = [pareto_objectives(s, w * inv, feedback, users, aspects) for w in grid]
    used = [a for a in aspects if all(a in r for r in rows)]
    if not used:
        raise ValueError("choose_pareto_weights: no aspect's objective is defined on this sample")
    obj = np.array([[r[a] for a in used] for r in rows])
    eff = pareto_mask(obj)
    best = balanced_choice(obj, eff)
    return {
        "weights": dict(zip(aspects, grid[best].tolist(), strict=True)),
        "mix": (grid[best] * inv).tolist(),
        "sd": sd.tolist(),
        "objectives": dict(zip(used, obj[best].tolist(), strict=True)),
        "aspects": used,
        "candidates": int(len(grid)),
        "efficient": int(eff.sum()),
    }


# --- TSCAC: the constrained stage -----------------------------------------------------------
def action_distances(a_main: torch.Tensor, a_aux: torch.Tensor) -> torch.Tensor:
    """``d_k = mean_b ||a^N_b - a^k_b||^2 / D``: ``a_main (B, D)``, ``a_aux (B, K, D)`` ->
    ``(K,)``, the mean squared distance per action dimension to each auxiliary action."""
    if a_main.dim() != 2 or a_aux.dim() != 3 or a_aux.shape[::2] != a_main.shape:
        raise ValueError(f"a_main {tuple(a_main.shape)} and a_aux {tuple(a_aux.shape)} must be "
                         "(B, D) and (B, K, D)")  # fmt: skip
    return ((a_main[:, None] - a_aux) ** 2).mean(dim=(0, 2))


def tscac_actor_loss(q_main: torch.Tensor, dist: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Stage 2's Lagrangian as a loss: ``-mean_b Q_N(s_b, a^N_b) + sum_k lambda_k d_k``.

    ``q_main (B,)``, ``dist (K,)`` (:func:`action_distances`), ``lam (K,)`` (constants: the
    multipliers move by :func:`dual_update`, not by this gradient) -> a scalar. The
    ``- lambda_k epsilon_k`` terms of the Lagrangian are constants and left out.
    """
    if q_main.dim() != 1 or dist.shape != lam.shape or dist.dim() != 1:
        raise ValueError(f"q_main {tuple(q_main.shape)}, dist {tuple(dist.shape)} and lam "
                         f"{tuple(lam.shape)} must be (B,), (K,), (K,)")  # fmt: skip
    return -q_main.mean() + (lam.detach() * dist).sum()


def dual_update(lam: torch.Tensor, dist: torch.Tensor, epsilon: float, lr: float) -> torch.Tensor:
    """Projected dual ascent: ``lambda_k <- max(0, lambda_k + lr (d_k - epsilon))``: a
    violated constraint (``d_k > epsilon``) raises its multiplier, a slack one lowers it."""
    return (lam + lr * (dist.detach() - epsilon)).clamp(min=0.0)


class _Multipliers(nn.Module):
    """TSCAC's ``lambda (K,)`` as a checkpointable buffer."""

    value: torch.Tensor

    def __init__(self, k: int, init: float) -> None:
        super().__init__()
        self.register_buffer("value", torch.full((k,), float(init)))


# --- trainers -------------------------------------------------------------------------------
def _read_impressions(
    trainer: MMRFTrainer, ds: Dataset, split: str, max_impressions: int
) -> Requests:
    """Whole shards of ``split`` in order until ``max_impressions`` (0: all), as Requests."""
    tables, n = [], 0
    for path in ds.paths(split):
        t = pq.read_table(path)
        tables.append(t)
        n += int((t.column("position").to_numpy() >= 0).sum())
        if max_impressions and n >= max_impressions:
            break
    if not tables:
        raise ValueError(f"the {split} split has no shards")
    return build_requests(pa.concat_tables(tables), trainer.side)


class ParetoTrainer(MMRFTrainer):
    """Pareto: independent per-aspect actor-critics (Eq. 4 with independent actors: each
    actor on its own critic), then the weight search on the validation split."""

    def build_net(self, net_cfg: MMRFNetConfig) -> MultiAgentActorCritic:
        return ParetoAgents(net_cfg)

    def finish(self, dataset: Dataset) -> dict[str, Any]:
        """Choose the weights on the valid split (:func:`choose_pareto_weights`) and set the
        served mix of the network and of its target copy."""
        req = _read_impressions(self, dataset, "valid", self.cfg.pareto_max_impressions)
        o = impression_outputs(self, req)
        logged = torch.from_numpy(req.feedback[req.imp_req, req.imp_slot])
        fb = model_scale(logged, self.scale).numpy()
        info = choose_pareto_weights(o["scores"], fb, req.user_id[req.imp_req],
                                     self.cfg.pareto_grid)  # fmt: skip
        mix = torch.tensor(info["mix"], dtype=torch.float32, device=self.device)
        for net in (self.net, self.target):
            net.mix.copy_(mix)  # type: ignore[operator]
        info["impressions"] = int(req.n_impressions)
        return info


class TSCACTrainer(MMRFTrainer):
    """TSCAC: stage 1 trains the auxiliary actors on their critics; stage 2 the main actor on
    the main critic under the distance constraints (module docstring)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lam = _Multipliers(self.net.cfg.n_agents - 1, self.cfg.tscac_lambda_init)
        self.lam.to(self.device)

    def build_net(self, net_cfg: MMRFNetConfig) -> MultiAgentActorCritic:
        return IndependentAgents(net_cfg)

    @property
    def stage(self) -> int:
        return 1 if self.step_count < self.cfg.tscac_stage1_steps else 2

    def actor_objective(self, s: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, net = self.cfg, self.net
        sd = s.detach()
        out = net.policy(sd)
        q = net.critic_q(sd, out.actions, params=net.frozen_critic_params())
        if self.stage == 1:
            loss = actor_loss(q[:, -1], q[:, :-1], 0.0, cfg.beta)
            return loss, {"charts/tscac_stage": 1.0}
        lam = self.lam.value.clone()  # the loss's constants; the buffer moves below
        dist = action_distances(out.actions[:, -1], out.actions[:, :-1].detach())
        loss = tscac_actor_loss(q[:, -1], dist, lam)
        # the multipliers move by the distances of every rank's batch (torchrun), as one
        dist_all = all_mean(dist.detach(), self.world_size)
        self.lam.value.copy_(dual_update(lam, dist_all, cfg.tscac_epsilon, cfg.tscac_lambda_lr))
        charts = {"charts/tscac_stage": 2.0}
        for a, d, m in zip(ASPECTS[:-1], dist_all.tolist(), self.lam.value.tolist(), strict=True):
            charts[f"charts/tscac_dist_{a}"] = d
            charts[f"charts/tscac_lambda_{a}"] = m
        return loss, charts

    def _stateful(self) -> dict[str, Any]:
        return {**super()._stateful(), "tscac_lambda": self.lam}


class MASSATrainer(MMRFTrainer):
    """MASSA: :class:`SignalAgents` trained by Eq. 4 (the signal network learns from every
    goal; the agents do not read each other)."""

    def build_net(self, net_cfg: MMRFNetConfig) -> MultiAgentActorCritic:
        return SignalAgents(net_cfg, self.cfg.massa_signal_dim)


#: ``MMRFConfig.algorithm`` -> trainer (``mmrf`` is :class:`~training.mmrf.train.MMRFTrainer`).
TRAINERS: dict[str, type[MMRFTrainer]] = {
    "pareto": ParetoTrainer,
    "tscac": TSCACTrainer,
    "massa": MASSATrainer,
}
