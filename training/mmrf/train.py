"""MMRF training: N collaborating actor-critic agents and the user-feedback model, alternating.

Reads top to bottom: the config (MMRF-CO, MMRF-DA and MMRF-NS are switches, ``VARIANTS``
names them), the trainer (networks, target copy, optimisers, the simulated buffer D^M, the
step), evaluation, the run and the command line. The loop is DRL-Rec's
(:func:`training.drl.train.train`: streamed chunks of whole sessions, shuffled batches,
checkpoints every ``checkpoint_every`` steps, resume by replaying the stream, progress bar,
losses logged under grouped names); the batches are DRL-Rec's
(:func:`training.drl.batches.make_batch`) with every aspect's reward and a pool of sampled
non-impressions added (:mod:`training.mmrf.samples`).

One step (Algorithm 1, one pass of its loop, for a mini-batch of logged impressions):

1. Non-impression samples (lines 5-7): for each real state a random action picks ``K``
   (``sim_picks``) of its sampled non-impressions; M (in eval mode: no dropout) simulates
   their feedback by Eq. 6 (MMRF), or every agent gets the constant ``ns_reward`` (MMRF-NS);
   they go to D^M. Not during the first ``model_warmup`` steps with M (it has not learnt
   anything yet), never for MMRF-DA.
2. Agents (line 9), on the real batch plus ``sim_batch`` transitions drawn from D^M:
   critics first (per-aspect TD errors, :func:`~training.mmrf.losses.critic_losses`, targets
   from the target networks, :func:`~training.mmrf.losses.td_targets`), then actors against
   the updated critics (Eq. 4, :func:`~training.mmrf.losses.actor_loss`), then the soft
   target update.
3. M (line 10) on the real batch only (D holds logged impressions): BCE / MSE per aspect on
   both predictors (:func:`~training.mmrf.losses.feedback_loss`).

Algorithm 1 collects trajectories with the agents' own policies (the paper trains against a
simulator). Here the real transitions are the logged ones (offline, like DRL-Rec); the
policies act on the data through the critics' targets and the actor updates, and the
non-impression samples are the only transitions the training itself generates.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.features import DEFAULT_SPEC, FeatureSpec
from training import distributed
from training.data.features import Requests, SideTables, candidate_ids
from training.data.pipeline import Dataset, DatasetError
from training.data.validate import check_dataset
from training.distributed import average_gradients
from training.divergence import EXIT_DIVERGED, DivergenceError
from training.drl.batches import history, make_batch
from training.drl.networks import QNetConfig, push
from training.drl.train import Checkpointed, soft_update, stream_rng, train
from training.harness.config import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_OPEN_BOTTOM,
    UNIT_OPEN_TOP,
    Rule,
    apply_overrides,
    check_device,
)
from training.mmrf.losses import (
    MMRFLosses,
    actor_loss,
    bernoulli_kl,
    critic_losses,
    feedback_loss,
    simulated_reward,
    td_targets,
)
from training.mmrf.networks import (
    ASPECTS,
    FeedbackModel,
    MMRFNetConfig,
    MultiAgentActorCritic,
    encode_unique,
)
from training.mmrf.rewards import BINARY, RewardScale, aspect_rewards, fit_reward_scale, model_scale
from training.mmrf.samples import (
    MMRFBatch,
    SimulatedBuffer,
    Transitions,
    cat_transitions,
    non_impression_pool,
    random_action_picks,
    real_transitions,
)

__all__ = [
    "MMRFConfig",
    "MMRFTrainer",
    "VARIANTS",
    "build_config",
    "eq4_actor_loss",
    "evaluate_mmrf",
    "impression_outputs",
    "main",
    "make_trainer",
    "non_impression_model_outputs",
    "run",
]

NON_IMPRESSIONS = ("model", "constant", "none")
#: ``mmrf`` and the multi-agent baselines of Table 1 (:mod:`training.mmrf.baselines`).
ALGORITHMS = ("mmrf", "pareto", "tscac", "massa")


@dataclass(frozen=True)
class MMRFConfig:
    """MMRF hyper-parameters and switches (METHODS.md, "MMRF"; where the paper gives no
    value, the choice is this project's and says so)."""

    collaboration: str = "attention"
    """``attention`` (MMRF, Eq. 1) or ``concat`` (MMRF-CO)."""
    non_impressions: str = "model"
    """``model``: simulated by M (MMRF); ``constant``: ``ns_reward`` (MMRF-NS); ``none``:
    no non-impression samples (MMRF-DA)."""
    gamma: float = 0.9
    """Discount per slot (not in the paper); 0.9**10 ~ 0.35 one ten-item request ahead."""
    alpha_theta: float = 1.0
    """Eq. 4: weight of the main goal in every actor's update (not in the paper)."""
    beta: tuple[float, ...] = (1.0,) * (len(ASPECTS) - 1)
    """Eq. 4: weight of each auxiliary agent's own goal, in ``ASPECTS`` order (not in the paper)."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actors, attention and state projections."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critics, the encoder and the item projection."""
    model_lr: float = 1e-3
    """Adam learning rate of the user-feedback model M."""
    batch_size: int = 256
    """Real instances per step."""
    grad_clip: float = 10.0
    """Gradient-norm clip, per optimiser."""
    target_tau: float = 0.005
    """Soft target update rate."""
    d_r: int = 16
    """Field embedding dimension of the encoders (agents' and M's)."""
    gru_hidden: int = 64
    """GRU width ``H``."""
    memory: int = 10
    """m: impressions the state reads."""
    agent_dim: int = 32
    """``d``: width of each agent's ``h^i``."""
    heads: int = 4
    """Attention heads of the collaboration."""
    action_dim: int = 16
    """``D``: width of actions and item vectors."""
    actor_hidden: tuple[int, ...] = (64,)
    """Hidden widths of each actor."""
    critic_mlp: tuple[int, ...] = (64, 32)
    """Hidden widths of each critic."""
    model_hidden: tuple[int, ...] = (64, 32)
    """Hidden widths of each of M's predictors."""
    model_dropout: float = 0.2
    """Dropout in M's second predictor."""
    uncertainty_lambda: float = 1.0
    """``lambda`` of Eq. 6 (not in the paper; >= 0 is the paper's optimism)."""
    non_impression_rate: float = 0.25
    """Share of a request's non-impressed candidates sampled per state (paper: ~25%)."""
    sim_picks: int = 3
    """``K``: non-impressions a random action picks per state, each one simulated transition."""
    sim_batch: int = 64
    """Simulated transitions drawn from D^M into each agent update."""
    buffer_size: int = 16384
    """Capacity of D^M (simulated transitions)."""
    ns_reward: float = -0.1
    """MMRF-NS: the constant reward of every aspect of a non-impression (not in the paper)."""
    model_warmup: int = 50
    """Steps M trains before its simulations enter D^M."""
    watch_time_quantile: float = 0.99
    """Watch-time cap of the model scale (:mod:`training.mmrf.rewards`)."""
    epochs: int = 1
    """Passes over the training split."""
    max_instances: int = 0
    """Stop after this many real instances (0: no limit)."""
    sessions_per_chunk: int = 2048
    """Sessions read and shuffled together."""
    seed: int = 0
    """Seed of the initialisation, the stream and the buffer draws."""
    log_every: int = 50
    """Steps between logged loss lines."""
    # --- the baselines of Table 1 (training.mmrf.baselines; ignored by algorithm=mmrf) ---
    algorithm: str = "mmrf"
    """``mmrf``, or a baseline of :mod:`training.mmrf.baselines`: pareto, tscac, massa."""
    pareto_grid: int = 4
    """Pareto: candidate weights are the simplex points with coordinates in steps of 1/grid."""
    pareto_max_impressions: int = 200_000
    """Pareto: valid-split impressions the weight search reads at most (0: all)."""
    tscac_stage1_steps: int = 500
    """TSCAC: steps of stage 1 (auxiliary policies only); the main policy trains after them."""
    tscac_epsilon: float = 0.05
    """TSCAC: allowed mean squared distance per action dimension to each auxiliary action."""
    tscac_lambda_init: float = 1.0
    """TSCAC: initial Lagrange multiplier of every constraint."""
    tscac_lambda_lr: float = 0.01
    """TSCAC: dual-ascent rate of the multipliers (0: fixed multipliers)."""
    massa_signal_dim: int = 16
    """MASSA: width of each agent's signal from the signal network."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", tuple(float(b) for b in self.beta))
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={self.algorithm!r}: one of {ALGORITHMS}")
        if self.non_impressions not in NON_IMPRESSIONS:
            raise ValueError(f"non_impressions={self.non_impressions!r}: one of {NON_IMPRESSIONS}")
        if len(self.beta) != len(ASPECTS) - 1:
            raise ValueError(f"beta has {len(self.beta)} entries, expected {len(ASPECTS) - 1}")
        self.net()  # validates the networks' shape

    def net(self, spec: FeatureSpec = DEFAULT_SPEC) -> MMRFNetConfig:
        """The agents' network config for ``spec`` (the dataset's feature spec)."""
        enc = QNetConfig.from_spec(
            spec, d_r=self.d_r, gru_hidden=self.gru_hidden, memory=self.memory
        )
        return MMRFNetConfig(
            encoder=enc, agent_dim=self.agent_dim, heads=self.heads, action_dim=self.action_dim,
            actor_hidden=self.actor_hidden, critic_mlp=self.critic_mlp,
            collaboration=self.collaboration, model_hidden=self.model_hidden,
            model_dropout=self.model_dropout,
        )  # fmt: skip

    def with_overrides(self, **kw: Any) -> MMRFConfig:
        return apply_overrides(self, kw, "mmrf config", MMRF_RULES)


#: The paper's Table 1 rows of this method: overrides of the default config.
VARIANTS: dict[str, dict[str, str]] = {
    "mmrf": {},
    "mmrf-co": {"collaboration": "concat"},
    "mmrf-da": {"non_impressions": "none"},
    "mmrf-ns": {"non_impressions": "constant"},
    # Baselines (training.mmrf.baselines): no user-feedback model, no non-impression samples.
    "pareto": {"algorithm": "pareto", "non_impressions": "none"},
    "tscac": {"algorithm": "tscac", "non_impressions": "none"},
    "massa": {"algorithm": "massa", "non_impressions": "none"},
}

MMRF_RULES: dict[str, Rule] = {
    "collaboration": Rule(choices=("attention", "concat")),
    "non_impressions": Rule(choices=NON_IMPRESSIONS),
    "gamma": UNIT_OPEN_TOP,
    "alpha_theta": NON_NEGATIVE,
    "beta": NON_NEGATIVE,
    "actor_lr": POSITIVE,
    "critic_lr": POSITIVE,
    "model_lr": POSITIVE,
    "batch_size": AT_LEAST_1,
    "grad_clip": POSITIVE,
    "target_tau": UNIT_OPEN_BOTTOM,
    "d_r": AT_LEAST_1,
    "gru_hidden": AT_LEAST_1,
    "memory": AT_LEAST_1,
    "agent_dim": AT_LEAST_1,
    "heads": AT_LEAST_1,
    "action_dim": AT_LEAST_1,
    "actor_hidden": AT_LEAST_1,
    "critic_mlp": AT_LEAST_1,
    "model_hidden": AT_LEAST_1,
    "model_dropout": UNIT_OPEN_TOP,
    "non_impression_rate": Rule(lo=0, hi=1),
    "sim_picks": AT_LEAST_1,
    "sim_batch": NON_NEGATIVE,
    "buffer_size": AT_LEAST_1,
    "model_warmup": NON_NEGATIVE,
    "watch_time_quantile": UNIT_OPEN_BOTTOM,
    "epochs": AT_LEAST_1,
    "max_instances": NON_NEGATIVE,
    "sessions_per_chunk": AT_LEAST_1,
    "seed": NON_NEGATIVE,
    "log_every": AT_LEAST_1,
    "algorithm": Rule(choices=ALGORITHMS),
    "pareto_grid": AT_LEAST_1,
    "pareto_max_impressions": NON_NEGATIVE,
    "tscac_stage1_steps": NON_NEGATIVE,
    "tscac_epsilon": NON_NEGATIVE,
    "tscac_lambda_init": NON_NEGATIVE,
    "tscac_lambda_lr": NON_NEGATIVE,
    "massa_signal_dim": AT_LEAST_1,
}


def eq4_actor_loss(
    net: MultiAgentActorCritic, s: torch.Tensor, alpha_theta: float, beta: Sequence[float]
) -> torch.Tensor:
    """Eq. 4's actor update as a loss (:func:`~training.mmrf.losses.actor_loss`), a scalar.

    ``s (B, H)`` is read detached (the encoder learns from the critics only) and the critics
    run with detached parameters, so the loss reaches actor parameters only: the main term
    ``-alpha_theta Q_N(s, pi_Theta(s))`` every part of the joint policy, the auxiliary term
    ``-beta_k Q_k(s, pi_theta_k(s))`` agent ``k``'s state projection and actor only
    (:meth:`~training.mmrf.networks.MultiAgentActorCritic.own_aux_actions`).
    """
    sd = s.detach()
    out = net.policy(sd)
    frozen = net.frozen_critic_params()
    q_main = net.critic_q(sd, out.actions, params=frozen)[:, -1]
    own = torch.cat([net.own_aux_actions(out), out.actions[:, -1:]], dim=1)
    q_aux = net.critic_q(sd, own, params=frozen)[:, :-1]
    return actor_loss(q_main, q_aux, alpha_theta, beta)


class _GeneratorState:
    """A numpy Generator as a checkpointable part (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.rng.bit_generator.state}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.rng.bit_generator.state = sd["state"]


