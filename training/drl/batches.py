"""Training batches for list-wise Q learning, built from :class:`~training.data.features.Requests`.

One real instance is one logged impression ``g``: the item shown at slot ``t`` of request
``r``. Its state is the session's last ``m`` impressions before it plus the request's user and
context; its next state is slot ``t + 1`` of the same request, or slot 0 of the session's next
request after the last shown slot, or terminal after the last slot of the last request
(METHODS.md). The next state's candidates are the request's logged candidates not yet placed
(impressed and non-impressed): the Double-DQN max runs over them.

Exploration candidates (the *input* of DRL-Rec's exploring-and-filtering module) are the
request's logged candidates still unplaced at slot ``t`` (other than the real item), topped up
with uniformly drawn catalogue items (the "random items from the catalogue" of METHODS.md) to
``n_explore``, or a random subset when there are more than ``n_explore``.

Shapes: ``n_cand`` is the number of item + list fields of the data's feature spec (12 in
``DEFAULT_SPEC``; ``Requests.spec``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from contract.schema import FEEDBACK
from training.data.features import Requests, SideTables, candidate_ids, catalogue_ids
from training.drl.networks import push


@dataclass
class Batch:
    """Tensors of one training batch (B real instances)."""

    enc_ids: torch.Tensor  # (U, n) the distinct impressions the batch reads, encoded once
    hist_index: torch.Tensor  # (B, m) rows of enc_ids: the m impressions before the instance
    hist_mask: torch.Tensor  # (B, m) bool
    cur_index: torch.Tensor  # (B,) row of enc_ids of the instance's own impression
    user_ctx: torch.Tensor  # (B, 10)
    action: torch.Tensor  # (B, n_cand) item + list ids of the shown item
    reward: torch.Tensor  # (B,) float
    done: torch.Tensor  # (B,) bool
    same_request: torch.Tensor  # (B,) bool: the next state is the same request's next slot
    next_user_ctx: torch.Tensor  # (B, 10)
    next_cand: torch.Tensor  # (B, C, n_cand)
    next_mask: torch.Tensor  # (B, C) bool
    explore: torch.Tensor | None  # (B, X, n_cand)
    explore_mask: torch.Tensor | None  # (B, X) bool
    slate: torch.Tensor  # (B, K, n_cand) the request's shown items at slot t (real lessons)
    slate_mask: torch.Tensor  # (B, K) bool: shown, other than the instance's own item

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            **{
                k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                for k, v in self.__dict__.items()
            }
        )


def unplaced(cand_mask: np.ndarray, n_placed: np.ndarray) -> np.ndarray:
    """``(B, C)`` bool: the logged candidates not yet placed when ``n_placed`` slots are filled.

    A request's candidate columns hold the shown items first, in slot order, so after slots
    ``0 .. n_placed - 1`` the unplaced ones are the valid columns ``j >= n_placed``:
    ``cand_mask[b, j] & (j >= n_placed[b])``. ``cand_mask (B, C)`` bool, ``n_placed (B,)``.
    """
    cols = np.arange(cand_mask.shape[1])[None, :]
    return cand_mask & (cols >= np.asarray(n_placed)[:, None])


@dataclass(frozen=True)
class NextState:
    """Where each instance's next state is (METHODS.md, "DRL-Rec"); ``(B,)`` arrays but mask."""

    request: np.ndarray
    """Request of the next state (the instance's own request when ``done``)."""
    slot: np.ndarray
    """Slot the next state fills: ``t + 1`` within the request, 0 in the next request."""
    same_request: np.ndarray
    """bool: the next state is the same request's next slot."""
    done: np.ndarray
    """bool: terminal, after the last shown slot of the session's last request."""
    mask: np.ndarray
    """``(B, C)`` bool: the next state's valid actions, its request's unplaced logged
    candidates (impressed and non-impressed); all false when ``done``."""


def next_state(
    r: np.ndarray,
    t: np.ndarray,
    n_shown: np.ndarray,
    next_req: np.ndarray,
    cand_mask: np.ndarray,
) -> NextState:
    """The next state of instances at slot ``t`` of request ``r``: slot ``t + 1`` of ``r`` while
    ``t + 1 < n_shown[r]``, else slot 0 of ``next_req[r]``, else terminal (``next_req[r] < 0``).

    ``r``, ``t`` ``(B,)``; ``n_shown``, ``next_req`` ``(R,)`` and ``cand_mask (R, C)`` are
    per-request arrays of :class:`~training.data.features.Requests`. The Double-DQN max of
    the target (:func:`training.drl.losses.double_dqn_target`) runs over ``mask``.
    """
    same = t + 1 < n_shown[r]
    nxt = next_req[r]
    done = ~same & (nxt < 0)
    nr = np.where(same, r, np.where(done, r, nxt))
    nt = np.where(same, t + 1, 0)
    mask = unplaced(cand_mask[nr], nt) & ~done[:, None]
    return NextState(request=nr, slot=nt, same_request=same, done=done, mask=mask)


