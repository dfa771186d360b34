"""Configuration of the simulated world: sizes, mechanisms (each switchable), and presets.

Every mechanism of DESIGN.md ("The world simulator") has a switch in :class:`Mechanisms`, so
that a negative control exists for each: turning a switch off removes that effect and nothing
else. The numeric parameters below were calibrated so that feedback rates land near
KuaiRand's (click ~0.5 of impressions, like ~1%, comment ~0.3%, follow ~0.05%, hate ~0.02%);
``tests/training/test_sim.py`` checks the ranges on the default preset.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_KUAIRAND_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/kuairand-pure"


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key and the bad value."""


@dataclass(frozen=True)
class Mechanisms:
    """Switches for the world's mechanisms (all on by default)."""

    position_bias: bool = True
    """Examination decays with position, so order matters."""
    fatigue_list: bool = True
    """Repeating a tag or an author within one list lowers the appeal of the repeat."""
    fatigue_cross: bool = True
    """Tags shown in recent requests of the session lower appeal (decaying memory)."""
    drift: bool = True
    """Interest moves toward what was consumed (and partly back between sessions)."""
    leave_hazard: bool = True
    """The chance to leave after a request falls with accumulated satisfaction; off: constant."""
    clickbait: bool = True
    """Some items have high immediate appeal but low satisfaction (short vs long term)."""
    heterogeneous: bool = True
    """Users differ in click bias, patience and per-aspect propensities; off: all equal."""


