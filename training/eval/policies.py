"""Trained models as ranking policies in the simulated world, and their slate probabilities.

:class:`OnlineFeatures` turns a live :class:`~training.sim.env.Observation` into model inputs
with the same ``contract.features`` functions that :mod:`training.data.features` applies to
logs (and that the service applies to HTTP requests): user and context ids, and for slot ``t``
the candidates' item and list ids given the items already placed. ``tests`` check that both
paths give identical ids for the same request (no train/serve skew).

Policies build the list slot by slot:

* :class:`PointwisePolicy`: a point-wise model (FM, DeepFM, ...) scores all unplaced candidates
  at each slot; greedy (argmax) by default, or sampling from ``softmax(score / temperature)``.
* :class:`QPolicy`: a DRL-Rec Q network; the session state is the buffer of the last ``m``
  impression encodings, pushed after every placed item (the serving state step), and ``Q`` of
  every unplaced candidate is computed from it (the scorer). Greedy, or softmax.
* :class:`ActorPolicy`: MMRF's main (WatchTime) actor on the same session buffer; a
  candidate's score is the dot product of the main agent's action with its item vector.

Both expose :meth:`slate_log_prob` for off-policy estimation: the log-probability, under the
policy's softmax at its temperature, of logged slates (product over slots of the probability
of the logged item among the unplaced candidates, given the logged prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from contract.features import (
    DEFAULT_SPEC,
    FeatureSpec,
    candidate_prefix_counts,
    context_fields,
    list_fields,
)
from runtime.bundle import Bundle
from runtime.lists import Exploration
from training.data.features import Requests, SideTables, candidate_ids
from training.sim.env import Feedback, Observation


@dataclass
class RequestInputs:
    """Slot-independent inputs of a batch of requests (B rows, C candidates)."""

    user_ctx: np.ndarray  # (B, n_user + n_context)
    cand_f: np.ndarray  # (B, C, n_item)
    tags: np.ndarray  # (B, C)
    authors: np.ndarray  # (B, C)
    recent: np.ndarray  # (B, C) recent impressions of the session sharing the tag
    depth: np.ndarray  # (B,)
    clicks: np.ndarray  # (B,)
    spec: FeatureSpec = DEFAULT_SPEC  # the side tables' spec, whose rules make the ids


class OnlineFeatures:
    """Model inputs from live observations (the online twin of ``build_requests``)."""

    def __init__(self, side: SideTables):
        self.side = side

    def request(self, obs: Observation) -> RequestInputs:
        side = self.side
        rows = side.item_rows(obs.candidate_ids)
        f, tags, authors = side.item_attrs(rows, obs.candidate_ids)
        ctx = context_fields(obs.timestamp, obs.request_index, side.spec)
        user_ctx = np.concatenate([side.user_f(obs.user_id), ctx], axis=1)
        recent = (tags[:, :, None] == obs.recent_tags[:, None, :]).sum(-1)
        return RequestInputs(
            user_ctx=user_ctx.astype(np.int64),
            cand_f=f.astype(np.int64),
            tags=tags,
            authors=authors,
            recent=recent,
            depth=obs.session_depth,
            clicks=obs.session_clicks,
            spec=side.spec,
        )

    @staticmethod
    def cand_ids(
        x: RequestInputs, slot: int, placed_tags: np.ndarray, placed_authors: np.ndarray
    ) -> np.ndarray:
        """``(B, C, n_item + n_list)`` item + list ids of every candidate at ``slot``.

        ``placed_tags``/``placed_authors`` are ``(B, slot)``: the items of slots ``0..slot-1``.
        """
        same_tag = candidate_prefix_counts(x.tags, placed_tags, placed_tags.shape[1])
        same_author = candidate_prefix_counts(x.authors, placed_authors, placed_authors.shape[1])
        lf = list_fields(
            np.full(x.tags.shape, slot), same_tag, same_author, x.recent,
            x.depth[:, None], x.clicks[:, None], spec=x.spec,
        )  # fmt: skip
        return np.concatenate([x.cand_f, lf], axis=-1)


def _pick(scores: np.ndarray, placed: np.ndarray, temperature: float, u: np.ndarray | None):
    """Argmax (temperature 0) or a softmax draw over the unplaced candidates."""
    s = np.where(placed, -np.inf, scores)
    if temperature <= 0:
        return np.argmax(s, axis=1)
    z = s / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    target = u[:, None] * cdf[:, -1:]
    return np.minimum((cdf <= target).sum(axis=1), s.shape[1] - 1)


class _SlotRanker:
    """Shared slot-by-slot loop; subclasses score ``(B, C)`` candidates for a slot."""

    temperature: float
    seed: int
    features: OnlineFeatures

    def __init__(self, side: SideTables, temperature: float, seed: int) -> None:
        self.features = OnlineFeatures(side)
        self.temperature = temperature
        self.seed = seed

    def _begin(self, obs: Observation, x: RequestInputs) -> None: ...

    def _scores(self, obs: Observation, x: RequestInputs, cand12: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _placed(self, obs: Observation, x: RequestInputs, imp_ids: np.ndarray) -> None: ...

    def rank(self, obs: Observation, k: int) -> np.ndarray:
        from training.sim.rng import Stream, uniform

        x = self.features.request(obs)
        self._begin(obs, x)
        b, c = obs.candidates.shape
        rows = np.arange(b)
        placed = np.zeros((b, c), dtype=bool)
        slate = np.empty((b, k), dtype=np.int64)
        for t in range(k):
            cand12 = OnlineFeatures.cand_ids(x, t, x.tags[rows[:, None], slate[:, :t]],
                                             x.authors[rows[:, None], slate[:, :t]])  # fmt: skip
            scores = self._scores(obs, x, cand12)
            u = None
            if self.temperature > 0:
                u = uniform(self.seed, Stream.POLICY, obs.users, obs.day, obs.request_index, t)
            j = _pick(scores, placed, self.temperature, u)
            slate[:, t] = j
            placed[rows, j] = True
            self._placed(obs, x, np.concatenate([x.user_ctx, cand12[rows, j]], axis=1))
        return slate


class PointwisePolicy(_SlotRanker):
    """A point-wise click model as a policy: score ``(user, context, item, list)`` per slot."""

    def __init__(self, model: torch.nn.Module, side: SideTables, temperature: float = 0.0,
                 seed: int = 0):  # fmt: skip
        super().__init__(side, temperature, seed)
        self.model = model.eval()

    def _scores(self, obs: Observation, x: RequestInputs, cand12: np.ndarray) -> np.ndarray:
        return self._score_ids(x.user_ctx, cand12)

    def logged_scores(self, req: Requests, r: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``(B, C)`` scores of request ``r``'s logged candidates at slot ``t`` (logged prefix)."""
        return self._score_ids(req.user_ctx[r], candidate_ids(req, r, t))

    @torch.no_grad()
    def _score_ids(self, user_ctx: np.ndarray, cand12: np.ndarray) -> np.ndarray:
        """``(B, C)`` scores of ``user_ctx (B, 10)`` with each of ``cand12 (B, C, 12)``."""
        b, c, _ = cand12.shape
        ids = np.concatenate([np.broadcast_to(user_ctx[:, None], (b, c, 10)), cand12], -1)
        out = self.model(torch.from_numpy(np.ascontiguousarray(ids.reshape(b * c, -1))))
        return out.reshape(b, c).float().numpy()


