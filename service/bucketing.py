"""A/B arm assignment computed the way GrowthBook computes it.

A user falls into one of 10,000 buckets by GrowthBook's hash version 2::

    n = fnv1a32(str(fnv1a32(seed + user_id))) % 10000        # bucket, 0..9999
    u = n / 10000                                             # GrowthBook's hash value

with FNV-1a 32 over the string's UTF-16 code units (as the JS SDK's ``charCodeAt`` loop; for
ASCII ids that is the bytes). Arms own contiguous ranges of [0, 1) in their listed order,
``[w_0 + .. + w_{i-1}, w_0 + .. + w_i)`` scaled by the coverage, exactly GrowthBook's
``getBucketRanges``, and a user gets the arm whose range holds ``u`` (``chooseVariation``):
the same float arithmetic, so an assignment here equals the SDK's for the same seed, weights
and id (tested against the installed ``growthbook`` package).

Ranges are allocated, never re-modded, so a weight change moves only the users whose range
changed: an arm whose range keeps its start and does not shrink keeps every one of its users;
users move only out of the buckets that changed owner. With arms A, B, C, moving weight from
C to B leaves A untouched and moves exactly the C users in the slice B grew into; moving
weight from A to C (B between them) also moves some B users, because B's range shifts down.
:func:`moved_share` gives the share of buckets that change arm between two settings. Put the
arm whose share changes last, or keep weights and change coverage, to keep users where they
are.

We implement the hash rather than import it: the SDK's helpers are not part of its public
API (they moved between ``growthbook.growthbook`` and ``growthbook.core`` across versions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

N_BUCKETS = 10_000
"""Buckets of GrowthBook's hash version 2 (``n % 10000``)."""

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_WEIGHT_TOL = 1e-9


def fnv1a32(s: str) -> int:
    """32-bit FNV-1a of ``s`` over its UTF-16 code units (bytes for ASCII), in [0, 2**32)."""
    h = _FNV_OFFSET
    if s.isascii():
        units: Sequence[int] = s.encode()
    else:
        data = s.encode("utf-16-le", "surrogatepass")
        units = [data[i] | (data[i + 1] << 8) for i in range(0, len(data), 2)]
    for u in units:
        h = ((h ^ u) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def bucket_of(seed: str, user_id: str | int) -> int:
    """GrowthBook hash v2 bucket of ``user_id`` under ``seed``, an int in [0, 10000).

    ``user_id`` is hashed as its decimal string (an int ``42`` hashes as ``"42"``, which is
    how GrowthBook hashes a string attribute ``"42"``). Raises ValueError on an empty id.
    """
    uid = _user_key(user_id)
    return fnv1a32(str(fnv1a32(seed + uid))) % N_BUCKETS


@dataclass(frozen=True)
class Arm:
    """One arm: its name (the bundle model that serves it), traffic weight in [0, 1], and
    exploration settings.

    ``exploration_rate`` in [0, 1) is the probability, at each position of a list, of a uniform
    pick among the ``exploration_top_k`` (>= 1) best remaining candidates instead of the best
    one (``runtime.lists.Exploration``; the propensities are logged). Raises ValueError naming
    the field and value when one is out of range.
    """

    name: str
    weight: float
    exploration_rate: float = 0.0
    exploration_top_k: int = 1

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"arm name must be a non-empty string, got {self.name!r}")
        if not (math.isfinite(self.weight) and 0.0 <= self.weight <= 1.0):
            raise ValueError(f"arm {self.name!r}: weight {self.weight!r} outside [0, 1]")
        if not (0.0 <= self.exploration_rate < 1.0):
            raise ValueError(
                f"arm {self.name!r}: exploration_rate {self.exploration_rate!r} outside [0, 1)"
            )
        if isinstance(self.exploration_top_k, bool) or not (
            isinstance(self.exploration_top_k, int) and self.exploration_top_k >= 1
        ):
            raise ValueError(
                f"arm {self.name!r}: exploration_top_k {self.exploration_top_k!r} must be an "
                "int >= 1"
            )


