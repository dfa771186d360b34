"""MMRF's samples: slot-level transitions, non-impression sampling, the simulated buffer D^M.

The MDP is DRL-Rec's (:mod:`training.drl.batches`): one transition per slot, the state the
session's last ``m`` impressions plus the request's user and context, the next state the same
window with the placed item pushed in. The paper's step is a request (one action ranks the
candidates, the top K are shown); the slot-level MDP is the same ranking built position by
position, which is how the service builds its lists with a cached state, and lets the
existing streaming batches, next-state rules and serving graphs be reused.

Non-impression samples (METHODS.md, Algorithm 1 lines 5-7): for each real instance (slot
``t`` of request ``r``), each of the request's non-impressed candidates is kept with
probability ``rate`` (~25%, :func:`sample_non_impressions`); a random action ``a~`` drawn
uniformly in the actions' box ``[-1, 1]^D`` ranks the kept ones by ``<a~, v>`` and the top
``K`` are picked (:func:`random_action_picks`). Each pick ``x~`` becomes a transition
``(s_t, x~, r~, s_t + x~)``: the state of the real instance, the picked item as the action,
feedback simulated by M (Eq. 6; or a constant for MMRF-NS), and as next state the real
instance's next state with ``x~`` pushed into the window instead of the logged item (same
user/context, same terminal flag: where the next state lies depends on the slot, not on the
item). These go to :class:`SimulatedBuffer` (D^M), from which each agent update draws a
share of its mini-batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from training.data.features import Requests, candidate_ids
from training.drl.batches import Batch

__all__ = [
    "MMRFBatch",
    "SimulatedBuffer",
    "Transitions",
    "cat_transitions",
    "non_impression_pool",
    "random_action_picks",
    "real_transitions",
    "sample_non_impressions",
]


@dataclass
class Transitions:
    """Slot-level transitions, real or simulated (``B`` rows)."""

    hist_ids: torch.Tensor  # (B, m, n) ids of the m impressions before the state
    hist_mask: torch.Tensor  # (B, m) bool
    user_ctx: torch.Tensor  # (B, n_uc) user + context ids of the state's request
    action: torch.Tensor  # (B, n_cand) item + list ids of the placed item
    feedback: torch.Tensor  # (B, A) feedback on the model scale (simulated where simulated)
    reward: torch.Tensor  # (B, A) each agent's reward
    done: torch.Tensor  # (B,) bool
    next_user_ctx: torch.Tensor  # (B, n_uc) user + context ids of the next state
    simulated: torch.Tensor  # (B,) bool

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    def to(self, device: torch.device | str) -> Transitions:
        return Transitions(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def index(self, idx: torch.Tensor) -> Transitions:
        return Transitions(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def placed_ids(self) -> torch.Tensor:
        """``(B, n)`` the placed impression's ids (user/context then item/list): what the
        state step encodes and pushes into the window."""
        return torch.cat([self.user_ctx, self.action], dim=1)


def cat_transitions(a: Transitions, b: Transitions) -> Transitions:
    """Rows of ``a`` then rows of ``b``."""
    return Transitions(
        **{f.name: torch.cat([getattr(a, f.name), getattr(b, f.name)]) for f in fields(a)}
    )


@dataclass
class MMRFBatch:
    """One step's input: real transitions and, per real state, its non-impression pool."""

    real: Transitions
    pool_ids: torch.Tensor  # (B, P, n_cand) sampled non-impressions at the state's slot
    pool_mask: torch.Tensor  # (B, P) bool
    random_action: torch.Tensor  # (B, D) the random action a~ in [-1, 1]^D

    @property
    def reward(self) -> torch.Tensor:
        """``(B, A)`` the real rewards (the shared loop counts instances by its first dim)."""
        return self.real.reward

    def to(self, device: torch.device | str) -> MMRFBatch:
        return MMRFBatch(
            self.real.to(device),
            self.pool_ids.to(device),
            self.pool_mask.to(device),
            self.random_action.to(device),
        )


def real_transitions(b: Batch, feedback: torch.Tensor, reward: torch.Tensor) -> Transitions:
    """The logged impressions of a DRL-Rec :class:`~training.drl.batches.Batch` as
    :class:`Transitions`; ``feedback``, ``reward`` ``(B, A)`` on the model scale."""
    n = len(b.action)
    return Transitions(
        hist_ids=b.enc_ids[b.hist_index],
        hist_mask=b.hist_mask,
        user_ctx=b.user_ctx,
        action=b.action,
        feedback=feedback,
        reward=reward,
        done=b.done,
        next_user_ctx=b.next_user_ctx,
        simulated=torch.zeros(n, dtype=torch.bool),
    )