class QPolicy(_SlotRanker):
    """A DRL-Rec Q network as a policy; keeps each session's impression buffer."""

    def __init__(self, net: torch.nn.Module, side: SideTables, temperature: float = 0.0,
                 seed: int = 0):  # fmt: skip
        super().__init__(side, temperature, seed)
        self.net = net.eval()
        cfg = net.cfg
        self.memory = int(getattr(cfg, "encoder", cfg).memory)  # MMRF's encoder config, or Q's
        self._hist: dict[int, np.ndarray] = {}  # session_id -> (<=m, 22) impression ids
        self._buf: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None

    def _begin(self, obs: Observation, x: RequestInputs) -> None:
        m, b = self.memory, obs.batch_size
        ids = np.zeros((b, m, 22), dtype=np.int64)
        mask = np.zeros((b, m), dtype=bool)
        for i, sid in enumerate(obs.session_id.tolist()):
            h = self._hist.get(sid)
            if h is not None and len(h):
                ids[i, m - len(h) :] = h
                mask[i, m - len(h) :] = True
        with torch.no_grad():
            self._buf = self.net.encode(torch.from_numpy(ids))  # (B, m, 22) -> (B, m, E)
        self._mask = torch.from_numpy(mask)
        self._uc = torch.from_numpy(x.user_ctx)

    @torch.no_grad()
    def _scores(self, obs: Observation, x: RequestInputs, cand12: np.ndarray) -> np.ndarray:
        s = self.net.state(self._buf, self._mask, self._uc)
        q, _ = self.net.q_from_state(s, torch.from_numpy(cand12))
        return q.float().numpy()

    @torch.no_grad()
    def _placed(self, obs: Observation, x: RequestInputs, imp_ids: np.ndarray) -> None:
        from training.drl.networks import push

        enc = self.net.encode(torch.from_numpy(imp_ids))
        self._buf, self._mask = push(self._buf, self._mask, enc)
        for i, sid in enumerate(obs.session_id.tolist()):
            h = self._hist.get(sid)
            row = imp_ids[i : i + 1]
            self._hist[sid] = row if h is None else np.concatenate([h, row])[-self.memory :]

    def observe_feedback(self, obs: Observation, slate: np.ndarray, feedback: Feedback) -> None:
        for sid, left in zip(obs.session_id.tolist(), feedback.left.tolist(), strict=True):
            if left:
                self._hist.pop(sid, None)


