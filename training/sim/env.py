"""The online interface to the world: a policy ranks, the world responds, sessions go on or end.

Usage (one simulated day of traffic for a policy)::

    env = Env(world)                       # a fresh copy of every user's drifting interest
    obs = env.begin_day(day=0)             # sessions of the users active that day
    while obs is not None:
        slate = policy.rank(obs, world.cfg.list_size)   # (B, K) indices into obs.candidates
        feedback = env.step(slate)
        obs = env.observe()                # the next requests of the sessions still going

All randomness is keyed by (user, day, request index, slot) through :mod:`training.sim.rng`,
so two envs built from the same world and driven by two policies see the same users, the same
session starts and the same uniforms at the same slots: common random numbers across arms.
Ground truth for any candidate, shown or not, comes from :meth:`Env.expected`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from contract.features import RECENT_WINDOW, prefix_counts
from training.sim import world as wm
from training.sim.rng import Stream, gumbel, normal, uniform, uniform32
from training.sim.world import World

#: Epoch ms of day 0, 00:00 UTC (2022-04-08: KuaiRand-Pure's period).
EPOCH_MS = 1_649_376_000_000
DAY_MS = 86_400_000
REQUEST_GAP_MS = 45_000
#: Shares of the candidate set drawn from the request's 1st..4th matched topics; the rest
#: are uniform over the catalogue (exploration by the matching stage).
TOPIC_SHARES = (0.3, 0.2, 0.12, 0.08)
RETRIEVAL_SHARPNESS = 4.0
MAX_REQUESTS_LIMIT = 1000


@dataclass
class Observation:
    """The requests of the active sessions, one row each (B rows)."""

    users: np.ndarray  # (B,) user index into the world
    user_id: np.ndarray  # (B,) int64
    session_id: np.ndarray  # (B,) int64
    request_id: np.ndarray  # (B,) int64
    request_index: np.ndarray  # (B,) int64, 0 for a session's first request
    timestamp: np.ndarray  # (B,) int64 epoch ms
    day: int
    candidates: np.ndarray  # (B, C) item index
    candidate_ids: np.ndarray  # (B, C) int64 item ids
    session_depth: np.ndarray  # (B,) impressions shown before this request
    session_clicks: np.ndarray  # (B,) clicks before this request
    recent_tags: np.ndarray  # (B, RECENT_WINDOW) tags of the last impressions, 0 = none

    @property
    def batch_size(self) -> int:
        return int(self.users.shape[0])


@dataclass
class Feedback:
    """The users' responses to the slates of one step, ``(B, K)`` arrays."""

    click: np.ndarray
    like: np.ndarray
    follow: np.ndarray
    comment: np.ndarray
    hate: np.ndarray
    long_view: np.ndarray
    watch_time: np.ndarray  # seconds, float32
    left: np.ndarray  # (B,) the session ended after this request

    def aspects(self) -> dict[str, np.ndarray]:
        return {
            "click": self.click,
            "like": self.like,
            "follow": self.follow,
            "comment": self.comment,
            "hate": self.hate,
            "long_view": self.long_view,
            "watch_time": self.watch_time,
        }


class Policy(Protocol):
    """Anything that ranks: returns ``(B, K)`` indices into ``obs.candidates`` (distinct per row).

    A policy may also define ``observe_feedback(obs, slate, feedback)`` to update its own
    per-session state (e.g. a GRU); the env's runners call it when present.
    """

    def rank(self, obs: Observation, k: int) -> np.ndarray: ...


@dataclass
class UserState:
    """What persists across sessions: each user's current (drifted) interest."""

    x: np.ndarray  # (U, D)

    @classmethod
    def initial(cls, world: World) -> UserState:
        return cls(x=world.user_z.copy())

    def copy(self) -> UserState:
        return UserState(x=self.x.copy())


