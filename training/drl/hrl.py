"""HRL-Rec's item recommender trained with DDPG: the list-wise RL baseline of DRL-Rec's Table 2.

DRL-Rec compares against "the item recommender of HRL-Rec [Xie et al. 2021] trained with
DDPG". This module trains that recommender on DRL-Rec's data and DRL-Rec's state encoder
(:class:`~training.drl.networks.ActorCritic`: field self-attention, GRU over the last ``m``
impressions), so the comparison isolates the learning algorithm. Notation: ``B`` states,
``C`` next candidates, ``H`` the state width, ``D`` the action width, ``s = s_t`` the
encoder's state, ``x = W a_t`` an item's vector.

One step, for a batch of logged impressions (the same batches as DRL-Rec's, without
exploration candidates):

1. Critic: ``L_Q = mean_b (Q(s_b, x_b) - y_b)^2`` at the logged item ``x_b = W a_b``, with
   ``y = r + gamma (1 - done) Q'(s', x')`` (:func:`ddpg_target`). DDPG's ``x' = mu'(s')`` is
   a point of the continuous action space; actions here must be real items, so ``x'`` is the
   target actor's choice among the next state's valid candidates, ``x' = W' a'*`` with ``a'*
   = argmax_{a' valid} <mu'(s'), W' a'>``: the discrete-candidate version of ``mu'(s')``
   (the same max over remaining logged candidates as DRL-Rec's Double DQN, picked by the
   target actor instead of the online Q network).
2. Actor: ``L_mu = -mean_b Q(s_b, mu(s_b))``, the critic evaluated at the actor's continuous
   action; the deterministic policy gradient. The critic's parameters are read as constants
   in this loss (:func:`actor_loss`), so it moves only the actor.
3. Target networks (encoder, item projection, actor, critic) follow softly, ``tau = 0.005``.

Design choices:

- The shared encoder (embeddings, self-attention, GRU) and the item projection ``W`` learn
  from the critic loss only; the actor loss reads the state detached. The critic is the
  part with a supervised-like signal (the TD error on clicks); letting the actor's
  ``-Q`` objective also shape the state would let the actor move the critic's inputs to
  wherever the critic happens to be high.
- Updates are sequential, as in DDPG and CleanRL: the critic steps first, then the actor
  steps against the updated critic, on the state computed before the critic's step (one
  encoder pass per step; the state only feeds the actor's input, detached).
- Two Adam optimisers (critic side, actor), each with its own gradient-norm clip.
- A logged impression's ranking score is ``<mu(s), W a_t>`` (HRL-Rec's item recommender:
  the action ranks every candidate by a dot product); :func:`evaluate_hrl` reports the click
  AUC of that score and of ``Q(s, W a_t)``.

Reused from :mod:`training.drl.train`: the batches and their streaming
(:func:`~training.drl.train.iter_training_batches`, which only reads ``cfg``, ``side``,
``rng`` and ``batch`` of the trainer), :func:`~training.drl.train.soft_update`, the
checkpoint layout (``cfg``, ``rng``, ``step``, ``instances`` plus the networks and
optimisers) and the run folder (``checkpoint.pt``, ``train.json``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.features import DEFAULT_SPEC, FeatureSpec
from training.data.features import Requests, SideTables, build_requests
from training.data.pipeline import Dataset
from training.drl.batches import Batch, history, make_batch
from training.drl.losses import double_dqn_target, td_loss
from training.drl.networks import ActorCritic, QNetConfig, push
from training.drl.train import Checkpointed, soft_update, stream_rng, train

__all__ = [
    "HRLConfig",
    "HRLTrainer",
    "actor_loss",
    "ddpg_target",
    "evaluate_hrl",
    "impression_scores",
    "run_hrl",
    "train_hrl",
]


@dataclass(frozen=True)
class HRLConfig:
    """HRL-Rec item recommender (DDPG) hyper-parameters; encoder defaults = DRL-Rec's teacher."""

    gamma: float = 0.4
    """Discount, as DRL-Rec's."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor (DDPG: 10x below the critic's)."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic, the shared encoder and the item projection."""
    batch_size: int = 256
    """Real instances per step."""
    grad_clip: float = 10.0
    """Gradient-norm clip, applied to the critic side and to the actor separately."""
    target_tau: float = 0.005
    """Soft target update rate."""
    d_r: int = 16
    """Field embedding dimension."""
    gru_hidden: int = 64
    """GRU width (the state ``s``)."""
    mlp: tuple[int, ...] = (128, 64, 32)
    """Critic MLP widths."""
    actor_hidden: tuple[int, ...] = (64,)
    """Actor MLP hidden widths (then a linear layer to ``D`` and tanh)."""
    action_dim: int = 0
    """``D``, width of actions and item vectors ``W a_t``; 0: the size of ``a_t``."""
    memory: int = 10
    """m: impressions the state reads."""
    epochs: int = 1
    """Passes over the training split."""
    max_instances: int = 0
    """Stop after this many real instances (0: no limit)."""
    sessions_per_chunk: int = 2048
    """Sessions read and shuffled together."""
    reward: str = "click"
    """Feedback aspect used as the reward r_t."""
    seed: int = 0
    """Seed of the initialisation and the shuffling."""
    log_every: int = 50
    """Steps between logged loss lines."""

    def net(self, spec: FeatureSpec = DEFAULT_SPEC) -> QNetConfig:
        """The encoder/critic config for ``spec`` (the dataset's feature spec)."""
        return QNetConfig.from_spec(
            spec, d_r=self.d_r, gru_hidden=self.gru_hidden, mlp=self.mlp,
            memory=self.memory,
        )  # fmt: skip

    def with_overrides(self, **kw: Any) -> HRLConfig:
        unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"HRL config: unknown keys {sorted(unknown)}")
        return dataclasses.replace(self, **kw)