class ActorPolicy(QPolicy):
    """MMRF's WatchTime actor as a policy (:class:`~training.mmrf.networks.
    MultiAgentActorCritic`): :class:`QPolicy`'s session buffer and state, and candidate
    ``c``'s score at a slot ``<a^agent(s_t), v_c>`` (METHODS.md "MMRF": an action scores every
    candidate by a dot product with its item vector), ``(B, C)``; ``agent`` -1 is the main
    agent, the one a bundle serves as ``mmrf_watchtime``."""

    def __init__(self, net: torch.nn.Module, side: SideTables, temperature: float = 0.0,
                 seed: int = 0, agent: int = -1):  # fmt: skip
        super().__init__(net, side, temperature, seed)
        self.agent = agent

    @torch.no_grad()
    def _scores(self, obs: Observation, x: RequestInputs, cand12: np.ndarray) -> np.ndarray:
        s = self.net.state(self._buf, self._mask, self._uc)
        return self.net.scores(s, torch.from_numpy(cand12), self.agent).float().numpy()


def slate_log_prob_pointwise(
    policy: PointwisePolicy, req: Requests, temperature: float, batch: int = 512
) -> np.ndarray:
    """``(R,)`` log-probability of each logged slate under the policy's softmax.

    Per slot ``t``: ``softmax(score / temperature)`` over the candidates not placed in the
    logged slots ``< t``, evaluated at the logged item; summed over the shown slots.
    """
    out = np.zeros(req.n_requests)
    cols = np.arange(req.cand_item.shape[1])[None, :]
    for lo in range(0, req.n_requests, batch):
        r = np.arange(lo, min(lo + batch, req.n_requests))
        for t in range(req.list_size):
            live = req.n_shown[r] > t
            if not live.any():
                break
            rr = r[live]
            tt = np.full(len(rr), t)
            s = policy.logged_scores(req, rr, tt) / temperature
            avail = req.cand_mask[rr] & (cols >= t)
            s = np.where(avail, s, -np.inf)
            m = s.max(axis=1, keepdims=True)
            lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
            out[rr] += s[:, t] - lse
    return out


class BundlePolicy:
    """An exported model of a bundle as a policy, ranked by the runtime's list builder.

    This is how exported bundles are evaluated online: the same :func:`runtime.lists.
    build_lists` the service calls, on the same graphs. The session window of encodings is
    carried between requests by the builder's :class:`~runtime.lists.SessionState`; the
    session counters (depth, clicks, recent tags, request index) come from the observation,
    exactly as the torch policies read them.
    """

    def __init__(
        self, bundle: Bundle, model: str, exploration: Exploration | None = None, seed: int = 0
    ):
        from runtime.lists import SessionState

        self.bundle = bundle
        self.model = bundle.model(model)
        self.exploration = exploration
        self.rng = np.random.default_rng(seed)
        self._new = lambda: SessionState.new(self.model, bundle.spec.recent_window)
        self._states: dict[int, SessionState] = {}

    def rank(self, obs: Observation, k: int) -> np.ndarray:
        from dataclasses import replace

        from runtime.lists import build_lists

        states = [
            replace(
                self._states.get(sid) or self._new(),
                request_index=int(obs.request_index[i]),
                depth=int(obs.session_depth[i]),
                clicks=int(obs.session_clicks[i]),
                recent_tags=obs.recent_tags[i],
            )
            for i, sid in enumerate(obs.session_id.tolist())
        ]
        lists = build_lists(self.bundle, self.model, states, obs.user_id, obs.timestamp,
                            obs.candidate_ids, k, self.exploration, self.rng)  # fmt: skip
        for sid, st in zip(obs.session_id.tolist(), lists.states, strict=True):
            self._states[sid] = st
        return lists.index

    def observe_feedback(self, obs: Observation, slate: np.ndarray, feedback: Feedback) -> None:
        for sid, left in zip(obs.session_id.tolist(), feedback.left.tolist(), strict=True):
            if left:
                self._states.pop(sid, None)
