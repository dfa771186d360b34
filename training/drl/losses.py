"""DRL-Rec's losses as small pure functions (METHODS.md, "DRL-Rec"; paper Eqs. 5-9).

This module owns the maths of one training step: the Double-DQN target, the TD loss, the
teacher's confidence, exploring and filtering (:func:`filter_lessons`), the lessons' weights
(:func:`lesson_weights`), the list-wise KL and hint distillation losses, and their weighted
sum (:class:`DistillLosses`). ``training.drl.train.DRLRec.forward`` only composes them. No
module state: the hint adapter ``g`` is built here (:func:`make_hint_adapter`) but owned by
the training module. Shapes: ``B`` states, ``C`` next candidates, ``X`` exploration inputs,
``L`` lessons (entries of a Q-value list), ``N`` hint instances.

Where METHODS.md (followed here) and the authors' simplified code differ:

- The code's TD target evaluates the logged next action, ``r + gamma Q'(s_{t+1}, a_{t+1})``
  (a SARSA-style target); METHODS.md and Eqs. 5-6 use Double DQN, the online network's
  argmax over the remaining logged candidates valued by the target network
  (:func:`double_dqn_target`).
- The code distils exploration lessons with the hint loss only; METHODS.md gives them both
  the list-wise KL (a list = the real item plus its filtered exploration items) and the hint
  loss, weighted by the batch-mean real confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DistillLosses",
    "combine",
    "confidence",
    "double_dqn_target",
    "filter_lessons",
    "hint_loss",
    "lesson_hint_loss",
    "lesson_weights",
    "listwise_kl",
    "make_hint_adapter",
    "td_loss",
]


def double_dqn_target(
    reward: torch.Tensor,
    done: torch.Tensor,
    gamma: float | torch.Tensor,
    q_next_online: torch.Tensor,
    q_next_target: torch.Tensor,
    next_mask: torch.Tensor,
) -> torch.Tensor:
    """Double-DQN target ``y = r + gamma (1 - done) Q'(s', argmax_{a valid} Q(s', a))``.

    Args:
        reward: ``(B,)`` reward ``r_t`` (clicks at the slot).
        done: ``(B,)`` bool, true after the last slot of the session's last request.
        gamma: discount: a number, or a ``(B,)`` tensor of per-instance discounts (the
            per-request discount variant: 1 within a request, gamma at its end).
        q_next_online: ``(B, C)`` online-network Q values of the next state's candidates; it
            picks the action.
        q_next_target: ``(B, C)`` target-network Q values of the same candidates; it values
            the picked action.
        next_mask: ``(B, C)`` bool, which candidates are valid next actions. A row with none
            is treated as terminal.

    Returns ``(B,)`` targets, detached (no gradient flows into either network through ``y``).
    The authors' code instead values the logged next action (see the module docstring).
    """
    if not q_next_online.shape == q_next_target.shape == next_mask.shape:
        raise ValueError(
            f"q_next_online {tuple(q_next_online.shape)}, q_next_target "
            f"{tuple(q_next_target.shape)} and next_mask {tuple(next_mask.shape)} must match"
        )
    if reward.shape != q_next_online.shape[:1] or done.shape != reward.shape:
        raise ValueError(
            f"reward {tuple(reward.shape)} and done {tuple(done.shape)} must be "
            f"({q_next_online.shape[0]},)"
        )
    if isinstance(gamma, torch.Tensor) and gamma.shape != reward.shape:
        raise ValueError(f"gamma {tuple(gamma.shape)} must be a number or {tuple(reward.shape)}")
    with torch.no_grad():
        masked = q_next_online.masked_fill(~next_mask, float("-inf"))
        best = masked.argmax(dim=1, keepdim=True)
        value = q_next_target.gather(1, best).squeeze(1)
        live = ~done.bool() & next_mask.any(dim=1)
        # where, not a product: a padded row's target value may be anything, even inf.
        bootstrap = torch.where(live, value, torch.zeros_like(value))
        return (reward + gamma * bootstrap).detach()


def td_loss(
    q: torch.Tensor, y: torch.Tensor, huber: bool = False, delta: float = 1.0
) -> torch.Tensor:
    """TD loss, a scalar: ``mean_b (q_b - y_b)^2`` (Eqs. 5-6), or the Huber loss.

    ``q (B,)`` Q values of the logged actions, ``y (B,)`` targets. With ``huber=True``,
    ``mean_b l(q_b - y_b)`` with ``l(x) = x^2 / 2`` for ``|x| <= delta``, else
    ``delta (|x| - delta / 2)``.
    """
    if q.shape != y.shape:
        raise ValueError(f"q {tuple(q.shape)} and y {tuple(y.shape)} must have the same shape")
    if huber:
        return F.huber_loss(q, y, delta=delta)
    return F.mse_loss(q, y)


def confidence(q_teacher_real: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Teacher confidence of real instances (Eq. 8): ``c_b = 1 - (q_b - y_b)^2 / eta``.

    ``eta = max_b (q_b - y_b)^2 + eps`` over the batch, so ``c`` is in ``(0, 1]``: 1 where the
    teacher hits its target, ~0 at the worst instance of the batch. ``q_teacher_real (B,)``,
    ``y (B,)`` -> ``(B,)``, detached. Exploration instances have no target; METHODS.md gives
    them ``c.mean()`` of the real instances.
    """
    if q_teacher_real.shape != y.shape or q_teacher_real.dim() != 1 or y.numel() == 0:
        raise ValueError(
            f"q_teacher_real {tuple(q_teacher_real.shape)} and y {tuple(y.shape)} must be "
            "the same non-empty (B,)"
        )
    err = (q_teacher_real.detach() - y.detach()) ** 2
    return 1.0 - err / (err.max() + eps)


def filter_lessons(
    q_teacher: torch.Tensor, q_student: torch.Tensor, mask: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exploring and filtering (METHODS.md, "DRL-Rec"; paper Sec. 3.3): which exploration
    inputs become lessons.

    The teacher's top ``k`` by its own Q values, then the student's top ``k`` by *its* Q
    values, among the valid inputs of each row. A student pick that the teacher also picked is
    kept in place but marked invalid (each item is a lesson once); a pick that lands on an
    invalid input (a row with fewer than ``k`` valid ones) is invalid too.

    Args:
        q_teacher: ``(B, X)`` teacher Q values of the exploration inputs.
        q_student: ``(B, X)`` student Q values of the same inputs.
        mask: ``(B, X)`` bool, valid inputs.
        k: picks per network, capped at ``X``; ``>= 1``.

    Returns ``idx (B, 2 k')`` columns of the inputs (teacher's picks first, each side in
    descending Q order) and ``valid (B, 2 k')`` bool, ``k' = min(k, X)``. Raises ValueError
    for mismatched shapes or ``k < 1``.
    """
    if not q_teacher.shape == q_student.shape == mask.shape or q_teacher.dim() != 2:
        raise ValueError(
            f"q_teacher {tuple(q_teacher.shape)}, q_student {tuple(q_student.shape)} and "
            f"mask {tuple(mask.shape)} must be the same (B, X)"
        )
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    k = min(k, q_teacher.shape[1])
    neg = torch.finfo(torch.float32).min
    top_t = q_teacher.masked_fill(~mask, neg).topk(k, dim=1).indices
    top_s = q_student.masked_fill(~mask, neg).topk(k, dim=1).indices
    valid_t = mask.gather(1, top_t)
    also_teacher = (top_s[:, :, None] == top_t[:, None, :]).any(-1)
    valid_s = mask.gather(1, top_s) & ~also_teacher
    return torch.cat([top_t, top_s], dim=1), torch.cat([valid_t, valid_s], dim=1)


def lesson_weights(c_real: torch.Tensor, n_lessons: int) -> torch.Tensor:
    """Confidence weight of every lesson of each state (METHODS.md, "Confidence").

    ``w[b, 0] = c_real[b]`` (the real item's own confidence) and ``w[b, j] = mean_b' c_real[b']``
    for ``j >= 1``: exploration lessons have no target, so they get the batch mean of the real
    confidences. ``c_real (B,)``, ``n_lessons`` ``L >= 1`` (the real item plus ``L - 1``
    exploration lessons) -> ``(B, L)``. With confidence switched off pass ones: every weight
    is then 1. Raises ValueError for a non-(B,) ``c_real`` or ``n_lessons < 1``.
    """
    if c_real.dim() != 1 or c_real.numel() == 0:
        raise ValueError(f"c_real {tuple(c_real.shape)} must be a non-empty (B,)")
    if n_lessons < 1:
        raise ValueError(f"n_lessons={n_lessons} must be >= 1 (the real item)")
    bsz = c_real.shape[0]
    return torch.cat([c_real[:, None], c_real.mean().expand(bsz, n_lessons - 1)], dim=1)


def listwise_kl(
    q_teacher: torch.Tensor,
    q_student: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    tau: float = 10.0,
) -> torch.Tensor:
    """Confidence-weighted list-wise KL distillation (Eq. 7, typo fixed), a scalar.

    ``L_KL = (1 / |lists|) sum_b w_b tau^2 KL(p_b || p~_b)`` with, over the valid entries
    ``j`` of row ``b``, ``p_b = softmax(q^T_b / tau)`` and ``p~_b = softmax(q^S_b / tau)``,
    ``KL(p || p~) = sum_j p_j (ln p_j - ln p~_j)``. A row is one Q-value list (one state's
    lesson items); the sum is divided by the number of rows with at least one valid entry,
    i.e. it is a mean over lists (a fully masked row is padding and counts for nothing; the
    loss is 0 if every row is). ``tau^2`` keeps the gradient scale independent of ``tau``
    (Hinton et al.).

    Shapes: ``q_teacher``, ``q_student``, ``mask`` (bool) ``(B, L)``; ``weight (B,)``, the
    list's confidence. The teacher side and ``weight`` are detached here (stop-gradient: the
    teacher learns only from its TD loss).
    """
    if not q_teacher.shape == q_student.shape == mask.shape or q_teacher.dim() != 2:
        raise ValueError(
            f"q_teacher {tuple(q_teacher.shape)}, q_student {tuple(q_student.shape)} and "
            f"mask {tuple(mask.shape)} must be the same (B, L)"
        )
    if weight.shape != q_teacher.shape[:1]:
        raise ValueError(f"weight {tuple(weight.shape)} must be ({q_teacher.shape[0]},)")
    if not tau > 0:
        raise ValueError(f"tau={tau} must be > 0")
    # A finite fill (not -inf) keeps p = 0 and ln p finite at masked entries: no 0 * inf NaN.
    fill = torch.finfo(q_student.dtype).min / 4
    log_p_t = torch.log_softmax((q_teacher.detach() / tau).masked_fill(~mask, fill), dim=1)
    log_p_s = torch.log_softmax((q_student / tau).masked_fill(~mask, fill), dim=1)
    terms = log_p_t.exp() * (log_p_t - log_p_s)
    kl = torch.where(mask, terms, torch.zeros_like(terms)).sum(dim=1)  # (B,)
    lists = mask.any(dim=1)
    per_row = torch.where(lists, weight.detach() * kl, torch.zeros_like(kl))
    return tau**2 * per_row.sum() / lists.sum().clamp_min(1)


def hint_loss(
    h_teacher: torch.Tensor, h_student_adapted: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Confidence-weighted hint loss (Eq. 9), a scalar: ``mean_i w_i ||h^T_i - g(h^S_i)||^2``.

    The squared norm sums over features; the mean runs over the ``N`` instances (real and
    filtered exploration). ``h_teacher (N, Ht)`` is detached here; ``h_student_adapted (N,
    Ht)`` is ``g(h^S)`` from :func:`make_hint_adapter`; ``weight (N,)`` the confidences.
    """
    if h_teacher.shape != h_student_adapted.shape or h_teacher.dim() != 2:
        raise ValueError(
            f"h_teacher {tuple(h_teacher.shape)} and h_student_adapted "
            f"{tuple(h_student_adapted.shape)} must be the same (N, Ht)"
        )
    if weight.shape != h_teacher.shape[:1]:
        raise ValueError(f"weight {tuple(weight.shape)} must be ({h_teacher.shape[0]},)")
    sq = ((h_teacher.detach() - h_student_adapted) ** 2).sum(dim=1)
    return (weight.detach() * sq).mean()


def lesson_hint_loss(
    h_teacher: torch.Tensor,
    h_student: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    adapter: nn.Module | None = None,
) -> torch.Tensor:
    """The hint loss (Eq. 9) over the valid lessons of each state, a scalar.

    ``mean_{(b, j) valid} w_bj ||h^T_bj - g(h^S_bj)||^2``: :func:`hint_loss` on the ``N``
    entries where ``mask`` is true (the mean runs over them, not over all ``B L``). Shapes:
    ``h_teacher (B, L, Ht)``, ``h_student (B, L, Hs)``, ``weight`` and ``mask`` (bool)
    ``(B, L)``; ``adapter`` is ``g`` (:func:`make_hint_adapter`; ``None``: identity, then
    ``Hs`` must equal ``Ht``), applied to the valid entries only.
    """
    if h_teacher.dim() != 3 or h_student.shape[:2] != h_teacher.shape[:2]:
        raise ValueError(
            f"h_teacher {tuple(h_teacher.shape)} and h_student {tuple(h_student.shape)} "
            "must be (B, L, H) with the same B, L"
        )
    if not weight.shape == mask.shape == h_teacher.shape[:2]:
        raise ValueError(
            f"weight {tuple(weight.shape)} and mask {tuple(mask.shape)} must be "
            f"{tuple(h_teacher.shape[:2])}"
        )
    h_s = h_student[mask]
    return hint_loss(h_teacher[mask], h_s if adapter is None else adapter(h_s), weight[mask])


def make_hint_adapter(student_width: int, teacher_width: int) -> nn.Module:
    """``g``: ``nn.Linear(student_width, teacher_width)`` (FitNets' regressor), or identity
    when the widths are equal."""
    if student_width < 1 or teacher_width < 1:
        raise ValueError(f"widths must be >= 1, got {student_width} and {teacher_width}")
    if student_width == teacher_width:
        return nn.Identity()
    return nn.Linear(student_width, teacher_width)


@dataclass(frozen=True)
class DistillLosses:
    """The four loss terms of a step and their weighted sum (scalars)."""

    td_teacher: torch.Tensor
    """``L_T``: the teacher's TD loss."""
    td_student: torch.Tensor
    """``L_S``: the student's TD loss."""
    kl: torch.Tensor
    """``L_KL``: the list-wise KL distillation loss."""
    hint: torch.Tensor
    """``L_Hint``: the hint loss."""
    total: torch.Tensor
    """``lambda_1 L_T + lambda_2 L_S + lambda_3 L_KL + lambda_4 L_Hint``; backpropagate this."""

    def metrics(self) -> dict[str, float]:
        """Floats under the grouped names ``losses/...`` for logging."""
        return {
            "losses/td_teacher": float(self.td_teacher.detach()),
            "losses/td_student": float(self.td_student.detach()),
            "losses/kl": float(self.kl.detach()),
            "losses/hint": float(self.hint.detach()),
            "losses/total": float(self.total.detach()),
        }


def combine(
    td_t: torch.Tensor,
    td_s: torch.Tensor,
    kl: torch.Tensor,
    hint: torch.Tensor,
    weights: tuple[float, float, float, float] = (2.0, 2.0, 1.0, 1.0),
) -> DistillLosses:
    """``L = lambda_1 L_T + lambda_2 L_S + lambda_3 L_KL + lambda_4 L_Hint`` (paper: 2:2:1:1).

    An ablation switches a term off with a zero weight. The teacher gets gradients only from
    ``L_T`` because the distillation terms detach the teacher.
    """
    if len(weights) != 4:
        raise ValueError(f"weights must have 4 entries, got {weights}")
    w1, w2, w3, w4 = weights
    total = w1 * td_t + w2 * td_s + w3 * kl + w4 * hint
    return DistillLosses(td_teacher=td_t, td_student=td_s, kl=kl, hint=hint, total=total)