def _state(net: ActorCritic, enc: torch.Tensor, b: Batch) -> torch.Tensor:
    """``s_t (B, H)`` from the batch's distinct impression encodings ``enc (U, E)``."""
    return net.state(enc[b.hist_index], b.hist_mask, b.user_ctx)


def _next_state(net: ActorCritic, enc: torch.Tensor, b: Batch) -> torch.Tensor:
    """``s_{t+1} (B, H)``: the window with the instance's own impression pushed in."""
    buf, mask = push(enc[b.hist_index], b.hist_mask, enc[b.cur_index])
    return net.state(buf, mask, b.next_user_ctx)


@torch.no_grad()
def ddpg_target(target: ActorCritic, b: Batch, gamma: float) -> torch.Tensor:
    """``y = r + gamma (1 - done) Q'(s', W' a'*)``, ``a'* = argmax_{a' valid} <mu'(s'), W' a'>``.

    The discrete-candidate version of DDPG's ``Q'(s', mu'(s'))``: the target actor's action
    ``mu'(s')`` is mapped to the real item it ranks first among the next state's valid
    candidates (``b.next_cand (B, C, n_cand)`` where ``b.next_mask (B, C)``), and the target
    critic values that item's vector. Every part (encoder, ``W'``, ``mu'``, ``Q'``) is the
    target network's. Rows that are terminal or have no valid candidate bootstrap 0.
    Returns ``(B,)``, detached.
    """
    if gamma == 0:
        return b.reward
    enc = target.encode(b.enc_ids)
    s_next = _next_state(target, enc, b)
    x_next = target.item_vectors(b.next_cand)  # (B, C, D)
    pick = torch.einsum("bd,bcd->bc", target.action(s_next), x_next)  # the target actor's scores
    value = target.critic_q(s_next, x_next)  # (B, C)
    # Double DQN's target with "online picks, target values" read as "actor picks, critic values".
    return double_dqn_target(b.reward, b.done, gamma, pick, value, b.next_mask)


def actor_loss(net: ActorCritic, s: torch.Tensor) -> torch.Tensor:
    """``L_mu = -mean_b Q(s_b, mu(s_b))``, a scalar; ``s (B, H)`` is read detached.

    The critic runs with its parameters detached (``functional_call``), so the gradient
    reaches the actor through the action only: the critic, the encoder and ``W`` get none.
    """
    s = s.detach()
    params = {k: v.detach() for k, v in net.critic.named_parameters()}
    q, _ = torch.func.functional_call(net.critic, params, (s, net.action(s)[:, None]))
    return -q.mean()


class HRLTrainer(Checkpointed):
    """The actor-critic, its target copy, two optimisers, the RNG and the step counter."""

    def __init__(self, cfg: HRLConfig, side: SideTables, device: str = "cpu"):
        self.cfg = cfg
        self.side = side
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = ActorCritic(
                cfg.net(side.spec), actor_hidden=cfg.actor_hidden, action_dim=cfg.action_dim or None
            ).to(self.device)
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        actor_ids = {id(p) for p in self.net.actor.parameters()}
        self.critic_params = [p for p in self.net.parameters() if id(p) not in actor_ids]
        self.actor_params = list(self.net.actor.parameters())
        self.critic_opt = torch.optim.Adam(self.critic_params, lr=cfg.critic_lr)
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr)
        self.rng = stream_rng(cfg.seed)
        self.step_count = 0
        self.instances = 0

    def batch(self, req: Requests, g: np.ndarray) -> Batch:
        return make_batch(req, self.side, g, memory=self.cfg.memory, reward=self.cfg.reward)

    def step(self, b: Batch) -> dict[str, float]:
        """One DDPG update (critic, then actor, then targets); returns the step's metrics."""
        cfg = self.cfg
        self.net.train()
        b = b.to(self.device)
        s = _state(self.net, self.net.encode(b.enc_ids), b)
        q = self.net.critic_q(s, self.net.item_vectors(b.action[:, None]))[:, 0]
        y = ddpg_target(self.target, b, cfg.gamma)
        l_critic = td_loss(q, y)
        self.critic_opt.zero_grad(set_to_none=True)
        l_critic.backward()
        gn_c = nn.utils.clip_grad_norm_(self.critic_params, cfg.grad_clip)
        self.critic_opt.step()

        l_actor = actor_loss(self.net, s)
        self.actor_opt.zero_grad(set_to_none=True)
        l_actor.backward()
        gn_a = nn.utils.clip_grad_norm_(self.actor_params, cfg.grad_clip)
        self.actor_opt.step()

        soft_update(self.target, self.net, cfg.target_tau)
        self.step_count += 1
        self.instances += int(b.reward.shape[0])
        return {
            "losses/critic": float(l_critic.detach()),
            "losses/actor": float(l_actor.detach()),
            "charts/q": float(q.detach().mean()),
            "charts/target": float(y.mean()),
            "charts/grad_norm_critic": float(gn_c),
            "charts/grad_norm_actor": float(gn_a),
        }

    def _stateful(self) -> dict[str, Any]:
        return {
            "net": self.net,
            "target": self.target,
            "critic_opt": self.critic_opt,
            "actor_opt": self.actor_opt,
        }