def history(req: Requests, g: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(B, m, n)`` ids and ``(B, m)`` mask of the ``m`` impressions before each ``g``."""
    idx, mask = history_index(req, g, m)
    return np.where(mask[..., None], req.imp_ids[idx], 0), mask


def history_index(req: Requests, g: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(B, m)`` flat impression indices (oldest first) and mask of the window before ``g``.

    The window is impressions ``g - m .. g - 1``, strictly before ``g`` (the state the item at
    ``g`` is chosen in does not contain it), valid where they belong to ``g``'s session
    (``>= imp_sess_start[g]``); invalid slots point at ``g`` itself, masked out.
    """
    idx = g[:, None] - m + np.arange(m)[None, :]
    mask = idx >= req.imp_sess_start[g][:, None]
    return np.where(mask, idx, g[:, None]), mask


def request_order(req: Requests, rng: np.random.Generator) -> np.ndarray:
    """All impressions, requests in random order, each request's slots kept together.

    Batches cut from this order hold whole requests, whose history windows overlap: each
    distinct impression is encoded once per batch instead of once per window.
    """
    perm = rng.permutation(req.n_requests)
    lens = req.n_shown[perm]
    starts = req.imp_start[perm]
    offset = np.repeat(starts - (np.cumsum(lens) - lens), lens)
    return offset + np.arange(int(lens.sum()))


def make_batch(
    req: Requests,
    side: SideTables,
    g: np.ndarray,
    *,
    memory: int,
    reward: str = "click",
    n_explore: int = 0,
    rng: np.random.Generator | None = None,
) -> Batch:
    """Build the batch of real instances ``g`` (flat impression indices of ``req``)."""
    g = np.asarray(g, dtype=np.int64)
    r = req.imp_req[g]
    t = req.imp_slot[g]
    hidx, hmask = history_index(req, g, memory)
    uniq, inv = np.unique(np.concatenate([hidx, g[:, None]], axis=1), return_inverse=True)
    inv = inv.reshape(len(g), memory + 1)
    nxt = next_state(r, t, req.n_shown, req.next_req, req.cand_mask)
    nr, nt, same, done = nxt.request, nxt.slot, nxt.same_request, nxt.done
    next_cand = candidate_ids(req, nr, nt)
    k = req.list_size
    slate = candidate_ids(req, r, t, cols=np.broadcast_to(np.arange(k), (len(r), k)))
    slate_mask = (np.arange(k)[None, :] < req.n_shown[r][:, None]) & (
        np.arange(k)[None, :] != t[:, None]
    )
    rew = req.feedback[r, t, FEEDBACK.index(reward)]
    explore = explore_mask = None
    if n_explore > 0:
        if rng is None:
            raise ValueError("n_explore > 0 needs an rng")
        explore, explore_mask = exploration_candidates(req, side, r, t, n_explore, rng)

    def lt(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))

    return Batch(
        enc_ids=lt(req.imp_ids[uniq]),
        hist_index=lt(inv[:, :memory]),
        hist_mask=torch.from_numpy(hmask),
        cur_index=lt(inv[:, memory]),
        user_ctx=lt(req.user_ctx[r]),
        action=lt(req.imp_ids[g, req.user_ctx.shape[1] :]),
        reward=torch.from_numpy(rew.astype(np.float32)),
        done=torch.from_numpy(done),
        same_request=torch.from_numpy(same),
        next_user_ctx=lt(req.user_ctx[nr]),
        next_cand=lt(next_cand),
        next_mask=torch.from_numpy(nxt.mask),
        explore=None if explore is None else lt(explore),
        explore_mask=None if explore_mask is None else torch.from_numpy(explore_mask),
        slate=lt(slate),
        slate_mask=torch.from_numpy(slate_mask),
    )


def exploration_candidates(
    req: Requests,
    side: SideTables,
    r: np.ndarray,
    t: np.ndarray,
    n_explore: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``(B, X, n_cand)`` ids and ``(B, X)`` mask of the exploration input of each instance."""
    b = len(r)
    n_cols = req.cand_item.shape[1]
    # The real item (slot t) is the state's own lesson, not an exploration input.
    free = unplaced(req.cand_mask[r], t + 1)
    if n_explore <= n_cols:
        # A random subset of the unplaced logged candidates: random keys, take the top X.
        keys = np.where(free, rng.random((b, n_cols)), -1.0)
        pick = np.argpartition(-keys, n_explore - 1, axis=1)[:, :n_explore]
        ids = candidate_ids(req, r, t, cols=pick)
        return ids, np.take_along_axis(free, pick, axis=1)
    logged = candidate_ids(req, r, t)
    extra = rng.integers(0, side.n_items, size=(b, n_explore - n_cols))
    cat = catalogue_ids(req, side, r, t, extra)
    ids = np.concatenate([logged, cat], axis=1)
    # A catalogue draw may repeat one of the request's candidates (about X/N of them); that
    # only duplicates a lesson, so it is left in rather than checked per batch.
    mask = np.concatenate([free, np.ones(extra.shape, dtype=bool)], axis=1)
    return ids, mask


def next_buffer(enc: torch.Tensor, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The next state's window: the instance's window with its own impression pushed in.

    ``enc (U, E')``: one row per distinct impression of the batch (encodings, or their GRU
    projections); returns ``buffer (B, m, E')`` and ``mask (B, m)``, as
    :func:`training.drl.networks.push` of ``enc[cur_index]`` onto ``enc[hist_index]``. The
    same step serving takes after placing an item.
    """
    return push(enc[b.hist_index], b.hist_mask, enc[b.cur_index])
