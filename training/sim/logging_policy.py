"""The logging policy: a softmax ranker over a noisy production score plus uniform exposure.

Slots are filled one after another. At slot k, among the candidates not yet placed
(``n_k = C - k`` of them), item j is chosen with probability

    p_k(j) = (1 - eps) * exp(s_j / T) / sum_{l remaining} exp(s_l / T) + eps / n_k,

and that ``p_k(j)`` of the chosen item is the propensity logged at slot k. The probability of
the whole list is the product of its slots' propensities (exactly: this is a sequential
sampler, Plackett-Luce mixed with uniform). The score is what a production point-wise model
would give: the user's *base* interest (it does not see drift), popularity, a pull toward
clickbait (click models like it), and a fixed per-(user, item) error.
"""

from __future__ import annotations

import numpy as np

from training.sim.env import Observation
from training.sim.rng import Stream, gumbel, uniform, uniform32
from training.sim.world import World


def sample_slate(
    logits: np.ndarray,
    k: int,
    epsilon: float,
    gumbels: np.ndarray,
    coins: np.ndarray,
    picks: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Sequential softmax-plus-uniform sampling without replacement, with exact propensities.

    Each slot draws its mixture component: with probability ``epsilon`` a uniform pick among
    the remaining candidates, otherwise the remaining candidate with the largest
    ``logit + Gumbel`` key. The second is a softmax draw over the remaining set even after
    earlier picks: the keys left are Gumbels truncated at one common value, and the argmax of
    such keys is still softmax-distributed (argmax and max of Gumbels are independent). So
    this samples the sequential distribution of the module docstring with one top-k per
    request instead of a CDF per slot.

    Args:
        logits: ``(B, C)`` scores divided by the temperature.
        k: slots to fill (``k <= C``).
        epsilon: uniform-exposure share in [0, 1].
        gumbels: ``(B, C)`` standard Gumbel draws.
        coins: ``(B, k)`` uniforms deciding the component of each slot.
        picks: ``(B, k, R)`` uniforms for uniform picks (rejection: a pick of an item already
            placed is redrawn from the next column; R >= 1, more columns make the rare
            fallback to the first remaining item rarer).
    Returns:
        ``(B, k)`` chosen candidate indices and ``(B, k)`` their per-slot propensities.
    """
    b, c = logits.shape
    if k > c:
        raise ValueError(f"cannot fill {k} slots from {c} candidates")
    # float64 from here: the logged propensities are exact to double precision.
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    weights = np.exp(z)
    norm = weights.sum(axis=1)
    keys = z + gumbels
    n_top = min(c, 2 * k)
    if n_top < c:
        top = np.argpartition(-keys, n_top - 1, axis=1)[:, :n_top]
    else:
        top = np.broadcast_to(np.arange(c), (b, c)).copy()
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), axis=1), 1)
    placed = np.zeros((b, c), dtype=bool)
    rows = np.arange(b)
    chosen = np.empty((b, k), dtype=np.int64)
    prop = np.empty((b, k), dtype=np.float64)
    for slot in range(k):
        best = top[rows, np.argmax(~placed[rows[:, None], top], axis=1)]
        uni = np.floor(picks[:, slot, 0] * c).astype(np.int64)
        for r in range(1, picks.shape[2]):
            again = placed[rows, uni]
            if not again.any():
                break
            uni[again] = np.floor(picks[again, slot, r] * c).astype(np.int64)
        still = placed[rows, uni]
        if still.any():
            uni[still] = np.argmax(~placed[still], axis=1)
        j = np.where(coins[:, slot] < epsilon, uni, best)
        chosen[:, slot] = j
        prop[:, slot] = (1.0 - epsilon) * weights[rows, j] / norm + epsilon / (c - slot)
        norm = norm - weights[rows, j]
        placed[rows, j] = True
    return chosen, prop


class LoggingPolicy:
    """The behaviour policy of the logged data (and a baseline arm online)."""

    def __init__(
        self,
        world: World,
        temperature: float | None = None,
        epsilon: float | None = None,
        noise_sd: float | None = None,
    ):
        c = world.cfg
        self.world = world
        self.temperature = c.logging_temperature if temperature is None else temperature
        self.epsilon = c.logging_epsilon if epsilon is None else epsilon
        self.noise_sd = c.logging_noise_sd if noise_sd is None else noise_sd
        # Built once: float32 halves the memory traffic of the (B, C, D) gather per request.
        self._vec = world.item_vec.astype(np.float32)
        self._z = world.user_z.astype(np.float32)
        self._static = (world.item_pop + c.logging_clickbait_pull * world.item_clickbait).astype(
            np.float32
        )

    def scores(self, obs: Observation) -> np.ndarray:
        """Production scores ``(B, C)`` of the candidates (higher is better)."""
        w = self.world
        items = obs.candidates
        vec = np.take(self._vec, items, axis=0)  # (B, C, D)
        base = np.matmul(vec, self._z[obs.users][:, :, None])[..., 0]
        # Uniform noise with unit variance: one hash per (user, item), fixed over time.
        u = uniform32(w.cfg.seed, Stream.LOGGING_NOISE, obs.users[:, None], items)
        err = (u - np.float32(0.5)) * np.float32(np.sqrt(12.0))
        return (
            np.float32(w.cfg.affinity_weight) * base
            + np.take(self._static, items)
            + np.float32(self.noise_sd) * err
        )

    def sample(self, obs: Observation, k: int) -> tuple[np.ndarray, np.ndarray]:
        """A slate ``(B, k)`` and its per-slot propensities."""
        seed, c = self.world.cfg.seed, obs.candidates.shape[1]
        keys = (obs.users[:, None], obs.day, obs.request_index[:, None])
        g = gumbel(seed, Stream.LOGGING, *keys, np.arange(c)[None, :])
        coins = uniform(seed, Stream.LOGGING + 100, *keys, np.arange(k)[None, :])
        picks = uniform(
            seed,
            Stream.LOGGING + 200,
            obs.users[:, None, None],
            obs.day,
            obs.request_index[:, None, None],
            np.arange(k)[None, :, None],
            np.arange(4)[None, None, :],
        )
        return sample_slate(self.scores(obs) / self.temperature, k, self.epsilon, g, coins, picks)

    def rank(self, obs: Observation, k: int) -> np.ndarray:
        return self.sample(obs, k)[0]