def sample_non_impressions(
    cand_mask: np.ndarray, n_shown: np.ndarray, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """``(B, C)`` bool: each non-impressed candidate kept independently with probability ``rate``.

    A candidate column ``j`` of a row is a non-impression when it is valid
    (``cand_mask[b, j]``) and ``j >= n_shown[b]`` (shown items come first,
    :class:`~training.data.features.Requests`). ``cand_mask (B, C)`` bool, ``n_shown (B,)``.
    Raises ValueError for ``rate`` outside ``[0, 1]``.
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"rate={rate} must be in [0, 1]")
    cols = np.arange(cand_mask.shape[1])[None, :]
    non_imp = cand_mask & (cols >= np.asarray(n_shown)[:, None])
    return non_imp & (rng.random(cand_mask.shape) < rate)


def non_impression_pool(
    req: Requests, r: np.ndarray, t: np.ndarray, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The sampled non-impressions of instances at slot ``t`` of request ``r`` (``(B,)``):
    ``(B, P, n_cand)`` item + list ids at slot ``t`` and a ``(B, P)`` mask, ``P`` the largest
    count in the batch (at least 1; padding columns masked)."""
    keep = sample_non_impressions(req.cand_mask[r], req.n_shown[r], rate, rng)
    p = max(1, int(keep.sum(axis=1).max()) if len(r) else 1)
    # Kept columns first, in column order: a stable sort of "not kept".
    cols = np.argsort(~keep, axis=1, kind="stable")[:, :p]
    mask = np.take_along_axis(keep, cols, axis=1)
    return candidate_ids(req, r, t, cols=cols), mask


def random_action_picks(
    scores: torch.Tensor, mask: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` of each row's valid entries by ``scores`` (a random action's ``<a~, v>``).

    ``scores``, ``mask`` ``(B, P)`` -> ``idx (B, k')`` (columns, best first) and ``valid (B,
    k')`` (false where a row has fewer than ``k'`` valid entries), ``k' = min(k, P)``.
    Raises ValueError for ``k < 1`` or mismatched shapes.
    """
    if scores.shape != mask.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and mask {tuple(mask.shape)} differ")
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    k = min(k, scores.shape[1])
    idx = scores.masked_fill(~mask, float("-inf")).topk(k, dim=1).indices
    return idx, mask.gather(1, idx)


class SimulatedBuffer:
    """D^M: a ring buffer of simulated :class:`Transitions` on the CPU.

    ``add`` appends (overwriting the oldest once ``capacity`` is reached); ``sample(n, rng)``
    draws ``min(n, len)`` rows uniformly with replacement from a numpy Generator. Its
    ``state_dict`` holds the contents, so a checkpoint resumes with the same buffer.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        self.capacity = int(capacity)
        self.data: Transitions | None = None
        self.size = 0
        self.pos = 0

    def __len__(self) -> int:
        return self.size

    def add(self, t: Transitions) -> None:
        t = t.to("cpu")
        n = len(t)
        if n == 0:
            return
        if self.data is None:
            self.data = Transitions(
                **{
                    f.name: torch.zeros((self.capacity, *getattr(t, f.name).shape[1:]),
                                        dtype=getattr(t, f.name).dtype)
                    for f in fields(t)
                }
            )  # fmt: skip
        if n > self.capacity:
            t = t.index(torch.arange(n - self.capacity, n))
            n = self.capacity
        slots = (self.pos + torch.arange(n)) % self.capacity
        for f in fields(t):
            getattr(self.data, f.name)[slots] = getattr(t, f.name)
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)

    def sample(self, n: int, rng: np.random.Generator) -> Transitions | None:
        if self.data is None or self.size == 0 or n < 1:
            return None
        idx = torch.from_numpy(rng.integers(0, self.size, size=min(n, self.size)))
        return self.data.index(idx)

    def state_dict(self) -> dict[str, Any]:
        data = None if self.data is None else {f.name: getattr(self.data, f.name)
                                                for f in fields(self.data)}  # fmt: skip
        return {"capacity": self.capacity, "size": self.size, "pos": self.pos, "data": data}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.capacity = int(sd["capacity"])
        self.size = int(sd["size"])
        self.pos = int(sd["pos"])
        # A checkpoint loaded with map_location on a GPU brings the contents there; D^M lives
        # on the CPU (add() writes CPU rows into it).
        data = sd["data"]
        self.data = None if data is None else Transitions(**{k: v.cpu() for k, v in data.items()})
