"""The list builder: a top-K list position by position with the cached session state.

This is the one implementation of serving-time ranking: the service calls it for every
request and training's online evaluation of exported bundles calls it in the simulator, so
what is measured is what is served. numpy + onnxruntime only.

For ``B`` requests with ``C`` candidates each and a list of ``K``:

1. once per request: featurise the user and context (:func:`contract.features.group_ids`) and
   the candidates (the bundle's item table), the per-request list fields, and run the
   model's ``request`` graph (state half and item half of the first MLP layer);
2. at each position ``t``: write the per-slot list fields of every candidate
   (:class:`contract.features.ListFieldEncoder`, counts over the items already placed), run
   ``score`` over the candidates, mask the placed ones, pick; then, for a stateful model, run
   ``step`` on the placed impression (its 22 fields as placed) to advance the state.

Exploration (DRL-Rec Sec. 4, "online exploration"): at each position, with probability
``epsilon`` the pick is a uniform draw among the ``top_k`` best remaining candidates instead
of the best. The logged propensity of the chosen item ``j`` at position ``t`` given the
earlier positions (contract/schema.py's convention) is
``(1 - epsilon) [j = best] + epsilon [j in top-k'] / k'`` with ``k' = min(top_k, remaining)``,
so a greedy pick without exploration has propensity 1. Ties in the scores break towards the
earlier candidate (stable order).

Documented behaviour at the edges: ``K`` larger than the candidate count returns a list of
all ``C`` candidates; duplicate candidate ids in a request raise :class:`RankingInputError`
naming the id; unknown item ids are ranked with the fields computed from the id alone
(hashed ``item_id``, 0 = unknown elsewhere: training's featurisation of ids missing from its
tables) and are flagged in :attr:`Lists.unknown` so the caller can count them.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

import numpy as np

from contract.features import group_ids
from runtime.bundle import Bundle, LoadedModel

__all__ = [
    "Exploration",
    "Lists",
    "RankingInputError",
    "SessionState",
    "build_lists",
    "warm_up",
]

_STATE_MAGIC = b"RKS1"


class RankingInputError(ValueError):
    """A request the builder cannot rank; the message names the field and the value."""


@dataclass(frozen=True)
class Exploration:
    """``epsilon`` in [0, 1): share of positions explored; ``top_k`` >= 1: how many of the best
    remaining candidates an explored position draws from (uniformly)."""

    epsilon: float = 0.0
    top_k: int = 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon < 1.0:
            raise RankingInputError(f"exploration epsilon={self.epsilon}: must be in [0, 1)")
        if self.top_k < 1:
            raise RankingInputError(f"exploration top_k={self.top_k}: must be >= 1")


@dataclass
class SessionState:
    """What the next request of a session needs.

    ``buffer (m, E)`` float32 and ``mask (m,)`` bool: the encodings of the session's last
    ``m`` impressions, oldest first (empty for a stateless model); ``request_index``: requests
    served so far in the session; ``depth``: impressions shown; ``clicks``: clicks reported
    (through feedback); ``recent_tags (W,)``: tags of the last ``W`` impressions, oldest first,
    0 where the session has fewer. (0 is also the tag of items without one, which then count
    those empty slots as same-tag: training's featurisation and the simulator use the same
    convention, so serving keeps it rather than skew from what the model was trained on.)
    """

    buffer: np.ndarray
    mask: np.ndarray
    request_index: int = 0
    depth: int = 0
    clicks: int = 0
    recent_tags: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def new(cls, model: LoadedModel, recent_window: int) -> SessionState:
        """A session's first request: empty window, zero counters."""
        return cls(
            buffer=np.zeros((model.memory, model.enc_dim), dtype=np.float32),
            mask=np.zeros(model.memory, dtype=bool),
            recent_tags=np.zeros(recent_window, dtype=np.int64),
        )

    def to_bytes(self) -> bytes:
        """Compact binary encoding: a 36-byte header, then the raw arrays (little-endian)."""
        m, e = self.buffer.shape
        head = struct.pack(
            "<4sIIIqqq", _STATE_MAGIC, m, e, len(self.recent_tags),
            self.request_index, self.depth, self.clicks,
        )  # fmt: skip
        return b"".join([
            head,
            np.ascontiguousarray(self.buffer, dtype="<f4").tobytes(),
            np.packbits(self.mask).tobytes(),
            np.ascontiguousarray(self.recent_tags, dtype="<i4").tobytes(),
        ])  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionState:
        """Inverse of :meth:`to_bytes`; raises ValueError on anything else."""
        n_head = struct.calcsize("<4sIIIqqq")
        if len(data) < n_head or data[:4] != _STATE_MAGIC:
            raise ValueError("not an encoded session state")
        _, m, e, w, req, depth, clicks = struct.unpack_from("<4sIIIqqq", data)
        nb, nm = 4 * m * e, (m + 7) // 8
        if len(data) != n_head + nb + nm + 4 * w:
            raise ValueError(f"encoded session state has {len(data)} bytes, expected "
                             f"{n_head + nb + nm + 4 * w}")  # fmt: skip
        o = n_head
        buf = np.frombuffer(data, "<f4", m * e, o).reshape(m, e).astype(np.float32)
        mask = np.unpackbits(np.frombuffer(data, np.uint8, nm, o + nb))[:m].astype(bool)
        tags = np.frombuffer(data, "<i4", w, o + nb + nm).astype(np.int64)
        return cls(buf, mask, int(req), int(depth), int(clicks), tags)