@dataclass
class _Active:
    users: np.ndarray
    day: int
    start_ms: np.ndarray
    request_index: np.ndarray
    satisfaction: np.ndarray
    tag_load: np.ndarray  # (B, T) cross-request fatigue memory
    depth: np.ndarray
    clicks: np.ndarray
    recent_tags: np.ndarray  # (B, W)
    obs: Observation | None = field(default=None)

    def keep(self, mask: np.ndarray) -> None:
        for name in ("users", "start_ms", "request_index", "satisfaction", "tag_load", "depth",
                     "clicks", "recent_tags"):  # fmt: skip
            setattr(self, name, getattr(self, name)[mask])


class Env:
    """A batch of concurrent sessions in one world; see the module docstring."""

    def __init__(self, world: World, state: UserState | None = None):
        if world.cfg.max_requests >= MAX_REQUESTS_LIMIT:
            raise ValueError(
                f"max_requests={world.cfg.max_requests} must be < {MAX_REQUESTS_LIMIT}"
            )
        self.world = world
        self.state = state if state is not None else UserState.initial(world)
        self._a: _Active | None = None
        self._slot_rank, self._slot_offset, self._n_topic_slots = _slot_plan(world.cfg.n_candidates)

    # ---- sessions ----
    def active_users(self, day: int) -> np.ndarray:
        """Indices of the users who start a session on ``day`` (the same for every env)."""
        u = np.arange(self.world.n_users)
        return u[uniform(self.world.cfg.seed, Stream.ACTIVE_DAY, u, day) < self.world.user_activity]

    def begin_day(self, day: int, users: np.ndarray | None = None) -> Observation | None:
        """Start one session for each of ``users`` (default: those active on ``day``)."""
        w = self.world
        users = self.active_users(day) if users is None else np.asarray(users, dtype=np.int64)
        if users.size and (users.min() < 0 or users.max() >= w.n_users):
            raise ValueError(f"user index out of range [0, {w.n_users})")
        if w.cfg.mechanisms.drift:
            r = w.cfg.drift_reversion
            self.state.x[users] = _unit((1 - r) * self.state.x[users] + r * w.user_z[users])
        hours = 7.0 + 17.0 * uniform(w.cfg.seed, Stream.SESSION_START, users, day) ** 0.8
        b = users.size
        self._a = _Active(
            users=users,
            day=day,
            start_ms=EPOCH_MS + day * DAY_MS + (hours * 3_600_000).astype(np.int64),
            request_index=np.zeros(b, dtype=np.int64),
            satisfaction=np.zeros(b),
            tag_load=np.zeros((b, w.n_topics)),
            depth=np.zeros(b, dtype=np.int64),
            clicks=np.zeros(b, dtype=np.int64),
            recent_tags=np.zeros((b, RECENT_WINDOW), dtype=np.int64),
        )
        return self.observe()

    def observe(self) -> Observation | None:
        """The current requests of the active sessions, or None when all have ended."""
        a = self._a
        if a is None or a.users.size == 0:
            return None
        if a.obs is None:
            w = self.world
            sid = a.day * w.n_users + a.users
            cands = match_candidates(w, self.state.x[a.users], a.users, a.day, a.request_index)
            a.obs = Observation(
                users=a.users,
                user_id=w.user_id[a.users],
                session_id=sid.astype(np.int64),
                request_id=(sid * MAX_REQUESTS_LIMIT + a.request_index).astype(np.int64),
                request_index=a.request_index.copy(),
                timestamp=a.start_ms + a.request_index * REQUEST_GAP_MS,
                day=a.day,
                candidates=cands,
                candidate_ids=w.item_id[cands],
                session_depth=a.depth.copy(),
                session_clicks=a.clicks.copy(),
                recent_tags=a.recent_tags.copy(),
            )
        return a.obs

    def step(self, slate: np.ndarray) -> Feedback:
        """Show ``slate`` (``(B, K)`` indices into the candidates) and return the feedback."""
        a, w, c = self._a, self.world, self.world.cfg
        obs = self.observe()
        if a is None or obs is None:
            raise RuntimeError("no active sessions: call begin_day first")
        slate = np.asarray(slate)
        b = obs.batch_size
        if slate.ndim != 2 or slate.shape[0] != b or slate.shape[1] > obs.candidates.shape[1]:
            raise ValueError(
                f"slate shape {slate.shape}: expected ({b}, K <= {obs.candidates.shape[1]})"
            )
        if slate.min(initial=0) < 0 or slate.max(initial=0) >= obs.candidates.shape[1]:
            raise ValueError("slate indices outside the candidate set")
        srt = np.sort(slate, axis=1)
        if (srt[:, 1:] == srt[:, :-1]).any():
            raise ValueError("slate repeats a candidate within a request")
        k = slate.shape[1]
        items = np.take_along_axis(obs.candidates, slate, axis=1)
        keys = (a.users[:, None], a.day, a.request_index[:, None], np.arange(k)[None, :])
        x = self.state.x[a.users]
        resp = _respond(w, x, a, items, keys)

        # ---- session dynamics ----
        m = c.mechanisms
        value = np.where(resp["click"] > 0, wm.sigmoid(resp["sigma"]) - 0.5, -0.05) - resp["hate"]
        a.satisfaction = c.satisfaction_decay * a.satisfaction + value.sum(axis=1)
        if m.fatigue_cross:
            a.tag_load *= c.fatigue_cross_decay
            np.add.at(a.tag_load, (np.repeat(np.arange(b), k), w.item_topic[items].ravel()), 1.0)
        if m.drift:
            pull = (resp["click"] * (0.5 + value))[:, :, None] * w.item_vec[items]
            self.state.x[a.users] = _unit(x + c.drift_rate * pull.sum(axis=1))
        sat_term = a.satisfaction if m.leave_hazard else np.full(b, c.leave_reference_satisfaction)
        p_leave = wm.sigmoid(
            c.leave_intercept - c.leave_satisfaction_weight * sat_term + w.user_patience[a.users]
        )
        left = (uniform(c.seed, Stream.LEAVE, a.users, a.day, a.request_index) < p_leave) | (
            a.request_index + 1 >= c.max_requests
        )
        a.depth += k
        a.clicks += resp["click"].sum(axis=1).astype(np.int64)
        a.recent_tags = np.concatenate([a.recent_tags, w.item_tag[items]], axis=1)[
            :, -RECENT_WINDOW:
        ]
        a.request_index += 1
        a.obs = None
        a.keep(~left)
        return Feedback(
            click=resp["click"].astype(np.int8),
            like=resp["like"].astype(np.int8),
            follow=resp["follow"].astype(np.int8),
            comment=resp["comment"].astype(np.int8),
            hate=resp["hate"].astype(np.int8),
            long_view=resp["long_view"].astype(np.int8),
            watch_time=resp["watch_time"].astype(np.float32),
            left=left,
        )

    # ---- ground truth ----
    def expected(
        self,
        cand_index: np.ndarray,
        position: np.ndarray | int,
        same_tag_before: np.ndarray | float = 0.0,
        same_author_before: np.ndarray | float = 0.0,
    ) -> dict[str, np.ndarray]:
        """Expected responses of the active sessions to candidates, shown or not.

        Args:
            cand_index: ``(B, M)`` indices into the current ``obs.candidates``.
            position: slot (0-based) the candidates would be shown at (broadcastable).
            same_tag_before / same_author_before: earlier items of the list sharing the
                candidate's tag / author (broadcastable to ``(B, M)``).
        Returns ``(B, M)`` arrays: ``click`` (exact), ``like``, ``comment``, ``follow``,
        ``hate``, ``watch_time`` (approximations of the expectations over the satisfaction
        noise: see :func:`training.sim.world.smoothed_sigmoid`) and ``satisfaction`` (the
        mean satisfaction logit, the long-term side of an item).
        """
        a, w = self._a, self.world
        obs = self.observe()
        if a is None or obs is None:
            raise RuntimeError("no active sessions")
        items = np.take_along_axis(obs.candidates, np.asarray(cand_index), axis=1)
        x = self.state.x[a.users]
        aff = wm.affinity(x, w.item_vec, items)
        load = np.take_along_axis(a.tag_load, w.item_topic[items], axis=1)
        appeal = wm.appeal_logit(w, aff, a.users, items, same_tag_before, same_author_before, load)
        exam = wm.examination(
            np.asarray(position), w.cfg.position_bias_power, w.cfg.mechanisms.position_bias
        )
        p_click = exam * wm.sigmoid(appeal)
        sigma = wm.satisfaction_logit_mean(w, aff, items)
        lg = wm.aspect_logits(w, sigma, a.users, items)
        sd = wm.SAT_NOISE_SD
        frac = wm.smoothed_sigmoid(wm.watch_fraction_logit(w, sigma, items), sd)
        dur = w.item_duration[items]
        watch_click = np.maximum(np.minimum(dur, 7.0), frac * dur)
        return {
            "click": p_click,
            "like": p_click * wm.smoothed_sigmoid(lg["like"], 1.5 * sd),
            "comment": p_click * wm.smoothed_sigmoid(lg["comment"], 1.2 * sd),
            "follow": p_click * wm.smoothed_sigmoid(lg["follow"], sd),
            "hate": wm.smoothed_sigmoid(lg["hate"], 1.5 * sd),
            "watch_time": p_click * watch_click + (1 - p_click) * 0.5 * np.minimum(dur, 7.0),
            "satisfaction": sigma,
        }


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _respond(
    w: World, x: np.ndarray, a: _Active, items: np.ndarray, keys: tuple
) -> dict[str, np.ndarray]:
    """Draw the feedback to items ``(B, K)`` shown in slot order."""
    c, seed = w.cfg, w.cfg.seed
    k = items.shape[1]
    tags = w.item_tag[items]
    aff = wm.affinity(x, w.item_vec, items)
    load = np.take_along_axis(a.tag_load, w.item_topic[items], axis=1)
    appeal = wm.appeal_logit(
        w, aff, a.users, items, prefix_counts(tags), prefix_counts(w.item_author[items]), load
    )
    exam = wm.examination(np.arange(k), c.position_bias_power, c.mechanisms.position_bias)
    click = uniform(seed, Stream.CLICK, *keys) < exam[None, :] * wm.sigmoid(appeal)
    sigma = (
        wm.satisfaction_logit_mean(w, aff, items)
        + 0.5 * normal(seed, Stream.SAT_NOISE, *keys)
        + 0.5 * normal(seed, Stream.MOOD, *keys)
    )
    lg = wm.aspect_logits(w, sigma, a.users, items)
    dur = w.item_duration[items]
    frac = wm.sigmoid(wm.watch_fraction_logit(w, sigma, items))
    threshold = np.minimum(dur, 7.0)
    watch = np.where(
        click,
        np.maximum(threshold * 1.001, frac * dur),
        uniform(seed, Stream.SKIP_WATCH, *keys) * threshold * 0.999,
    )
    return {
        "click": click,
        "sigma": sigma,
        "like": click & (uniform(seed, Stream.LIKE, *keys) < wm.sigmoid(lg["like"])),
        "comment": click & (uniform(seed, Stream.COMMENT, *keys) < wm.sigmoid(lg["comment"])),
        "follow": click & (uniform(seed, Stream.FOLLOW, *keys) < wm.sigmoid(lg["follow"])),
        "hate": (uniform(seed, Stream.HATE, *keys) < wm.sigmoid(lg["hate"])).astype(np.float64),
        "long_view": click & (watch >= np.minimum(dur, 18.0)),
        "watch_time": watch,
    }