@dataclass(frozen=True)
class Assignment:
    """Where a user landed.

    ``bucket`` is the user's hash bucket in [0, 10000) (always computed, also for overrides);
    ``via`` says why this arm: ``"hash"`` (the bucket's range), ``"override"`` (the QA map) or
    ``"not_covered"`` (the bucket lies outside the coverage: GrowthBook serves those users the
    first arm and does not count them in the experiment).
    """

    arm: str
    bucket: int
    via: Literal["hash", "override", "not_covered"] = "hash"

    @property
    def in_experiment(self) -> bool:
        """True when the hash placed the user (overrides and uncovered users are not)."""
        return self.via == "hash"


@dataclass(frozen=True)
class Experiment:
    """A salted traffic split over ordered arms, GrowthBook-compatible.

    ``seed`` salts the hash (GrowthBook's experiment seed, by default its key); ``arms`` in
    range order with weights summing to 1; ``coverage`` in [0, 1] is the included share of
    each arm's range; ``overrides`` maps a user id (as a string) to a forced arm name for QA.
    Raises ValueError naming the bad value: empty seed, no arms, duplicate arm names, weights
    whose sum is not 1, coverage outside [0, 1], an override naming an unknown arm.
    """

    seed: str
    arms: tuple[Arm, ...]
    coverage: float = 1.0
    overrides: Mapping[str, str] = field(default_factory=dict)
    _ranges: tuple[tuple[float, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "overrides", {str(k): v for k, v in self.overrides.items()})
        if not self.seed:
            raise ValueError(f"experiment seed must be a non-empty string, got {self.seed!r}")
        if not self.arms:
            raise ValueError("experiment needs at least one arm, got none")
        names = [a.name for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate arm names {dup}")
        total = sum(a.weight for a in self.arms)
        if abs(total - 1.0) > _WEIGHT_TOL:
            weights = {a.name: a.weight for a in self.arms}
            raise ValueError(f"arm weights {weights} sum to {total!r}, not 1")
        if not (0.0 <= self.coverage <= 1.0):
            raise ValueError(f"coverage {self.coverage!r} outside [0, 1]")
        for user, arm in self.overrides.items():
            if arm not in names:
                raise ValueError(f"override for user {user!r}: unknown arm {arm!r} (arms {names})")
        object.__setattr__(self, "_ranges", self._compute_ranges())

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    def arm(self, name: str) -> Arm:
        """The arm called ``name``; KeyError naming it if there is none."""
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"unknown arm {name!r} (arms {list(self.arm_names)})")

    def ranges(self) -> list[tuple[float, float]]:
        """Each arm's ``[start, end)`` in hash space [0, 1), GrowthBook's ``getBucketRanges``.

        ``start_i = w_0 + .. + w_{i-1}`` (float running sum, as the SDK), ``end_i = start_i +
        coverage * w_i``.
        """
        return list(self._ranges)

    def _compute_ranges(self) -> tuple[tuple[float, float], ...]:
        out: list[tuple[float, float]] = []
        cumulative = 0.0
        for a in self.arms:
            start = cumulative
            cumulative += a.weight
            out.append((start, start + self.coverage * a.weight))
        return tuple(out)

    def arm_of_bucket(self, bucket: int) -> str | None:
        """The arm whose range holds ``bucket / 10000`` (``chooseVariation``); None if none."""
        u = bucket / N_BUCKETS
        for a, (lo, hi) in zip(self.arms, self._ranges, strict=True):
            if lo <= u < hi:
                return a.name
        return None

    def assign(self, user_id: str | int) -> Assignment:
        """The user's arm and bucket; a QA override wins over the hash.

        Users outside the coverage get the first arm with ``via="not_covered"``. Raises
        ValueError on an empty user id.
        """
        uid = _user_key(user_id)
        bucket = bucket_of(self.seed, uid)
        forced = self.overrides.get(uid)
        if forced is not None:
            return Assignment(forced, bucket, "override")
        arm = self.arm_of_bucket(bucket)
        if arm is None:
            return Assignment(self.arms[0].name, bucket, "not_covered")
        return Assignment(arm, bucket, "hash")

    def with_weights(self, weights: Mapping[str, float]) -> Experiment:
        """A copy with new weights for the named arms (others keep theirs), order kept.

        Raises ValueError naming an unknown arm or, via the constructor, a bad sum.
        """
        unknown = sorted(set(weights) - set(self.arm_names))
        if unknown:
            raise ValueError(f"unknown arms {unknown} (arms {list(self.arm_names)})")
        arms = tuple(replace(a, weight=weights.get(a.name, a.weight)) for a in self.arms)
        return replace(self, arms=arms)


def moved_share(old: Experiment, new: Experiment) -> float:
    """Share of the 10,000 buckets whose arm differs between two settings, in [0, 1].

    A bucket entering or leaving the coverage counts as moved (its user enters or leaves
    the experiment).
    """
    moved = sum(old.arm_of_bucket(b) != new.arm_of_bucket(b) for b in range(N_BUCKETS))
    return moved / N_BUCKETS


def _user_key(user_id: str | int) -> str:
    if isinstance(user_id, bool) or not isinstance(user_id, str | int):
        raise ValueError(f"user id must be a str or int, got {user_id!r}")
    uid = str(user_id)
    if not uid:
        raise ValueError("user id is empty: it cannot be hashed into a bucket")
    return uid


def experiment_from_dict(d: Mapping[str, object]) -> Experiment:
    """An :class:`Experiment` from its JSON form::

        {"seed": "ranker-ab", "coverage": 1.0, "overrides": {"42": "drl_teacher"},
         "arms": [{"name": "drl_student", "weight": 0.8, "exploration_rate": 0.05,
                   "exploration_top_k": 3}, ...]}

    Raises ValueError naming the missing or bad key.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"experiment must be a JSON object, got {type(d).__name__}")
    unknown = set(d) - {"seed", "arms", "coverage", "overrides"}
    if unknown:
        raise ValueError(f"experiment: unknown keys {sorted(unknown)}")
    arms_raw = d.get("arms")
    if not isinstance(arms_raw, list):
        raise ValueError(f"experiment: 'arms' must be a list, got {arms_raw!r}")
    arms = []
    for i, a in enumerate(arms_raw):
        if not isinstance(a, Mapping):
            raise ValueError(f"experiment: arms[{i}] must be an object, got {a!r}")
        extra = set(a) - {"name", "weight", "exploration_rate", "exploration_top_k"}
        if extra:
            raise ValueError(f"experiment: arms[{i}]: unknown keys {sorted(extra)}")
        try:
            arms.append(
                Arm(
                    name=a["name"],  # type: ignore[arg-type]
                    weight=float(a["weight"]),  # type: ignore[arg-type]
                    exploration_rate=float(a.get("exploration_rate", 0.0)),  # type: ignore[arg-type]
                    exploration_top_k=a.get("exploration_top_k", 1),  # type: ignore[arg-type]
                )
            )
        except KeyError as e:
            raise ValueError(f"experiment: arms[{i}] lacks {e}") from None
        except TypeError as e:
            raise ValueError(f"experiment: arms[{i}]: {e}") from None
    overrides = d.get("overrides", {})
    if not isinstance(overrides, Mapping):
        raise ValueError(f"experiment: 'overrides' must be an object, got {overrides!r}")
    try:
        coverage = float(d.get("coverage", 1.0))  # type: ignore[arg-type]
    except TypeError as e:  # a list or an object: a 422, not a 500
        raise ValueError(f"experiment: 'coverage' {d.get('coverage')!r}: {e}") from None
    return Experiment(
        seed=_text(str(d.get("seed", "")), "seed"),
        arms=tuple(arms),
        coverage=coverage,
        overrides={
            _text(str(k), "override user"): _text(str(v), "override arm")
            for k, v in overrides.items()
        },
    )


def _text(s: str, what: str) -> str:
    """``s`` if it is Unicode text; JSON's escapes can spell a lone surrogate ("\\ud800"),
    which no response could echo (not encodable as UTF-8). Raises ValueError naming it."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"experiment: {what} {s!r} is not Unicode text ({e.reason})") from None
    return s


def experiment_to_dict(e: Experiment) -> dict[str, object]:
    """The JSON form :func:`experiment_from_dict` reads."""
    return {
        "seed": e.seed,
        "coverage": e.coverage,
        "overrides": dict(e.overrides),
        "arms": [
            {
                "name": a.name,
                "weight": a.weight,
                "exploration_rate": a.exploration_rate,
                "exploration_top_k": a.exploration_top_k,
            }
            for a in e.arms
        ],  # fmt: skip
    }