@dataclass
class Lists:
    """The lists built for ``B`` requests (``K' = min(K, C)`` positions each).

    ``index (B, K')`` into the request's candidates; ``item_ids (B, K')``; ``scores (B, K')``
    float32, the model's score of the chosen item at its position; ``explored (B, K')``;
    ``propensity (B, K')`` float64 (see the module docstring); ``unknown (B, C)`` candidates
    missing from the bundle's item table; ``states``: each session's state after the list;
    ``timings``: seconds spent featurising and in the graphs (the rest is list building).
    """

    index: np.ndarray
    item_ids: np.ndarray
    scores: np.ndarray
    explored: np.ndarray
    propensity: np.ndarray
    unknown: np.ndarray
    states: list[SessionState]
    timings: dict[str, float] = field(default_factory=dict)


def _check_candidates(candidates: np.ndarray) -> None:
    if candidates.ndim != 2 or candidates.shape[1] == 0:
        raise RankingInputError(f"candidates: shape {candidates.shape}, expected (B, C >= 1)")
    s = np.sort(candidates, axis=1)
    dup = s[:, 1:] == s[:, :-1]
    if dup.any():
        r, c = np.argwhere(dup)[0]
        raise RankingInputError(f"candidates: item id {int(s[r, c])} appears more than once")