def _slot_plan(n_candidates: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Which topic rank fills each candidate slot, and the slot's offset within that rank."""
    counts = [int(round(s * n_candidates)) for s in TOPIC_SHARES]
    rank = np.concatenate([np.full(n, r) for r, n in enumerate(counts)]).astype(np.int64)
    offset = np.concatenate([np.arange(n) for n in counts]).astype(np.int64)
    return rank, offset, int(sum(counts))


def match_candidates(
    w: World, x: np.ndarray, users: np.ndarray, day: int, request_index: np.ndarray
) -> np.ndarray:
    """The matching stage: ``(B, C)`` distinct item indices for each request, ascending.

    Windows of the request's four best-matching topics (by current interest, with Gumbel
    noise) fill ``sum(TOPIC_SHARES)`` of the slots; uniform draws from the rest of the
    catalogue fill the others (and the slots of a topic smaller than its share); the rare
    duplicates are redrawn uniformly until none remain. The order of candidates carries no
    meaning, so they are returned sorted, which is also how duplicates are found.
    """
    c = w.cfg
    b, n = users.size, w.n_items
    n_cand = c.n_candidates
    rank, offset, n_topic = _slot_plan(n_cand)
    keys = (users[:, None], day, request_index[:, None])
    rows = np.arange(b)
    t_scores = RETRIEVAL_SHARPNESS * (x @ w.topic_centres.T).astype(np.float32) + gumbel(
        c.seed, Stream.CAND_TOPIC, *keys, np.arange(w.n_topics)[None, :]
    )
    # Top topics by repeated argmax: far cheaper than argpartition on short rows.
    top = np.empty((b, len(TOPIC_SHARES)), dtype=np.int64)
    for r in range(len(TOPIC_SHARES)):
        top[:, r] = np.argmax(t_scores, axis=1)
        if r + 1 < w.n_topics:
            t_scores[rows, top[:, r]] = -np.inf
    size = w.topic_size[top].astype(np.int32)  # (B, R); int32 arithmetic is cheaper
    window = uniform(c.seed, Stream.CAND_WINDOW, *keys, np.arange(top.shape[1])[None, :])
    start = np.floor(window * size).astype(np.int32)
    sz = size[:, rank]
    # An empty topic (a synthetic world can have one) has no items: its slots are drawn
    # uniformly below (offset >= sz); meanwhile its modulo and index must stay defined.
    pos = w.topic_start[top[:, rank]] + (start[:, rank] + offset.astype(np.int32)) % np.maximum(
        sz, 1
    )
    np.minimum(pos, len(w.topic_order) - 1, out=pos)
    cands = np.empty((b, n_cand), dtype=np.int64)
    cands[:, :n_topic] = w.topic_order[pos]
    # Slots filled uniformly: the last C - n_topic, and a small topic's slots beyond its size.
    tail = np.arange(n_topic, n_cand)
    tail_draw = uniform32(c.seed, Stream.CAND_SLOT, *keys, tail[None, :]) * n
    over_r, over_c = np.nonzero(offset[None, :] >= sz)
    over_draw = uniform32(c.seed, Stream.CAND_SLOT, users[over_r], day,
                          request_index[over_r], over_c) * n  # fmt: skip
    fr = np.concatenate([np.repeat(rows, len(tail)), over_r])
    fc = np.concatenate([np.tile(tail, b), over_c])
    draw = np.concatenate([tail_draw.ravel(), over_draw]).astype(np.int64)
    # They explore outside the request's own topics: redrawn, by rejection, when inside one.
    own = np.zeros((b, w.n_topics), dtype=bool)
    own[rows[:, None], top] = True
    todo = np.arange(len(fr))
    for r in range(3):
        inside = own[fr[todo], w.item_topic[draw[todo]]]
        todo = todo[inside]
        if not todo.size:
            break
        draw[todo] = (
            uniform32(c.seed, Stream.CAND_SLOT + 50 + r, users[fr[todo]], day,
                      request_index[fr[todo]], fc[todo]) * n
        ).astype(np.int64)  # fmt: skip
    cands[fr, fc] = draw
    cands = np.sort(cands, axis=1)
    dup_rows = rows
    for it in range(64):
        sub = cands[dup_rows]
        dup = sub[:, 1:] == sub[:, :-1]
        has = dup.any(axis=1)
        if not has.any():
            return cands
        dup_rows = dup_rows[has]
        r_i, col = np.nonzero(dup[has])
        rr = dup_rows[r_i]
        cands[rr, col + 1] = np.floor(
            uniform(c.seed, Stream.CAND_DEDUPE, users[rr], day, request_index[rr], col + 1, it) * n
        ).astype(np.int64)
        cands[dup_rows] = np.sort(cands[dup_rows], axis=1)
    raise RuntimeError("could not draw distinct candidates")  # pragma: no cover
