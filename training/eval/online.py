"""Simulated online A/B tests: policies act in the world, metrics are measured, not estimated.

Each arm runs in its own :class:`~training.sim.env.Env` built from the same world and the same
initial user state. Every random draw of the world is keyed by (user, day, request, slot)
(:mod:`training.sim.rng`), so the arms see the same sessions start, the same candidate sets
for the same (user, day, request index), and the same uniforms at the same slots: common random
numbers by construction. The comparison of two arms is therefore paired: per user, and per
session (a session is a (user, day) pair, the same set of sessions in every arm).

Usage::

    world = build_world(preset("tiny"))
    result = run_online(
        world,
        {"random": RandomPolicy(0), "logging": LoggingPolicy(world), "oracle": OraclePolicy()},
        days=range(4, 6),
    )
    rows = result.summary(baseline="logging")
    print(format_summary(rows))

Policies
--------
A policy follows :class:`training.sim.env.Policy`: ``rank(obs, k) -> (B, k)`` distinct indices
into ``obs.candidates``. Two optional hooks are called by :func:`run_online` when defined:

* ``bind(env)``: called once per arm, before the arm's first day, with the arm's own env.
  A policy that needs the world's ground truth (:class:`OraclePolicy`) keeps the env here.
  Stateless policies ignore it. Give every arm its own policy instance: the arms run one after
  another, so a shared stateful instance would carry state from one arm into the next.
* ``observe_feedback(obs, slate, feedback)``: called after every step with the observation that
  was ranked, the slate shown and the :class:`~training.sim.env.Feedback` (e.g. to advance a
  per-session GRU state).

Population and sessions
-----------------------
``users`` is the experiment's population (indices into the world's users; default all). On each
day the sessions are those of the population's users who are active that day
(:meth:`Env.active_users`, keyed by (user, day) so the same in every arm), at most one per user
and day. Users of the population who are never active over the days run have no session; they
are left out of the per-user metrics (ACN divides by users with at least one session).

Metrics
-------
Per session (a (user, day) pair): ``requests``, ``impressions`` (= depth, items shown),
``click``, ``like``, ``follow``, ``comment``, ``hate``, ``long_view`` (counts) and
``watch_time`` (seconds, summed over the session's impressions). Per user: the same summed over
the user's sessions, plus ``sessions``.

:meth:`OnlineResult.summary` reports (see :data:`METRICS`):

* per user, over users with at least one session: ``clicks_per_user`` (ACN, DRL-Rec Table 3:
  total clicks / users with a session) and ``watch_time_per_user``;
* per session: ``watch_time_per_session`` (MMRF WatchTime), ``depth_per_session`` (MMRF Depth:
  impressions per session), ``requests_per_session``, and ``clicks``, ``like``, ``follow``,
  ``comment``, ``hate``, ``long_view`` per session. Counts per session rather than rates per
  1k impressions: a policy that keeps users longer gets credit for the extra follows, as in
  MMRF's online table. Rates per impression are ratios of two per-session means and can be
  formed from :meth:`OnlineResult.per_session`.

Intervals
---------
The mean of each metric (every metric is a non-negative count or amount) comes with a 95%
log-scale interval from :func:`training.harness.stats.nonneg_mean_ci` over its units (users or
sessions), which never goes below 0. Per-session intervals treat sessions as independent;
sessions of one user are correlated, so these are somewhat narrow when users have many sessions.

The relative change of arm A vs baseline B is ``r = mean(A) / mean(B) - 1`` (in %). Its interval
uses the paired units (same users / sessions in both arms, thanks to CRN) and the delta method
on the log ratio (:func:`training.harness.stats.relative_change`): ``log mean(A) - log mean(B)``
has standard error ``sd(u) / sqrt(n)`` with ``u_i = a_i / mean(A) - b_i / mean(B)``, and the
interval ``exp(log(1 + r) -/+ 1.96 se) - 1`` never reaches -100%. An arm compared with itself
gets exactly 0 with a zero-width interval. Where the baseline mean is 0 the relative change is
NaN.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.features import candidate_prefix_counts
from training.harness.stats import nonneg_mean_ci, relative_change
from training.sim.config import WorldConfig
from training.sim.env import Env, Feedback, Observation, Policy, UserState
from training.sim.rng import Stream, uniform
from training.sim.world import World, build_world

__all__ = [
    "METRICS",
    "ORACLE_ASPECTS",
    "SESSION_FIELDS",
    "OnlineResult",
    "OraclePolicy",
    "RandomPolicy",
    "SeedsResult",
    "format_summary",
    "run_online",
    "run_online_seeds",
]

#: Per-session fields recorded for every arm (counts, except watch_time in seconds).
SESSION_FIELDS: tuple[str, ...] = (
    "requests",
    "impressions",
    "click",
    "like",
    "follow",
    "comment",
    "hate",
    "long_view",
    "watch_time",
)
_FEEDBACK_FIELDS = ("click", "like", "follow", "comment", "hate", "long_view", "watch_time")

#: Reported metrics: name -> (unit the mean is over, per-session or per-user field summed).
METRICS: dict[str, tuple[str, str]] = {
    "clicks_per_user": ("user", "click"),  # ACN
    "watch_time_per_user": ("user", "watch_time"),
    "watch_time_per_session": ("session", "watch_time"),
    "depth_per_session": ("session", "impressions"),
    "requests_per_session": ("session", "requests"),
    "clicks_per_session": ("session", "click"),
    "like_per_session": ("session", "like"),
    "follow_per_session": ("session", "follow"),
    "comment_per_session": ("session", "comment"),
    "hate_per_session": ("session", "hate"),
    "long_view_per_session": ("session", "long_view"),
}

#: Aspects of :meth:`Env.expected` that an :class:`OraclePolicy` reward may weigh.
ORACLE_ASPECTS = ("click", "like", "comment", "follow", "hate", "watch_time", "satisfaction")


# --------------------------------------------------------------------------------------------
# reference policies
# --------------------------------------------------------------------------------------------


class RandomPolicy:
    """A uniformly random slate: ``k`` distinct candidates in a uniformly random order.

    The randomness is counter-based: candidate ``j`` of the request gets the key
    ``uniform(seed, Stream.POLICY, user, day, request_index, j)`` and the slate is the ``k``
    smallest keys in ascending order. No generator state, so the same (user, day, request)
    gets the same slate in every arm and every run (CRN-stable), whatever else was drawn.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def rank(self, obs: Observation, k: int) -> np.ndarray:
        c = obs.candidates.shape[1]
        if not 1 <= k <= c:
            raise ValueError(f"k={k}: must be in [1, {c}] (the number of candidates)")
        keys = uniform(
            self.seed,
            Stream.POLICY,
            obs.users[:, None],
            obs.day,
            obs.request_index[:, None],
            np.arange(c)[None, :],
        )
        return np.argsort(keys, axis=1, kind="stable")[:, :k]


