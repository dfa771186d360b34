"""MMRF's losses as small pure functions (METHODS.md, "MMRF"; paper Eqs. 4-6).

This module owns the maths of one MMRF step: the per-aspect TD targets and critic losses,
the actors' objective of Eq. 4, and the user-feedback model's loss, uncertainty and
simulated reward (Eqs. 5-6). No module state. Shapes: ``B`` instances, ``N`` agents (the
main WatchTime agent last), ``A`` feedback aspects (``A = N`` here, one agent per aspect).
The soft target update is :func:`training.drl.train.soft_update` (``theta' <- (1 - tau)
theta' + tau theta``), shared with DRL-Rec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "MMRFLosses",
    "actor_loss",
    "bernoulli_kl",
    "critic_losses",
    "feedback_loss",
    "simulated_reward",
    "td_targets",
]


def td_targets(
    reward: torch.Tensor, done: torch.Tensor, gamma: float, q_next: torch.Tensor
) -> torch.Tensor:
    """Per-aspect TD targets ``y^i = r^i + gamma (1 - done) Q'_i(s', pi'_i(s'))`` (Sec. 2.2).

    The paper's TD error is ``delta^i = r^i + gamma Q_phi_i(s_{t+1}, pi_theta_i(s_{t+1})) -
    Q_phi_i(s_t, a^i_t)``; here the bootstrap term comes from the target networks (METHODS.md:
    "deterministic policy gradient with target networks"): ``q_next[b, i]`` is the target
    critic ``i`` at the target actor ``i``'s action in the next state (the main agent's
    action is the target joint policy's ``a^N``).

    Args:
        reward: ``(B, N)`` reward of each aspect (:func:`training.mmrf.rewards.aspect_rewards`).
        done: ``(B,)`` bool, terminal (after the session's last impression).
        gamma: discount per step (one step = one slot).
        q_next: ``(B, N)`` bootstrap values; ignored (may be anything, even inf) where done.

    Returns ``(B, N)`` targets, detached. Raises ValueError on mismatched shapes.
    """
    if reward.dim() != 2 or q_next.shape != reward.shape or done.shape != reward.shape[:1]:
        raise ValueError(
            f"reward {tuple(reward.shape)}, q_next {tuple(q_next.shape)} and done "
            f"{tuple(done.shape)} must be (B, N), (B, N), (B,)"
        )
    with torch.no_grad():
        boot = torch.where(done.bool()[:, None], torch.zeros_like(q_next), q_next)
        return (reward + gamma * boot).detach()


def critic_losses(q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared TD error per aspect (Eq. 4's critic update): ``(mean_b (q_bi - y_bi)^2)_i``.

    ``q (B, N)`` critics at the logged actions, ``y (B, N)`` targets -> ``(N,)``. The trainer
    minimises the sum: each critic ``phi_i`` only appears in its own term.
    """
    if q.shape != y.shape or q.dim() != 2:
        raise ValueError(f"q {tuple(q.shape)} and y {tuple(y.shape)} must be the same (B, N)")
    return ((q - y.detach()) ** 2).mean(dim=0)


def actor_loss(
    q_main: torch.Tensor,
    q_aux: torch.Tensor,
    alpha_theta: float,
    beta: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """The actors' objective of Eq. 4 as a loss to minimise, a scalar.

    ``L = -alpha_theta mean_b Q_phi_N(s_b, pi_Theta(s_b)) - sum_k beta_k mean_b
    Q_phi_k(s_b, pi_theta_k(s_b))``. Gradient descent on ``L`` is Eq. 4's ascent: the first
    term (the main goal, through the joint policy) reaches every actor parameter the main
    action depends on (the main actor, the auxiliary actors through ``a^1..a^{N-1}``, the
    attention, the state projections); the ``k``-th auxiliary term reaches agent ``k``'s own
    parameters only (the caller builds ``pi_theta_k`` that way, see
    :meth:`training.mmrf.networks.MultiAgentActorCritic.own_aux_actions`). The critics must
    be evaluated with frozen parameters so that this loss moves the actors only.

    The paper writes the two updates as separate steps with rates ``alpha_theta`` and
    ``beta_i``; one loss with those weights and one optimiser step is the same first-order
    update (METHODS.md: "weight beta_i", "weight alpha_theta").

    Args:
        q_main: ``(B,)`` main critic at the joint policy's main action.
        q_aux: ``(B, N - 1)`` auxiliary critic ``k`` at agent ``k``'s own action.
        alpha_theta: weight of the main goal.
        beta: ``N - 1`` weights of the auxiliary goals.
    """
    beta_t = torch.as_tensor(beta, dtype=q_aux.dtype, device=q_aux.device)
    if q_main.dim() != 1 or q_aux.dim() != 2 or q_aux.shape[0] != q_main.shape[0]:
        raise ValueError(
            f"q_main {tuple(q_main.shape)} and q_aux {tuple(q_aux.shape)} must be (B,), (B, N-1)"
        )
    if beta_t.shape != q_aux.shape[1:]:
        raise ValueError(f"beta has {beta_t.numel()} entries; q_aux has {q_aux.shape[1]} agents")
    return -alpha_theta * q_main.mean() - (beta_t * q_aux.mean(dim=0)).sum()


def feedback_loss(
    logits: torch.Tensor, target: torch.Tensor, binary: Sequence[bool] | torch.Tensor
) -> torch.Tensor:
    """Per-aspect loss of one predictor of M (Eq. 5; METHODS.md: "MSE, or BCE for binary").

    Binary aspects: ``BCE(sigmoid(z), y)`` (with logits); the others (watch time on the
    [0, 1] scale): ``(sigmoid(z) - y)^2``. Means over instances. ``logits``, ``target``
    ``(B, A)``, ``binary`` ``A`` bools -> ``(A,)``.
    """
    if logits.shape != target.shape or logits.dim() != 2:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must be (B, A)"
        )
    is_bin = torch.as_tensor(binary, dtype=torch.bool, device=logits.device)
    if is_bin.shape != logits.shape[1:]:
        raise ValueError(f"binary has {is_bin.numel()} entries for {logits.shape[1]} aspects")
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    mse = (torch.sigmoid(logits) - target) ** 2
    return torch.where(is_bin, bce, mse).mean(dim=0)


def bernoulli_kl(r: torch.Tensor, r_prime: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``KL(P || P')`` of the Bernoulli distributions ``P = (r, 1 - r)``, ``P' = (r', 1 - r')``.

    ``r ln(r / r') + (1 - r) ln((1 - r) / (1 - r'))``, element-wise, both clamped to ``[eps,
    1 - eps]`` (so 0 and 1 give finite values; ``r = r'`` gives 0). Same shapes in and out.
    Sec. 2.3: the uncertainty of M's prediction, the two predictors' disagreement.
    """
    if r.shape != r_prime.shape:
        raise ValueError(f"r {tuple(r.shape)} and r_prime {tuple(r_prime.shape)} differ")
    p = r.clamp(eps, 1 - eps)
    q = r_prime.clamp(eps, 1 - eps)
    return p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())


def simulated_reward(
    r: torch.Tensor, r_prime: torch.Tensor, lam: float, eps: float = 1e-6
) -> torch.Tensor:
    """Simulated feedback of a non-impression (Eq. 6): ``mean(r, r') * exp(lam * KL(P || P'))``.

    METHODS.md and the paper's Eq. 6 agree on the sign: ``exp(+lam KL)`` with ``lam >= 0``
    inflates the feedback where the two predictors disagree (the paper: "samples with high
    uncertainty should be more explored, so as to reach a higher upper bound"), an optimism
    bonus, not the down-weighting of uncertain samples of UKD (the paper's ref. [14]); a
    negative ``lam`` gives that pessimistic variant. The bonus applies to the predicted
    *feedback*; for hate, whose reward is ``-hate``
    (:func:`training.mmrf.rewards.aspect_rewards`), it therefore penalises uncertain items.

    ``r``, ``r_prime`` in ``[0, 1]``, any equal shapes (``(B, K, A)`` in training) -> same
    shape. Not bounded by 1: with ``lam > 0`` an uncertain item can score above 1.
    """
    return 0.5 * (r + r_prime) * torch.exp(lam * bernoulli_kl(r, r_prime, eps))


@dataclass(frozen=True)
class MMRFLosses:
    """One step's loss terms (scalars, or ``(N,)`` per aspect)."""

    critic: torch.Tensor
    """``(N,)`` per-aspect squared TD errors."""
    actor: torch.Tensor
    """Eq. 4's actor loss."""
    model: torch.Tensor | None
    """``(A,)`` M's per-aspect loss, both predictors summed; ``None`` when M did not train."""

    def metrics(self, aspects: Sequence[str]) -> dict[str, float]:
        """Floats under grouped names: ``losses/critic_<aspect>``, ``losses/critic``
        (their sum), ``losses/actor``, ``losses/model_<aspect>``, ``losses/model``."""
        crit = self.critic.detach()
        out = {f"losses/critic_{a}": float(v) for a, v in zip(aspects, crit, strict=True)}
        out["losses/critic"] = float(self.critic.detach().sum())
        out["losses/actor"] = float(self.actor.detach())
        if self.model is not None:
            mod = self.model.detach()
            out.update({f"losses/model_{a}": float(v) for a, v in zip(aspects, mod, strict=True)})
            out["losses/model"] = float(self.model.detach().sum())
        return out