def train_hrl(
    trainer: HRLTrainer,
    dataset: Dataset,
    *,
    out: Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 500,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on the dataset's training split with DRL-Rec's loop (:func:`train.train`).

    Resume loads ``out/checkpoint.pt`` and replays the batch stream from the seed's fresh
    RNG, skipping the steps already taken, so a resumed run sees the same batches as an
    uninterrupted one.
    """
    summary = train(
        trainer,  # type: ignore[arg-type]
        dataset,
        out=out,
        resume=resume,
        checkpoint_every=checkpoint_every,
        progress=progress,
        desc="hrl-rec",
    )
    summary["method"] = "hrl-rec-ddpg"
    if out is not None:
        (out / "train.json").write_text(json.dumps(summary, indent=2))
    return summary


@torch.no_grad()
def impression_scores(
    net: ActorCritic, req: Requests, memory: int, batch: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Actor score ``<mu(s_t), W a_t>`` and critic ``Q(s_t, W a_t)`` of every logged impression.

    States are built as in :func:`training.drl.train.impression_q` (the logged history of
    the last ``memory`` impressions and the request's user and context). Returns two
    ``(n_impressions,)`` float32 arrays.
    """
    net.eval()
    dev = next(net.parameters()).device
    actor = np.empty(req.n_impressions, dtype=np.float32)
    critic = np.empty(req.n_impressions, dtype=np.float32)
    n_uc = req.user_ctx.shape[1]
    for lo in range(0, req.n_impressions, batch):
        g = np.arange(lo, min(lo + batch, req.n_impressions))
        hist, mask = history(req, g, memory)
        s = net.state(
            net.encode(torch.from_numpy(hist).to(dev)),
            torch.from_numpy(mask).to(dev),
            torch.from_numpy(req.user_ctx[req.imp_req[g]]).to(dev),
        )
        cand = torch.from_numpy(req.imp_ids[g, n_uc:][:, None]).to(dev)
        actor[lo : lo + len(g)] = net.scores(s, cand)[:, 0].float().cpu().numpy()
        critic[lo : lo + len(g)] = (
            net.critic_q(s, net.item_vectors(cand))[:, 0].float().cpu().numpy()
        )
    return actor, critic


def evaluate_hrl(trainer: HRLTrainer, dataset: Dataset, split: str = "test") -> dict[str, float]:
    """Click AUC of the actor's ranking score and of the critic's Q on a split's impressions."""
    from training.eval.metrics import auc

    req = build_requests(dataset.read(split), trainer.side)
    y = req.label("click")
    actor, critic = impression_scores(trainer.net, req, trainer.cfg.memory)
    return {
        "impressions": float(req.n_impressions),
        "auc_actor": auc(y, actor),
        "auc_critic": auc(y, critic),
    }


def run_hrl(
    data: str | Path,
    out: str | Path,
    cfg: HRLConfig,
    *,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
    eval_split: str | None = "test",
) -> dict[str, Any]:
    """Train (single process) and evaluate; writes ``out/checkpoint.pt`` and ``out/train.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = Dataset.open(data)
    ds.require_aspects({cfg.reward, "click"}, f"HRL-Rec (reward {cfg.reward!r}, click AUC)")
    side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)
    trainer = HRLTrainer(cfg, side, device=device)
    summary = train_hrl(trainer, ds, out=out, resume=resume, progress=progress)
    if eval_split:
        summary["eval"] = evaluate_hrl(trainer, ds, eval_split)
        summary["eval_split"] = eval_split
        (out / "train.json").write_text(json.dumps(summary, indent=2))
    return summary