class OraclePolicy:
    """Greedy ranking by the world's true expected reward, slot by slot.

    At slot ``p`` (0-based) every candidate not yet placed is scored by
    ``sum_a w_a * E[a | candidate at slot p, items placed in slots 0..p-1]`` from
    :meth:`Env.expected`, with the within-list fatigue counts (earlier items of the list sharing
    the candidate's tag / author, :func:`contract.features.candidate_prefix_counts` over the
    world's ``item_tag`` / ``item_author``) updated after each placement; the best is placed.
    It sees the truth (the users' current drifted interests, the cross-request fatigue) but is
    myopic: it maximises the expected reward of this list, not of the session's future. With the
    default ``reward="click"`` (DRL-Rec's reward) it favours clickbait, whose low satisfaction
    shortens sessions (through the leave hazard), so on the simulated world it gets the most
    clicks per request but fewer clicks per user than the logging policy; a weighted reward such
    as ``{"click": 1, "satisfaction": 0.1}`` trades that off and is far ahead on every metric.

    Cost: ``k`` calls of :meth:`Env.expected` over all ``C`` candidates per request (about
    1.5-2 ms per request at C=200 on one CPU core, 10-20x the logging policy). On large worlds
    run oracle arms on a user subset (``users=`` of :func:`run_online`).

    The oracle must act in the env whose truth it reads. :func:`run_online` calls
    :meth:`bind` with each arm's env; outside it, pass the env (or a zero-argument callable
    returning it) to the constructor or call :meth:`bind` yourself.

    Args:
        env: the env to read, a callable returning it, or None (bound later).
        reward: ``"click"`` (default), one aspect name of :data:`ORACLE_ASPECTS`, or a mapping
            aspect -> weight, e.g. ``{"click": 1.0, "watch_time": 0.02, "hate": -50.0}``.
            ``"satisfaction"`` is the mean satisfaction logit (not an expectation of feedback).
    """

    def __init__(
        self,
        env: Env | Callable[[], Env] | None = None,
        reward: str | Mapping[str, float] = "click",
    ):
        self._env_source = env
        weights = {reward: 1.0} if isinstance(reward, str) else dict(reward)
        if not weights:
            raise ValueError("reward: no aspect given")
        for name, wgt in weights.items():
            if name not in ORACLE_ASPECTS:
                raise ValueError(f"reward aspect {name!r}: must be one of {list(ORACLE_ASPECTS)}")
            if not math.isfinite(float(wgt)):
                raise ValueError(f"reward weight {name}={wgt!r}: must be finite")
        self.reward = {k: float(v) for k, v in weights.items()}

    def bind(self, env: Env) -> None:
        """Act in ``env`` from now on (called by :func:`run_online` for each arm)."""
        self._env_source = env

    def _env(self) -> Env:
        src = self._env_source
        if src is None:
            raise RuntimeError("OraclePolicy is not bound to an env: pass one or call bind(env)")
        return src if isinstance(src, Env) else src()

    def rank(self, obs: Observation, k: int) -> np.ndarray:
        env = self._env()
        cur = env.observe()
        if cur is None or not np.array_equal(cur.request_id, obs.request_id):
            raise RuntimeError("OraclePolicy: obs is not the current observation of its env")
        w = env.world
        b, c = obs.candidates.shape
        if not 1 <= k <= c:
            raise ValueError(f"k={k}: must be in [1, {c}] (the number of candidates)")
        rows = np.arange(b)
        cand = np.broadcast_to(np.arange(c), (b, c))
        cand_tag = w.item_tag[obs.candidates]
        cand_author = w.item_author[obs.candidates]
        same_tag = np.zeros((b, c), dtype=np.int64)
        same_author = np.zeros((b, c), dtype=np.int64)
        taken = np.zeros((b, c), dtype=bool)
        slate = np.empty((b, k), dtype=np.int64)
        for slot in range(k):
            e = env.expected(cand, slot, same_tag, same_author)
            score = np.zeros((b, c))
            for name, wgt in self.reward.items():
                score += wgt * e[name]
            score[taken] = -np.inf
            j = np.argmax(score, axis=1)
            slate[:, slot] = j
            taken[rows, j] = True
            # Fatigue counts for the next slot: add the item just placed (incremental form of
            # candidate_prefix_counts over the whole prefix, O(B C) per slot instead of O(B C K)).
            same_tag += candidate_prefix_counts(cand_tag, cand_tag[rows, j][:, None], 1)
            same_author += candidate_prefix_counts(cand_author, cand_author[rows, j][:, None], 1)
        return slate


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass
class OnlineResult:
    """Per-session measurements of every arm of one simulated online run.

    Attributes:
        users: ``(U,)`` the population (user indices into the world), sorted.
        session_user: ``(S,)`` user index of each session, sessions ordered by (day, user).
        session_day: ``(S,)`` day of each session.
        sessions: arm -> field of :data:`SESSION_FIELDS` -> ``(S,)`` values (same session
            order in every arm, so arrays are paired element-wise).
        meta: run description (days, world seed, seed_offset, list size, seconds per arm).
    """

    users: np.ndarray
    session_user: np.ndarray
    session_day: np.ndarray
    sessions: dict[str, dict[str, np.ndarray]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def arms(self) -> list[str]:
        return list(self.sessions)

    @property
    def n_sessions(self) -> int:
        return int(self.session_user.shape[0])

    def _arm(self, arm: str) -> dict[str, np.ndarray]:
        try:
            return self.sessions[arm]
        except KeyError:
            raise KeyError(f"unknown arm {arm!r} (arms: {self.arms})") from None

    def per_session(self, arm: str) -> dict[str, np.ndarray]:
        """Field -> ``(S,)`` per-session values of ``arm`` (see :data:`SESSION_FIELDS`)."""
        return dict(self._arm(arm))

    def active_users(self) -> np.ndarray:
        """The users of the population with at least one session (the same for every arm)."""
        return np.unique(self.session_user)

    def per_user(self, arm: str, active_only: bool = True) -> dict[str, np.ndarray]:
        """Field -> ``(U,)`` totals per user over their sessions, plus ``sessions``.

        Rows follow :meth:`active_users` (``active_only``) or :attr:`users` (all of the
        population, zeros for users without a session).
        """
        users = self.active_users() if active_only else self.users
        idx = np.searchsorted(users, self.session_user)
        n = users.shape[0]
        out = {"sessions": np.bincount(idx, minlength=n).astype(np.int64)}
        for name, v in self._arm(arm).items():
            tot = np.bincount(idx, weights=v, minlength=n)
            out[name] = tot if v.dtype.kind == "f" else np.rint(tot).astype(np.int64)
        return out

    def values(self, arm: str, metric: str) -> np.ndarray:
        """The per-unit values whose mean is ``metric`` (:data:`METRICS`) for ``arm``."""
        try:
            unit, fld = METRICS[metric]
        except KeyError:
            raise KeyError(f"unknown metric {metric!r} (known: {list(METRICS)})") from None
        src = self.per_user(arm) if unit == "user" else self._arm(arm)
        return np.asarray(src[fld], dtype=np.float64)

    def summary(self, baseline: str, metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per (arm, metric): mean, 95% interval and relative change vs ``baseline``.

        Row keys: ``arm``, ``metric``, ``unit`` ("user" or "session"), ``n`` (units),
        ``mean``, ``low``, ``high`` (the mean's interval), ``rel_pct``, ``rel_low``,
        ``rel_high`` (relative change vs the baseline arm in %, paired delta-method interval;
        see the module docstring), ``baseline``. NaN where undefined.
        """
        self._arm(baseline)
        names = list(METRICS) if metrics is None else list(metrics)
        rows: list[dict[str, Any]] = []
        base_vals = {m: self.values(baseline, m) for m in names}
        for arm in self.arms:
            for m in names:
                v = self.values(arm, m)
                mean, lo, hi = nonneg_mean_ci(v)
                rel, rlo, rhi = relative_change(v, base_vals[m])
                rows.append(
                    {
                        "arm": arm,
                        "metric": m,
                        "unit": METRICS[m][0],
                        "n": int(v.shape[0]),
                        "mean": mean,
                        "low": lo,
                        "high": hi,
                        "rel_pct": rel,
                        "rel_low": rlo,
                        "rel_high": rhi,
                        "baseline": baseline,
                    }
                )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists of numbers); :meth:`from_dict` inverts it."""
        return {
            "version": 1,
            "users": self.users.tolist(),
            "session_user": self.session_user.tolist(),
            "session_day": self.session_day.tolist(),
            "sessions": {
                arm: {name: v.tolist() for name, v in fields_.items()}
                for arm, fields_ in self.sessions.items()
            },
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OnlineResult:
        if d.get("version") != 1:
            raise ValueError(f"OnlineResult version {d.get('version')!r}: expected 1")
        session_user = np.asarray(d["session_user"], dtype=np.int64)
        sessions: dict[str, dict[str, np.ndarray]] = {}
        for arm, flds in d["sessions"].items():
            missing = set(SESSION_FIELDS) - set(flds)
            if missing:
                raise ValueError(f"arm {arm!r}: missing fields {sorted(missing)}")
            sessions[arm] = {
                name: np.asarray(flds[name], dtype=np.float64 if name == "watch_time" else np.int64)
                for name in SESSION_FIELDS
            }
            for name, v in sessions[arm].items():
                if v.shape != session_user.shape:
                    raise ValueError(
                        f"arm {arm!r} field {name!r}: {v.shape[0]} values for "
                        f"{session_user.shape[0]} sessions"
                    )
        return cls(
            users=np.asarray(d["users"], dtype=np.int64),
            session_user=session_user,
            session_day=np.asarray(d["session_day"], dtype=np.int64),
            sessions=sessions,
            meta=dict(d.get("meta", {})),
        )


def format_summary(rows: Sequence[Mapping[str, Any]], digits: int = 3) -> str:
    """A Markdown table of :meth:`OnlineResult.summary` rows."""

    def f(x: float, pct: bool = False) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "n/a"
        return f"{x:+.{max(digits - 1, 0)}f}%" if pct else f"{x:.{digits}g}"

    lines = [
        "| arm | metric | mean | 95% CI | vs baseline | 95% CI |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['metric']} | {f(r['mean'])} | [{f(r['low'])}, {f(r['high'])}] "
            f"| {f(r['rel_pct'], True)} | [{f(r['rel_low'], True)}, {f(r['rel_high'], True)}] |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def _check_days(days: Sequence[int] | None, world: World) -> list[int]:
    out = list(range(world.cfg.n_days)) if days is None else [int(d) for d in days]
    if not out:
        raise ValueError("days is empty")
    if out[0] < 0 or any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"days={out}: must be non-negative and strictly increasing")
    return out


def _check_users(users: np.ndarray | None, world: World) -> np.ndarray:
    if users is None:
        return np.arange(world.n_users, dtype=np.int64)
    u = np.asarray(users)
    if u.ndim != 1 or u.dtype.kind not in "iu":
        raise ValueError(f"users must be a 1-D integer array, got shape {u.shape} {u.dtype}")
    u = np.unique(u.astype(np.int64))
    if u.size and (u[0] < 0 or u[-1] >= world.n_users):
        raise ValueError(f"users: index out of range [0, {world.n_users})")
    return u


def _run_arm(
    world: World,
    policy: Policy,
    population: np.ndarray,
    days: list[int],
    bar: Any,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    env = Env(world, UserState.initial(world))
    if hasattr(policy, "bind"):
        policy.bind(env)
    has_feedback = hasattr(policy, "observe_feedback")
    k = world.cfg.list_size
    s_user, s_day = [], []
    cols: dict[str, list[np.ndarray]] = {name: [] for name in SESSION_FIELDS}
    n_imp = 0
    for day in days:
        active = env.active_users(day)
        day_users = active[np.isin(active, population, assume_unique=True)]
        n = day_users.shape[0]
        acc = {name: np.zeros(n, dtype=np.int64) for name in SESSION_FIELDS if name != "watch_time"}
        acc_watch = np.zeros(n, dtype=np.float64)
        obs = env.begin_day(day, day_users) if n else None
        while obs is not None:
            slate = np.asarray(policy.rank(obs, k))
            fb: Feedback = env.step(slate)
            if has_feedback:
                policy.observe_feedback(obs, slate, fb)  # type: ignore[attr-defined]
            i = np.searchsorted(day_users, obs.users)
            acc["requests"][i] += 1
            acc["impressions"][i] += slate.shape[1]
            for name in _FEEDBACK_FIELDS[:-1]:
                acc[name][i] += getattr(fb, name).sum(axis=1, dtype=np.int64)
            acc_watch[i] += fb.watch_time.sum(axis=1, dtype=np.float64)
            n_imp += slate.size
            obs = env.observe()
        s_user.append(day_users)
        s_day.append(np.full(n, day, dtype=np.int64))
        for name in SESSION_FIELDS:
            cols[name].append(acc_watch if name == "watch_time" else acc[name])
        bar.update(1)
        bar.set_postfix(impressions=f"{n_imp:,}")
    return (
        np.concatenate(s_user),
        np.concatenate(s_day),
        {name: np.concatenate(v) for name, v in cols.items()},
    )


def run_online(
    world: World,
    policies: Mapping[str, Policy],
    users: np.ndarray | None = None,
    days: Sequence[int] | None = None,
    seed_offset: int = 0,
    progress: bool = True,
) -> OnlineResult:
    """Run every policy as an arm of a simulated online A/B test with common random numbers.

    Each arm gets its own ``Env(world, UserState.initial(world))`` and runs ``days`` in order;
    arms run one after another. Before an arm's first day its policy's ``bind(env)`` is called
    when defined; after each step its ``observe_feedback(obs, slate, feedback)`` when defined.

    Args:
        world: the world (static arrays and config).
        policies: arm name -> policy (one instance per arm).
        users: the population (user indices); None: every user. Sessions are those of the
            population's users active on each day.
        days: the days to run, strictly increasing (None: ``range(world.cfg.n_days)``). To
            evaluate on traffic the training logs never saw, use days after the logged ones.
        seed_offset: shifts the seed of every draw of the env (activity, candidates, responses)
            without rebuilding the static world: the env acts in a copy of the world whose
            ``cfg.seed`` is ``cfg.seed + seed_offset``. 0: the world's own draws. Policies keep
            the world they were built with.
        progress: show a tqdm bar per arm.

    Returns:
        :class:`OnlineResult` with per-session measurements of every arm.
    """
    from tqdm.auto import tqdm

    if not policies:
        raise ValueError("policies is empty")
    day_list = _check_days(days, world)
    population = _check_users(users, world)
    env_world = world
    if seed_offset:
        cfg = world.cfg.with_overrides({"seed": world.cfg.seed + int(seed_offset)})
        env_world = dataclasses.replace(world, cfg=cfg)
    sessions: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    s_user: np.ndarray | None = None
    s_day: np.ndarray | None = None
    for arm, policy in policies.items():
        t0 = time.perf_counter()
        with tqdm(
            total=len(day_list), desc=f"online {arm}", unit="day", disable=not progress
        ) as bar:
            u, d, cols = _run_arm(env_world, policy, population, day_list, bar)
        seconds[arm] = round(time.perf_counter() - t0, 3)
        if s_user is None or s_day is None:
            s_user, s_day = u, d
        elif not (np.array_equal(u, s_user) and np.array_equal(d, s_day)):  # pragma: no cover
            raise RuntimeError(f"arm {arm!r} saw different sessions: common random numbers broken")
        sessions[arm] = cols
    assert s_user is not None and s_day is not None
    return OnlineResult(
        users=population,
        session_user=s_user,
        session_day=s_day,
        sessions=sessions,
        meta={
            "days": day_list,
            "world_seed": int(world.cfg.seed),
            "seed_offset": int(seed_offset),
            "list_size": int(world.cfg.list_size),
            "n_candidates": int(world.cfg.n_candidates),
            "seconds": seconds,
        },
    )


# --------------------------------------------------------------------------------------------
# several seeds
# --------------------------------------------------------------------------------------------


@dataclass
class SeedsResult:
    """:func:`run_online` on one world per seed.

    Attributes:
        seeds: the world seeds, in run order.
        results: seed -> that world's :class:`OnlineResult`.
    """

    seeds: list[int]
    results: dict[int, OnlineResult]

    @property
    def arms(self) -> list[str]:
        return self.results[self.seeds[0]].arms

    def summary(
        self, baseline: str | None = None, metrics: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One row per (arm, metric): mean and spread over seeds of the per-seed means.

        Row keys: ``arm``, ``metric``, ``unit``, ``n_seeds``, ``mean`` (mean over seeds of the
        per-seed mean), ``std`` (sample std over seeds, ddof=1; 0 with one seed),
        ``per_seed`` (the per-seed means). With ``baseline``: also ``rel_pct_mean``,
        ``rel_pct_std`` and ``rel_pct_per_seed`` (the relative change vs the baseline arm in
        %, computed within each seed's world), and ``baseline``.
        """
        names = list(METRICS) if metrics is None else list(metrics)
        per_seed = {s: self.results[s].summary(baseline or self.arms[0], names) for s in self.seeds}
        rows: list[dict[str, Any]] = []
        for i, r0 in enumerate(per_seed[self.seeds[0]]):
            means = np.array([per_seed[s][i]["mean"] for s in self.seeds], dtype=np.float64)
            row: dict[str, Any] = {
                "arm": r0["arm"],
                "metric": r0["metric"],
                "unit": r0["unit"],
                "n_seeds": len(self.seeds),
                "mean": float(means.mean()),
                "std": float(means.std(ddof=1)) if len(means) > 1 else 0.0,
                "per_seed": means.tolist(),
            }
            if baseline is not None:
                rel = np.array([per_seed[s][i]["rel_pct"] for s in self.seeds], dtype=np.float64)
                row["rel_pct_mean"] = float(rel.mean())
                row["rel_pct_std"] = float(rel.std(ddof=1)) if len(rel) > 1 else 0.0
                row["rel_pct_per_seed"] = rel.tolist()
                row["baseline"] = baseline
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "seeds": list(self.seeds),
            "results": {str(s): self.results[s].to_dict() for s in self.seeds},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SeedsResult:
        if d.get("version") != 1:
            raise ValueError(f"SeedsResult version {d.get('version')!r}: expected 1")
        seeds = [int(s) for s in d["seeds"]]
        return cls(
            seeds=seeds,
            results={s: OnlineResult.from_dict(d["results"][str(s)]) for s in seeds},
        )


def run_online_seeds(
    world_cfg: WorldConfig,
    policy_factories: Mapping[str, Callable[[World], Policy]],
    seeds: Sequence[int],
    users: np.ndarray | None = None,
    days: Sequence[int] | None = None,
    seed_offset: int = 0,
    progress: bool = True,
) -> SeedsResult:
    """:func:`run_online` on one world per seed: ``build_world(world_cfg with seed=s)``.

    Args:
        world_cfg: the world config; only its ``seed`` is replaced per run.
        policy_factories: arm name -> ``factory(world) -> policy``, called once per seed with
            that seed's world (e.g. ``LoggingPolicy``, ``lambda w: OraclePolicy()``,
            ``lambda w: RandomPolicy(w.cfg.seed)``).
        seeds: world seeds (at least one, distinct). DESIGN.md asks for at least 3.
        users, days, seed_offset, progress: as :func:`run_online`.

    Returns:
        :class:`SeedsResult`; ``.summary(baseline)`` gives the mean and spread over seeds.
    """
    seed_list = [int(s) for s in seeds]
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds={seed_list}: need at least one, all distinct")
    results: dict[int, OnlineResult] = {}
    for s in seed_list:
        world = build_world(world_cfg.with_overrides({"seed": s}))
        policies = {arm: make(world) for arm, make in policy_factories.items()}
        results[s] = run_online(
            world, policies, users=users, days=days, seed_offset=seed_offset, progress=progress
        )
    return SeedsResult(seeds=seed_list, results=results)
