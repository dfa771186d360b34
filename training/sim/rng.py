"""Counter-based random numbers for the world: every draw is a hash of what it is for.

A draw is ``splitmix64(seed, stream, key_1, ..., key_n)`` mapped to [0, 1). Keys are the
user, the session number, the request index and the slot, so the same user at the same
point of the same session sees the same noise whichever policy is acting: this is what makes
common random numbers across A/B arms hold by construction, and it needs no generator state
to carry or to split. Vectorised over numpy uint64 arrays (wrapping arithmetic is intended).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV_2_53 = 1.0 / float(1 << 53)


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (a bijection on uint64); works in place on arrays."""
    if not isinstance(z, np.ndarray) or z.ndim == 0:
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        return z ^ (z >> _S31)
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def hash_keys(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """uint64 hash of (seed, stream, keys...), broadcast over the key arrays."""
    with np.errstate(over="ignore"):
        h = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + np.uint64(stream))
        for k in keys:
            h = _mix(h + (np.asarray(k).astype(np.uint64, copy=False) + _GOLDEN))
    return np.asarray(h)


def uniform(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """Uniform draws in [0, 1), float64, one per broadcast key tuple."""
    h = hash_keys(seed, stream, *keys)
    return (h >> _S11).astype(np.float64) * _INV_2_53


def uniform32(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """Uniform draws in [0, 1), float32 with 24 random bits (for noise and ranking keys)."""
    h = hash_keys(seed, stream, *keys)
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def normal(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """Standard normal draws (Box-Muller on two hashed uniforms)."""
    u1 = uniform(seed, stream, *keys)
    u2 = uniform(seed, stream + 0x5EED, *keys)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def gumbel(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """Standard Gumbel draws, float32 (enough for ranking keys)."""
    # 23 random bits centred in their cells: u in (0, 1) exactly, so both logs are finite.
    h = hash_keys(seed, stream, *keys)
    u = ((h >> np.uint64(41)).astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-23)
    return -np.log(-np.log(u))


# Streams: one constant per kind of draw, so adding a draw never shifts another.
class Stream:
    CAND_TOPIC = 1
    CAND_SLOT = 2
    CAND_WINDOW = 3
    CAND_DEDUPE = 4
    LOGGING = 10
    LOGGING_NOISE = 11
    CLICK = 20
    SAT_NOISE = 21
    MOOD = 22
    LIKE = 23
    FOLLOW = 24
    COMMENT = 25
    HATE = 26
    SKIP_WATCH = 27
    LEAVE = 30
    SESSION_START = 31
    ACTIVE_DAY = 32
    POLICY = 40
