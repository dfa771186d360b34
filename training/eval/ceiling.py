"""Ground truth of a simulated world, for diagnostics: the click-AUC ceiling of a log (the
world's own click probabilities, replayed) and what policies put in a list (:func:`first_slates`).

Ranking impressions by their true click probability maximises the expected AUC (the ratio of
the two class densities is monotone in it), so the AUC of ``p(click)`` on the logged test
impressions is the most any model can score there, whatever it observes. Offline differences
between models are worth reading against the distance to this ceiling.

The probabilities are not logged; they are recomputed by replaying the logging policy. Every
random draw of the world is keyed by (user, day, request, slot) (:mod:`training.sim.rng`) and
a user's state evolves only through that user's own sessions, so replaying a subset of users
over the same days reproduces exactly their logged sessions: the same candidates, slates and
clicks. Before each step the env's ground truth (:meth:`Env.expected`, exact for clicks) gives
the click probability of every shown item at its slot, with the same-tag / same-author counts
of the items placed before it. :func:`click_ceiling` checks the replay against the log's own
counts when it is given them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contract.features import prefix_counts
from training.eval.metrics import auc
from training.sim.config import WorldConfig
from training.sim.env import Env, Policy
from training.sim.logging_policy import LoggingPolicy
from training.sim.world import World, build_world


@dataclass(frozen=True)
class Ceiling:
    """True click probabilities and clicks of the replayed impressions of some users."""

    p_click: np.ndarray
    click: np.ndarray
    user_id: np.ndarray

    @property
    def n_impressions(self) -> int:
        return int(self.click.size)

    @property
    def auc(self) -> float:
        return auc(self.click, self.p_click)


def click_ceiling(cfg: WorldConfig, user_ids: np.ndarray, days: Sequence[int]) -> Ceiling:
    """Replay the logging policy for the users ``user_ids`` (the world's user ids) from day 0
    to the last of ``days``; return the click probabilities and clicks of their impressions
    on ``days`` (the earlier days are replayed for the users' drifted state only).

    Raises ``ValueError`` for user ids the world does not have or days outside it.
    """
    days = sorted({int(d) for d in days})
    if not days or days[0] < 0 or days[-1] >= cfg.n_days:
        raise ValueError(f"days {days} outside the world's 0..{cfg.n_days - 1}")
    world = build_world(cfg)
    index = {int(u): i for i, u in enumerate(world.user_id)}
    want = np.unique(np.asarray(user_ids, dtype=np.int64))
    unknown = [int(u) for u in want if int(u) not in index]
    if unknown:
        raise ValueError(f"{len(unknown)} user ids not in the world (first: {unknown[:3]})")
    users = np.sort(np.array([index[int(u)] for u in want], dtype=np.int64))
    env, policy, k = Env(world), LoggingPolicy(world), cfg.list_size
    p_out: list[np.ndarray] = []
    y_out: list[np.ndarray] = []
    u_out: list[np.ndarray] = []
    keep = set(days)
    for day in range(days[-1] + 1):
        obs = env.begin_day(day, np.intersect1d(env.active_users(day), users))
        while obs is not None:
            slate, _ = policy.sample(obs, k)
            if day in keep:
                items = np.take_along_axis(obs.candidates, slate, axis=1)
                truth = env.expected(
                    slate,
                    np.arange(slate.shape[1])[None, :],
                    prefix_counts(world.item_tag[items]),
                    prefix_counts(world.item_author[items]),
                )
                p_out.append(truth["click"].ravel())
                u_out.append(np.repeat(obs.user_id, slate.shape[1]))
            fb = env.step(slate)
            if day in keep:
                y_out.append(fb.click.ravel().astype(np.int8))
            obs = env.observe()
    if not p_out:
        return Ceiling(np.zeros(0), np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.int64))
    return Ceiling(np.concatenate(p_out), np.concatenate(y_out), np.concatenate(u_out))


#: Truth of the items a policy places, per slate (means over slots): the click probability at
#: the slot, the mean satisfaction logit (what feeds the leave hazard) and the clickbait share.
SLATE_TRUTH = ("p_click", "satisfaction", "clickbait")


def first_slates(
    world: World, policies: dict[str, Policy], users: np.ndarray, day: int, k: int
) -> dict[str, dict[str, float]]:
    """What each policy puts in the first list of the day's sessions of ``users`` (world
    indices; those active on ``day``), scored by the world's truth: per policy the means over
    the slates' items of :data:`SLATE_TRUTH`. Every policy sees the same requests (each in its
    own fresh :class:`Env`; draws keyed by user, day, request), so the rows are paired.
    Policies with a ``bind(env)`` hook (the oracle) get their env first.
    """
    if not policies:
        raise ValueError("first_slates: no policies")
    out: dict[str, dict[str, float]] = {}
    for name, pol in policies.items():
        env = Env(world)
        obs = env.begin_day(day, np.intersect1d(env.active_users(day), users))
        if obs is None:
            raise ValueError(f"no user of the {len(users)} given is active on day {day}")
        bind = getattr(pol, "bind", None)
        if bind is not None:
            bind(env)
        slate = np.asarray(pol.rank(obs, k))
        items = np.take_along_axis(obs.candidates, slate, axis=1)
        truth = env.expected(
            slate,
            np.arange(k)[None, :],
            prefix_counts(world.item_tag[items]),
            prefix_counts(world.item_author[items]),
        )
        out[name] = {
            "p_click": float(truth["click"].mean()),
            "satisfaction": float(truth["satisfaction"].mean()),
            "clickbait": float(world.item_clickbait[items].mean()),
            "requests": int(slate.shape[0]),
        }
    return out