class _TorchGeneratorState:
    """A torch Generator (M's dropout masks) as a checkpointable part."""

    def __init__(self, gen: torch.Generator) -> None:
        self.gen = gen

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.gen.get_state()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.gen.set_state(sd["state"].cpu())


class MMRFTrainer(Checkpointed):
    """Agents, their target copy, M, three optimisers, D^M, the generators and the counters.

    ``rng`` (the stream's: shuffles, non-impression sampling, random actions) is replayed on
    resume by the shared loop; ``buffer_rng`` (draws from D^M, made inside ``step``) and
    ``dropout_gen`` (M's dropout masks, a torch Generator on the device) are saved in the
    checkpoint instead, with D^M itself and the reward scale.
    """

    def __init__(
        self, cfg: MMRFConfig, side: SideTables, scale: RewardScale, device: str = "cpu"
    ) -> None:
        self.cfg = cfg
        self.side = side
        self.scale = scale
        self.device = torch.device(device)
        net_cfg = cfg.net(side.spec)
        # Separate seeds: M's initialisation does not depend on the agents' architecture, so
        # MMRF and MMRF-CO of one seed train the same M on the same batches.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = self.build_net(net_cfg).to(self.device)
            torch.manual_seed(cfg.seed + 1)
            self.model = FeedbackModel(net_cfg).to(self.device)
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.critic_opt = torch.optim.Adam(self.net.critic_parameters(), lr=cfg.critic_lr)
        self.actor_opt = torch.optim.Adam(self.net.actor_parameters(), lr=cfg.actor_lr)
        self.model_opt = torch.optim.Adam(self.model.parameters(), lr=cfg.model_lr)
        self.buffer = SimulatedBuffer(cfg.buffer_size)
        self.rng = stream_rng(cfg.seed)
        self.buffer_rng = _GeneratorState(np.random.default_rng([cfg.seed, 2]))
        self.dropout_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 3)
        self.step_count = 0
        self.instances = 0
        self.rank, self.world_size = 0, 1

    def join(self, rank: int, world_size: int) -> None:
        """Train as rank ``rank`` of ``world_size`` torchrun processes (after the process group
        is up): gradients are averaged over the ranks before every optimiser step
        (:mod:`training.distributed`); D^M's draws and M's dropout masks get the rank's own
        generators. The weights stay equal on every rank."""
        self.rank, self.world_size = rank, world_size
        if world_size > 1:
            self.buffer_rng = _GeneratorState(np.random.default_rng([self.cfg.seed, 2, rank]))
            self.dropout_gen.manual_seed(self.cfg.seed + 3 + 1000 * rank)

    @property
    def uses_model(self) -> bool:
        return self.cfg.non_impressions == "model"

    # --- what a baseline replaces (training.mmrf.baselines) -----------------------------
    def build_net(self, net_cfg: MMRFNetConfig) -> MultiAgentActorCritic:
        """The agents: MMRF's attention (or MMRF-CO's concatenation) collaboration."""
        return MultiAgentActorCritic(net_cfg)

    def actor_objective(self, s: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The actors' loss at states ``s (B, H)`` and its charts: Eq. 4."""
        return eq4_actor_loss(self.net, s, self.cfg.alpha_theta, self.cfg.beta), {}

    def finish(self, dataset: Dataset) -> dict[str, Any] | None:
        """Work after the last step (MMRF: none); what it returns goes into ``train.json``."""
        return None

    # --- data ---------------------------------------------------------------------------
    def batch(self, req: Requests, g: np.ndarray) -> MMRFBatch:
        """Real transitions of impressions ``g`` and their non-impression pools."""
        cfg = self.cfg
        b = make_batch(req, self.side, g, memory=cfg.memory)
        r, t = req.imp_req[g], req.imp_slot[g]
        fb = model_scale(torch.from_numpy(req.feedback[r, t]), self.scale)
        real = real_transitions(b, fb, aspect_rewards(fb))
        if cfg.non_impressions == "none":
            pool = torch.zeros(len(g), 1, b.action.shape[1], dtype=torch.long)
            return MMRFBatch(real, pool, torch.zeros(len(g), 1, dtype=torch.bool),
                             torch.zeros(len(g), cfg.action_dim))  # fmt: skip
        ids, mask = non_impression_pool(req, r, t, cfg.non_impression_rate, self.rng)
        action = self.rng.uniform(-1.0, 1.0, size=(len(g), cfg.action_dim))
        return MMRFBatch(
            real,
            torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
            torch.from_numpy(mask),
            torch.from_numpy(action.astype(np.float32)),
        )

    @torch.no_grad()
    def simulate(self, b: MMRFBatch) -> Transitions:
        """Algorithm 1 lines 5-7: the random action's picks among each state's pool, their
        simulated feedback and rewards, as transitions from the real states."""
        cfg, real = self.cfg, b.real
        v = self.net.item_vectors(b.pool_ids)  # (B, P, D)
        scores = torch.einsum("bd,bpd->bp", b.random_action, v)
        idx, valid = random_action_picks(scores, b.pool_mask, cfg.sim_picks)
        k = idx.shape[1]
        picked = b.pool_ids.gather(1, idx[:, :, None].expand(-1, -1, b.pool_ids.shape[2]))
        if cfg.non_impressions == "model":
            was_training = self.model.training
            self.model.eval()
            z, z2 = self.model(encode_unique(self.model.encode, real.hist_ids), real.hist_mask,
                               real.user_ctx, picked)  # fmt: skip
            self.model.train(was_training)
            fb = simulated_reward(torch.sigmoid(z), torch.sigmoid(z2), cfg.uncertainty_lambda)
            reward = aspect_rewards(fb)
        else:
            fb = torch.zeros(*picked.shape[:2], len(ASPECTS), device=picked.device)
            reward = torch.full_like(fb, cfg.ns_reward)
        keep = valid.reshape(-1)

        def rep(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(k, dim=0)[keep]

        return Transitions(
            hist_ids=rep(real.hist_ids),
            hist_mask=rep(real.hist_mask),
            user_ctx=rep(real.user_ctx),
            action=picked.reshape(-1, picked.shape[2])[keep],
            feedback=fb.reshape(-1, fb.shape[2])[keep],
            reward=reward.reshape(-1, reward.shape[2])[keep],
            done=rep(real.done),
            next_user_ctx=rep(real.next_user_ctx),
            simulated=torch.ones(int(keep.sum()), dtype=torch.bool, device=keep.device),
        )

    # --- the step -----------------------------------------------------------------------
    @torch.no_grad()
    def targets(self, t: Transitions) -> torch.Tensor:
        """``(B, N)`` TD targets from the target networks at the next state ``s_t + x``."""
        tg = self.target
        enc = encode_unique(tg.encode, torch.cat([t.hist_ids, t.placed_ids()[:, None]], dim=1))
        buf, mask = push(enc[:, :-1], t.hist_mask, enc[:, -1])
        s_next = tg.state(buf, mask, t.next_user_ctx)
        q_next = tg.critic_q(s_next, tg.policy(s_next).actions)
        return td_targets(t.reward, t.done, self.cfg.gamma, q_next)

    def agents_step(self, t: Transitions) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Critics, then actors (Eq. 4), then the soft target update; returns the critic
        losses ``(N,)``, the actor loss and charts."""
        cfg, net = self.cfg, self.net
        n = net.cfg.n_agents
        s = net.state(encode_unique(net.encode, t.hist_ids), t.hist_mask, t.user_ctx)
        logged = net.item_vectors(t.action[:, None]).expand(-1, n, -1)  # every agent: the item
        q = net.critic_q(s, logged)
        y = self.targets(t)
        l_critic = critic_losses(q, y)
        self.critic_opt.zero_grad(set_to_none=True)
        l_critic.sum().backward()
        average_gradients(net.critic_parameters(), self.world_size)
        gn_c = nn.utils.clip_grad_norm_(net.critic_parameters(), cfg.grad_clip)
        self.critic_opt.step()

        l_actor, actor_charts = self.actor_objective(s)
        self.actor_opt.zero_grad(set_to_none=True)
        l_actor.backward()
        average_gradients(net.actor_parameters(), self.world_size)
        gn_a = nn.utils.clip_grad_norm_(net.actor_parameters(), cfg.grad_clip)
        self.actor_opt.step()
        soft_update(self.target, net, cfg.target_tau)
        charts = {
            "charts/q_main": float(q[:, -1].detach().mean()),
            "charts/target_main": float(y[:, -1].mean()),
            "charts/grad_norm_critic": float(gn_c),
            "charts/grad_norm_actor": float(gn_a),
            **actor_charts,
        }
        return l_critic, l_actor, charts

    def model_step(self, real: Transitions) -> torch.Tensor:
        """One SGD step of M on logged impressions (Algorithm 1 line 10); ``(A,)`` losses."""
        self.model.train()
        enc = encode_unique(self.model.encode, real.hist_ids)
        z, z2 = self.model(enc, real.hist_mask, real.user_ctx,
                           real.action[:, None], generator=self.dropout_gen)  # fmt: skip
        loss = feedback_loss(z[:, 0], real.feedback, BINARY) + feedback_loss(
            z2[:, 0], real.feedback, BINARY
        )
        self.model_opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        average_gradients(self.model.parameters(), self.world_size)
        nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.model_opt.step()
        return loss.detach()

    def step(self, b: MMRFBatch) -> dict[str, float]:
        """One pass of Algorithm 1's loop (module docstring); returns the step's metrics."""
        cfg = self.cfg
        self.net.train()
        b = b.to(self.device)
        simulating = cfg.non_impressions == "constant" or (
            self.uses_model and self.step_count >= cfg.model_warmup
        )
        if simulating:
            self.buffer.add(self.simulate(b))
        t = b.real
        drawn = self.buffer.sample(cfg.sim_batch, self.buffer_rng.rng) if simulating else None
        if drawn is not None:
            t = cat_transitions(t, drawn.to(self.device))
        l_critic, l_actor, charts = self.agents_step(t)
        l_model = self.model_step(b.real) if self.uses_model else None
        self.step_count += 1
        self.instances += len(b.real)
        losses = MMRFLosses(critic=l_critic, actor=l_actor, model=l_model)
        n_sim = 0 if drawn is None else len(drawn)
        return {
            **losses.metrics(ASPECTS),
            **charts,
            "charts/simulated_share": n_sim / max(len(t), 1),
            "charts/buffer": float(len(self.buffer)),
        }

    # --- checkpoints --------------------------------------------------------------------
    def _stateful(self) -> dict[str, Any]:
        return {
            "net": self.net,
            "target": self.target,
            "model": self.model,
            "critic_opt": self.critic_opt,
            "actor_opt": self.actor_opt,
            "model_opt": self.model_opt,
            "buffer": self.buffer,
            "buffer_rng": self.buffer_rng,
            "dropout_gen": _TorchGeneratorState(self.dropout_gen),
        }

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["reward_scale"] = self.scale.to_dict()
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        super().load_state_dict(sd)
        self.scale = RewardScale.from_dict(sd["reward_scale"])


# --- evaluation -----------------------------------------------------------------------------
@torch.no_grad()
def impression_outputs(
    trainer: MMRFTrainer, req: Requests, batch: int = 2048
) -> dict[str, np.ndarray]:
    """Per logged impression of ``req`` (state from the logged history): every agent's
    ranking score ``<a^i, v>`` (``scores (G, N)``), the served score (``served (G,)``:
    ``net.scores``, the main agent's for MMRF, Pareto's weighted combination) and M's
    predictions ``r``, ``r'`` (``model_r``, ``model_r_prime`` ``(G, A)`` on the model scale)."""
    net, model, m = trainer.net, trainer.model, trainer.cfg.memory
    net.eval()
    model.eval()
    dev = trainer.device
    n_uc = req.user_ctx.shape[1]
    keys = ("scores", "served", "model_r", "model_r_prime")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for lo in range(0, req.n_impressions, batch):
        g = np.arange(lo, min(lo + batch, req.n_impressions))
        hist, mask = history(req, g, m)
        hist_t = torch.from_numpy(hist).to(dev)
        mask_t = torch.from_numpy(mask).to(dev)
        uc = torch.from_numpy(req.user_ctx[req.imp_req[g]]).to(dev)
        cand = torch.from_numpy(req.imp_ids[g, n_uc:][:, None]).to(dev)
        s = net.state(encode_unique(net.encode, hist_t), mask_t, uc)
        a = net.policy(s).actions  # (B, N, D)
        out["scores"].append(torch.einsum("bnd,bd->bn", a, net.item_vectors(cand)[:, 0]).cpu())
        out["served"].append(net.scores(s, cand)[:, 0].cpu())
        z, z2 = model(encode_unique(model.encode, hist_t), mask_t, uc, cand)
        out["model_r"].append(torch.sigmoid(z[:, 0]).cpu())
        out["model_r_prime"].append(torch.sigmoid(z2[:, 0]).cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


@torch.no_grad()
def non_impression_model_outputs(
    trainer: MMRFTrainer,
    req: Requests,
    max_requests: int = 2000,
    rng: np.random.Generator | None = None,
    batch: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """M's ``r``, ``r'`` ``(M, A)`` on the non-impressed candidates of up to ``max_requests``
    requests of ``req`` (a seeded random subset when there are more), each scored at the
    request's first slot (state: the session's impressions before the request)."""
    model, m = trainer.model, trainer.cfg.memory
    model.eval()
    dev = trainer.device
    reqs = np.flatnonzero(req.n_shown > 0)
    if len(reqs) > max_requests:
        rng = rng if rng is not None else np.random.default_rng(0)
        reqs = np.sort(rng.choice(reqs, size=max_requests, replace=False))
    outs: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    for lo in range(0, len(reqs), batch):
        r = reqs[lo : lo + batch]
        hist, mask = history(req, req.imp_start[r], m)
        cols = np.arange(req.cand_item.shape[1])[None, :]
        valid = req.cand_mask[r] & (cols >= req.n_shown[r][:, None])
        cand = candidate_ids(req, r, np.zeros(len(r), dtype=np.int64))
        z, z2 = model(
            encode_unique(model.encode, torch.from_numpy(hist).to(dev)),
            torch.from_numpy(mask).to(dev),
            torch.from_numpy(req.user_ctx[r]).to(dev),
            torch.from_numpy(cand).to(dev),
        )
        keep = torch.from_numpy(valid).to(dev)
        outs[0].append(torch.sigmoid(z[keep]).cpu())
        outs[1].append(torch.sigmoid(z2[keep]).cpu())
    return torch.cat(outs[0]).numpy(), torch.cat(outs[1]).numpy()


def _or_none(f, *args) -> float | None:
    try:
        v = f(*args)
    except ValueError:  # one class only (rare aspects on small splits)
        return None
    return float(v[0] if isinstance(v, tuple) else v)


#: Generator stream of the evaluation's session sample (``training.eval.samples.read_requests``).
EVAL_STREAM = 7301
#: Impressions :func:`evaluate_mmrf` reads by default: a hashed share of the split's users.
EVAL_IMPRESSIONS = 200_000


def evaluate_mmrf(
    trainer: MMRFTrainer, dataset: Dataset, split: str = "valid",
    max_impressions: int = EVAL_IMPRESSIONS,
) -> dict[str, Any]:  # fmt: skip
    """Offline figures on a split's impressions (whole sessions of a hashed random share of
    its users, about ``max_impressions`` of them; 0: the whole split): per binary aspect, the
    GAUC of the main (served) score (the WatchTime agent's; Pareto's weighted combination) and
    of the aspect's own agent; the main score's Pearson
    correlation with model-scale watch time; M's AUC per binary aspect and its watch-time MSE;
    M's uncertainty (the Bernoulli KL of Eq. 6, mean over aspects) on the impressions and on
    the non-impressed candidates (:func:`non_impression_model_outputs`), which were never
    trained on. M's figures only where M trains (not MMRF-DA, -NS). An undefined figure (an
    aspect with one class in the split) is ``None``."""
    from training.eval.metrics import auc, gauc
    from training.eval.samples import read_requests

    k = int(dataset.meta.get("list_size", 10))
    n_requests = -(-max_impressions // k)  # 0: the whole split
    req = read_requests(dataset, split, trainer.side, n_requests, trainer.cfg.seed, EVAL_STREAM)
    o = impression_outputs(trainer, req)
    logged = torch.from_numpy(req.feedback[req.imp_req, req.imp_slot])
    fb = model_scale(logged, trainer.scale).numpy()
    users = req.user_id[req.imp_req]
    res: dict[str, Any] = {"impressions": int(req.n_impressions)}
    for i, a in enumerate(ASPECTS):
        if not BINARY[i]:
            continue
        res[f"main_gauc_{a}"] = _or_none(gauc, users, fb[:, i], o["served"])
        res[f"agent_gauc_{a}"] = _or_none(gauc, users, fb[:, i], o["scores"][:, i])
        if trainer.uses_model:
            res[f"model_auc_{a}"] = _or_none(auc, fb[:, i], o["model_r"][:, i])
    wt = ASPECTS.index("watch_time")
    res["main_corr_watch_time"] = float(np.corrcoef(o["served"], fb[:, wt])[0, 1])
    if not trainer.uses_model:  # MMRF-DA and -NS never train M: no figures of it
        return res
    res["model_mse_watch_time"] = float(np.mean((o["model_r"][:, wt] - fb[:, wt]) ** 2))

    def mean_kl(r: np.ndarray, rp: np.ndarray) -> float:
        return float(bernoulli_kl(torch.from_numpy(r), torch.from_numpy(rp)).mean())

    res["model_kl_impressions"] = mean_kl(o["model_r"], o["model_r_prime"])
    r_non, rp_non = non_impression_model_outputs(trainer, req)
    res["non_impressions"] = int(len(r_non))
    res["model_kl_non_impressions"] = mean_kl(r_non, rp_non) if len(r_non) else None
    return res


# --- run and command line -------------------------------------------------------------------
def run(
    data: str | Path,
    out: str | Path,
    cfg: MMRFConfig,
    *,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
    checkpoint_every: int = 500,
    eval_split: str | None = "valid",
    eval_impressions: int = EVAL_IMPRESSIONS,
) -> dict[str, Any]:
    """Fit the reward scale on the training split, train, evaluate; writes ``out/``:
    ``checkpoint.pt`` (networks, M, D^M, optimisers, generators, reward scale),
    ``reward_scale.json`` and ``train.json`` (summary, loss history, config, evaluation)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = Dataset.open(data)
    ds.require_aspects(ASPECTS, "MMRF (one agent per feedback aspect)")
    side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)
    scale = fit_reward_scale(ds.paths("train"), cfg.watch_time_quantile)
    rank, world_size, device = distributed.init(device)
    trainer = make_trainer(cfg, side, scale, device=device)
    trainer.join(rank, world_size)
    summary = train(trainer, ds, out=out, resume=resume, progress=progress,  # type: ignore[arg-type]
                    checkpoint_every=checkpoint_every, desc=cfg.algorithm,
                    rank=rank, world_size=world_size)  # fmt: skip
    summary["method"] = cfg.algorithm
    summary["world_size"] = world_size
    finished = trainer.finish(ds)  # on every rank: the same data, the same weights
    if rank == 0:
        if finished is not None:  # e.g. Pareto's weights: part of the model, saved with it
            summary[cfg.algorithm] = finished
            trainer.save(out / "checkpoint.pt")
        summary["reward_scale"] = trainer.scale.to_dict()
        (out / "reward_scale.json").write_text(json.dumps(trainer.scale.to_dict(), indent=2))
        if eval_split:
            summary["eval"] = evaluate_mmrf(trainer, ds, eval_split, eval_impressions)
            summary["eval_split"] = eval_split
        (out / "train.json").write_text(json.dumps(summary, indent=2))
    distributed.shutdown(world_size)
    summary["rank"] = rank
    return summary


def make_trainer(
    cfg: MMRFConfig, side: SideTables, scale: RewardScale, device: str = "cpu"
) -> MMRFTrainer:
    """:class:`MMRFTrainer`, or the trainer of ``cfg.algorithm``'s baseline."""
    if cfg.algorithm == "mmrf":
        return MMRFTrainer(cfg, side, scale, device=device)
    from training.mmrf.baselines import TRAINERS

    return TRAINERS[cfg.algorithm](cfg, side, scale, device=device)


def build_config(variant: str, overrides: Sequence[str]) -> MMRFConfig:
    """The variant's config with ``key=value`` overrides (errors name the key and value)."""
    from training.harness.config import pick
    from training.sim.config import parse_overrides

    base = pick(VARIANTS, variant, "mmrf variant")
    over = parse_overrides(list(overrides))
    clash = sorted(set(base) & set(over))
    if clash:
        from training.sim.config import ConfigError

        raise ConfigError(f"--variant {variant} sets {clash}; do not override them with --set")
    return MMRFConfig().with_overrides(**base, **over)


def main(argv: Sequence[str] | None = None) -> int:
    from training.sim.config import ConfigError

    p = argparse.ArgumentParser(
        prog="python -m training.mmrf.train",
        description="Train MMRF (multi-agent WatchTime ranker with a user-feedback model), an "
        "ablation or a multi-agent baseline (Pareto, TSCAC, MASSA) on a dataset folder; writes "
        "checkpoint.pt, reward_scale.json and train.json to --out.",
    )
    p.add_argument("--data", required=True, help="dataset folder (ranker simulate / kuairand)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--variant", default="mmrf", choices=sorted(VARIANTS),
                   help="mmrf, or an ablation: mmrf-co (concatenation), mmrf-da (no "
                   "non-impression samples), mmrf-ns (constant negative reward), or a baseline: "
                   "pareto, tscac, massa")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an MMRFConfig field, e.g. --set max_instances=20000")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index>")
    p.add_argument("--resume", action="store_true", help="continue from out/checkpoint.pt")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--eval-split", default="valid", choices=("train", "valid", "test", "none"))
    p.add_argument(
        "--eval-impressions",
        type=int,
        default=EVAL_IMPRESSIONS,
        help="impressions of the offline figures (0: the whole split)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:  # everything the user passed is checked before any work starts
        cfg = build_config(args.variant, args.set)
        device = check_device(args.device)
        check_dataset(args.data)  # the whole dataset, as every trainer checks it at start
        if (Path(args.out) / "checkpoint.pt").exists() and not args.resume:
            raise ConfigError(f"{args.out} holds a run; pass --resume or choose another --out")
    except (ConfigError, DatasetError) as e:
        print(f"mmrf: {e}", file=sys.stderr)
        return 2
    try:
        summary = run(
            args.data, args.out, cfg, device=device, resume=args.resume,
            progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
            eval_split=None if args.eval_split == "none" else args.eval_split,
            eval_impressions=args.eval_impressions,
        )  # fmt: skip
    except DivergenceError as e:  # a NaN/inf loss: the run stopped at that step
        print(f"mmrf: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    brief = {k: summary[k] for k in ("steps", "instances", "seconds", "instances_per_s")}
    brief["eval"] = summary.get("eval")
    print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