@dataclass(frozen=True)
class WorldConfig:
    """The world: population, catalogue, traffic shape and response parameters."""

    seed: int = 0
    """Seed of every random draw in the world (users, items, responses, logging policy)."""
    n_users: int = 20_000
    """Number of users."""
    n_items: int = 7_583
    """Catalogue size (with ``kuairand`` on, at most the 7,583 real videos)."""
    n_topics: int = 46
    """Number of topics (tags) for a synthetic catalogue; KuaiRand's own tags when seeded."""
    latent_dim: int = 16
    """Dimension of user-interest and item vectors."""
    n_days: int = 7
    """Days of traffic to log; the chronological split is by day."""
    n_candidates: int = 200
    """Matched candidates per request."""
    list_size: int = 10
    """Items shown per request (K)."""
    max_requests: int = 30
    """Hard cap on requests per session."""
    kuairand: bool = True
    """Seed users and items from the real KuaiRand-Pure tables (responses still simulated)."""
    kuairand_dir: str = str(DEFAULT_KUAIRAND_DIR)
    """Folder holding user_features_pure.csv and video_features_basic_pure.csv."""
    mechanisms: Mechanisms = field(default_factory=Mechanisms)

    # Response parameters (click logit, examination, satisfaction, aspects, leaving).
    click_intercept: float = 0.97
    affinity_weight: float = 3.0
    popularity_sd: float = 0.5
    position_bias_power: float = 0.35
    fatigue_list_tag: float = 0.55
    fatigue_list_author: float = 0.8
    fatigue_cross: float = 0.25
    fatigue_cross_decay: float = 0.6
    clickbait_fraction: float = 0.1
    clickbait_appeal: float = 0.6
    clickbait_satisfaction: float = 1.8
    sat_intercept: float = 0.3
    quality_weight: float = 1.0
    sat_affinity_weight: float = 2.5
    duration_weight: float = 0.35
    drift_rate: float = 0.08
    drift_reversion: float = 0.5
    leave_intercept: float = 0.1
    leave_satisfaction_weight: float = 1.0
    leave_reference_satisfaction: float = 1.1
    """The satisfaction the leave hazard sees when ``mechanisms.leave_hazard`` is off: the
    constant hazard then gives about the same session length under the logging policy."""
    satisfaction_decay: float = 0.6
    like_intercept: float = -7.35
    comment_intercept: float = -7.95
    follow_intercept: float = -9.65
    hate_intercept: float = -11.7
    # Logging policy: a softmax ranker over a noisy production score plus uniform exposure.
    logging_temperature: float = 0.35
    logging_epsilon: float = 0.03
    logging_noise_sd: float = 0.3
    logging_clickbait_pull: float = 0.4
    """How much the production score favours clickbait (click models like it)."""

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("n_users", self.n_users >= 1, "must be >= 1"),
            ("n_items", self.n_items >= 2, "must be >= 2"),
            ("n_topics", 1 <= self.n_topics <= 71, "must be in [1, 71]"),
            ("latent_dim", self.latent_dim >= 2, "must be >= 2"),
            ("n_days", self.n_days >= 1, "must be >= 1"),
            ("list_size", 1 <= self.list_size <= 32, "must be in [1, 32]"),
            ("n_candidates", self.n_candidates >= self.list_size, "must be >= list_size"),
            ("n_candidates", self.n_candidates <= self.n_items, "must be <= n_items"),
            ("max_requests", self.max_requests >= 1, "must be >= 1"),
            ("clickbait_fraction", 0 <= self.clickbait_fraction <= 1, "must be in [0, 1]"),
            ("logging_epsilon", 0 <= self.logging_epsilon <= 1, "must be in [0, 1]"),
            ("logging_temperature", self.logging_temperature > 0, "must be > 0"),
            ("fatigue_cross_decay", 0 <= self.fatigue_cross_decay < 1, "must be in [0, 1)"),
            ("satisfaction_decay", 0 <= self.satisfaction_decay < 1, "must be in [0, 1)"),
            ("drift_reversion", 0 <= self.drift_reversion <= 1, "must be in [0, 1]"),
        ]
        for f in fields(self):
            v, default = getattr(self, f.name), f.default
            if isinstance(default, bool) and not isinstance(v, bool):
                raise ConfigError(f"world config {f.name}={v!r}: expected true or false")
            if type(default) is int and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"world config {f.name}={v!r}: expected an integer")
            if type(default) is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ConfigError(f"world config {f.name}={v!r}: expected a number")
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"world config {key}={getattr(self, key)!r}: {why}")
        if not isinstance(self.mechanisms, Mechanisms):
            raise ConfigError(f"world config mechanisms={self.mechanisms!r}: not a Mechanisms")

    def with_overrides(self, overrides: dict[str, Any]) -> WorldConfig:
        """A copy with ``key=value`` overrides; ``mechanisms.NAME`` keys switch mechanisms."""
        return _apply(self, overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        d = dict(d)
        mech = d.pop("mechanisms", {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"world config: unknown keys {sorted(unknown)}")
        return cls(**d, mechanisms=_mechanisms_from(mech))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _mechanisms_from(d: dict[str, Any]) -> Mechanisms:
    unknown = set(d) - {f.name for f in fields(Mechanisms)}
    if unknown:
        raise ConfigError(f"world config mechanisms: unknown keys {sorted(unknown)}")
    for k, v in d.items():
        if not isinstance(v, bool):
            raise ConfigError(f"world config mechanisms.{k}={v!r}: must be true or false")
    return Mechanisms(**d)


def _coerce(key: str, raw: Any, current: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if isinstance(current, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"world config {key}={raw!r}: expected {type(current).__name__}"
        ) from None
    return raw


def _apply(cfg: WorldConfig, overrides: dict[str, Any]) -> WorldConfig:
    top: dict[str, Any] = {}
    mech: dict[str, Any] = {}
    names = {f.name for f in fields(WorldConfig)}
    mech_names = {f.name for f in fields(Mechanisms)}
    for key, raw in overrides.items():
        if key.startswith("mechanisms."):
            name = key.split(".", 1)[1]
            if name not in mech_names:
                raise ConfigError(
                    f"world config: unknown mechanism {name!r} (known: {sorted(mech_names)})"
                )
            mech[name] = _coerce(key, raw, True)
            if not isinstance(mech[name], bool):
                raise ConfigError(f"world config {key}={raw!r}: expected true or false")
        elif key in names and key != "mechanisms":
            top[key] = _coerce(key, raw, getattr(cfg, key))
        else:
            raise ConfigError(f"world config: unknown key {key!r}")
    for key, v in top.items():
        cur = getattr(cfg, key)
        if isinstance(cur, bool) != isinstance(v, bool) or (
            isinstance(cur, (int, float)) and not isinstance(v, (int, float))
        ):
            raise ConfigError(f"world config {key}={v!r}: expected {type(cur).__name__}")
    if mech:
        top["mechanisms"] = dataclasses.replace(cfg.mechanisms, **mech)
    return dataclasses.replace(cfg, **top)


def long_term_off(cfg: WorldConfig) -> WorldConfig:
    """The negative-control world: no drift, no cross-request fatigue, constant leave hazard."""
    return cfg.with_overrides(
        {
            "mechanisms.drift": False,
            "mechanisms.fatigue_cross": False,
            "mechanisms.leave_hazard": False,
        }
    )


PRESETS: dict[str, WorldConfig] = {
    # Seconds: for tests and smoke runs.
    "tiny": WorldConfig(
        n_users=300, n_items=600, n_days=4, n_candidates=50, list_size=10, max_requests=12
    ),
    # The benchmark world: 20k users, the whole KuaiRand-Pure catalogue, millions of impressions.
    "default": WorldConfig(),
    # Larger worlds scale users and days; e.g. `--set n_users=27285 --set n_days=30`.
    "large": WorldConfig(n_users=27_285, n_days=28),
}


def preset(name: str) -> WorldConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r} (known: {sorted(PRESETS)})") from None


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """Parse ``key=value`` strings from the command line."""
    out: dict[str, str] = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"override {p!r}: expected key=value")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out