def build_lists(
    bundle: Bundle,
    model: LoadedModel,
    states: list[SessionState],
    user_ids: np.ndarray,
    timestamps: np.ndarray,
    candidates: np.ndarray,
    k: int,
    exploration: Exploration | None = None,
    rng: np.random.Generator | None = None,
    request_index: np.ndarray | None = None,
    user_f: np.ndarray | None = None,
) -> Lists:
    """Build one list per request with ``model`` of ``bundle``.

    Args:
        states: ``B`` session states (:meth:`SessionState.new` for a new session).
        user_ids: ``(B,)`` raw user ids; timestamps: ``(B,)`` epoch milliseconds.
        candidates: ``(B, C)`` raw item ids, distinct within a row.
        k: list length, >= 1 (capped at ``C``).
        exploration: ``None`` or epsilon 0 ranks greedily; otherwise needs ``rng``.
        request_index: ``(B,)`` overrides ``state.request_index`` for the context field.
        user_f: ``(B, n_user)`` user field ids replacing the table lookup of ``user_ids``
            (:meth:`runtime.bundle.SideTables.user_with`).

    Raises RankingInputError naming the field and value for bad shapes (B other than the
    bundle's ``batch_size`` when it has one), ``k < 1``, duplicate
    candidates, or exploration without a generator.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    _check_candidates(candidates)
    b, c = candidates.shape
    if len(states) != b or np.shape(user_ids) != (b,) or np.shape(timestamps) != (b,):
        raise RankingInputError(
            f"states ({len(states)}), user_ids {np.shape(user_ids)} and timestamps "
            f"{np.shape(timestamps)} must match the {b} candidate rows"
        )
    if k < 1:
        raise RankingInputError(f"k={k}: must be >= 1")
    if bundle.batch_size is not None and b != bundle.batch_size:
        raise RankingInputError(f"candidates: {b} requests in one call; the bundle was loaded "
                                f"for batch_size={bundle.batch_size}")  # fmt: skip
    explore = exploration is not None and exploration.epsilon > 0
    if explore and rng is None:
        raise RankingInputError("exploration needs a numpy Generator (rng)")
    spec = bundle.spec
    k_eff = min(k, c)
    rows = np.arange(b)

    # Once per request.
    t_start = time.perf_counter()
    if user_f is None:
        user_f, _ = bundle.tables.users(np.asarray(user_ids, dtype=np.int64))
    req_idx = (
        np.array([s.request_index for s in states], dtype=np.int64)
        if request_index is None
        else np.asarray(request_index, dtype=np.int64)
    )
    ctx = group_ids(spec, "context", {"timestamp": np.asarray(timestamps, np.int64),
                                      "request_index": req_idx})  # fmt: skip
    user_ctx = np.concatenate([user_f, ctx], axis=1)
    item_f, tags, authors, known = bundle.tables.items(candidates)
    recent_tags = np.stack([s.recent_tags for s in states])
    recent = (tags[:, :, None] == recent_tags[:, None, :]).sum(-1)
    enc = bundle.list_encoder
    depth = np.array([s.depth for s in states], dtype=np.int64)
    clicks = np.array([s.clicks for s in states], dtype=np.int64)
    request_list = enc.request_ids(recent, depth, clicks)
    slot_list = np.zeros((b, c, enc.n_slot), dtype=np.int64)
    feeds: dict[str, np.ndarray] = {
        "user_ctx": user_ctx, "cand_item": item_f, "request_list": request_list,
        "slot_list": slot_list,
    }  # fmt: skip
    if model.stateful:
        feeds["buffer"] = np.stack([s.buffer for s in states]).astype(np.float32, copy=False)
        feeds["mask"] = np.stack([s.mask for s in states])
    t_model = 0.0
    t0 = time.perf_counter()
    t_feat = t0 - t_start
    graphs = model.spec.graphs
    req_in = [i.name for i in graphs["request"].inputs]
    req_out = [o.name for o in graphs["request"].outputs]
    feeds.update(zip(req_out, model.run("request", {n: feeds[n] for n in req_in}), strict=True))
    t1 = time.perf_counter()
    t_model += t1 - t0
    score_feeds = {i.name: feeds[i.name] for i in graphs["score"].inputs}
    if model.stateful:
        step_feeds = {i.name: feeds[i.name] for i in graphs["step"].inputs if i.name in feeds}
        step_out = [o.name.removeprefix("next_") for o in graphs["step"].outputs]
        # A placed item's 22 ids: everything but its per-slot list fields is known now.
        n_uc, n_item = user_ctx.shape[1], item_f.shape[2]
        imp_base = np.concatenate(
            [np.broadcast_to(user_ctx[:, None], (b, c, n_uc)), item_f,
             enc.merge(request_list, np.zeros_like(slot_list))], axis=2,
        )  # fmt: skip
        # Spec columns of the per-slot fields (merge's inverse permutation).
        slot_cols = n_uc + n_item + np.argsort(enc.order_index)[enc.n_request :]
    t_feat += time.perf_counter() - t1

    placed = np.zeros((b, c), dtype=bool)
    same_tag = np.zeros((b, c), dtype=np.int64)
    same_author = np.zeros((b, c), dtype=np.int64)
    index = np.empty((b, k_eff), dtype=np.int64)
    scores = np.empty((b, k_eff), dtype=np.float32)
    explored = np.zeros((b, k_eff), dtype=bool)
    propensity = np.ones((b, k_eff), dtype=np.float64)
    for t in range(k_eff):
        t0 = time.perf_counter()
        enc.slot_ids(slot_list, t, same_tag, same_author)
        t1 = time.perf_counter()
        (q,) = model.run("score", score_feeds)
        t2 = time.perf_counter()
        t_feat += t1 - t0
        t_model += t2 - t1
        q[placed] = -np.inf  # onnxruntime hands back a fresh array
        best = q.argmax(axis=1)
        pick = best
        if explore:
            assert exploration is not None and rng is not None
            eps, kk = exploration.epsilon, min(exploration.top_k, c - t)
            go = np.flatnonzero(rng.random(b) < eps)
            # The best item is always among the top kk: (1 - eps) + eps / kk, unless a draw
            # below picks another one (eps / kk). Only drawing rows need the ranking.
            propensity[:, t] = (1 - eps) + eps / kk
            if len(go):
                top = np.argsort(-q[go], axis=1, kind="stable")[:, :kk]
                draw = top[np.arange(len(go)), rng.integers(0, kk, size=len(go))]
                pick = best.copy()
                pick[go] = draw
                other = go[draw != best[go]]
                explored[other, t] = True
                propensity[other, t] = eps / kk
        index[:, t] = pick
        scores[:, t] = q[rows, pick]
        placed[rows, pick] = True
        same_tag += tags == tags[rows, pick][:, None]
        same_author += authors == authors[rows, pick][:, None]
        if model.stateful:
            imp = imp_base[rows, pick]
            imp[:, slot_cols] = slot_list[rows, pick]
            step_feeds["impression_ids"] = imp
            t0 = time.perf_counter()
            outs = model.run("step", step_feeds)
            t_model += time.perf_counter() - t0
            for name, v in zip(step_out, outs, strict=True):
                if name in step_feeds:
                    step_feeds[name] = v
                if name in score_feeds:
                    score_feeds[name] = v

    new_states = []
    for i, s in enumerate(states):
        shown_tags = tags[i, index[i]]
        w = len(s.recent_tags)
        new_states.append(
            SessionState(
                buffer=step_feeds["buffer"][i].copy() if model.stateful else s.buffer,
                mask=step_feeds["mask"][i].copy() if model.stateful else s.mask,
                request_index=int(req_idx[i]) + 1,
                depth=s.depth + k_eff,
                clicks=s.clicks,
                recent_tags=np.concatenate([s.recent_tags, shown_tags])[-w:]
                if w
                else s.recent_tags,
            )
        )
    return Lists(
        index=index,
        item_ids=candidates[rows[:, None], index],
        scores=scores,
        explored=explored,
        propensity=propensity,
        unknown=~known,
        states=new_states,
        timings={
            "featurise": t_feat,
            "model": t_model,
            "total": time.perf_counter() - t_start,
        },  # fmt: skip
    )


def warm_up(bundle: Bundle, model: LoadedModel, n_candidates: int = 8) -> Lists:
    """Run every graph of ``model`` once on a small request of the bundle's own items."""
    items = bundle.tables.item_ids[:n_candidates]
    if not len(items):
        items = np.arange(1, n_candidates + 1, dtype=np.int64)
    state = SessionState.new(model, bundle.spec.recent_window)
    return build_lists(bundle, model, [state], np.array([0]), np.array([0]), items[None], 2)
