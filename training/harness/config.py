"""``key=value`` overrides onto config dataclasses: one coercion that validates, presets, device.

Every command that takes ``--set`` / ``--budget`` goes through :func:`apply_overrides`: a
value is parsed by the type of the field's current value (bool, int, float, str, tuple as
comma-separated items), then checked against the field's :class:`Rule` (bounds, choices).
A bad value raises :class:`ConfigError` naming the key and the value, which the CLI prints as
one line with exit status 2 before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from training.sim.config import ConfigError, preset

T = TypeVar("T")

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Rule:
    """What a field accepts: ``lo``/``hi`` bounds (``lo_open``/``hi_open``: strict), or
    ``choices``. Tuples are checked item by item."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo:g}"
        hi = "" if self.hi is None else f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return " and ".join(x for x in (lo, hi) if x)

    def ok(self, v: Any) -> bool:
        if isinstance(v, tuple):
            return all(self.ok(x) for x in v)
        if self.choices:
            return v in self.choices
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return True
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or not (v >= self.hi if self.hi_open else v > self.hi)


POSITIVE = Rule(lo=0, lo_open=True)
AT_LEAST_1 = Rule(lo=1)
NON_NEGATIVE = Rule(lo=0)
UNIT_OPEN_TOP = Rule(lo=0, hi=1, hi_open=True)
UNIT_OPEN_BOTTOM = Rule(lo=0, hi=1, lo_open=True)

#: DRLConfig (training/drl/train.py) fields and what they accept.
DRL_RULES: dict[str, Rule] = {
    "gamma": UNIT_OPEN_TOP,
    "discount": Rule(choices=("slot", "request")),
    "compression": UNIT_OPEN_BOTTOM,
    "n_explore": AT_LEAST_1,
    "n_filtered": AT_LEAST_1,
    "temperature": POSITIVE,
    "loss_weights": NON_NEGATIVE,
    "d_r": AT_LEAST_1,
    "gru_hidden": AT_LEAST_1,
    "mlp": AT_LEAST_1,
    "memory": AT_LEAST_1,
    "lr": POSITIVE,
    "batch_size": AT_LEAST_1,
    "grad_clip": POSITIVE,
    "target_tau": UNIT_OPEN_BOTTOM,
    "epochs": AT_LEAST_1,
    "max_instances": NON_NEGATIVE,
    "sessions_per_chunk": AT_LEAST_1,
    "reward": Rule(
        choices=("click", "like", "follow", "comment", "hate", "long_view", "watch_time")
    ),  # fmt: skip
    "seed": NON_NEGATIVE,
    "log_every": AT_LEAST_1,
}


def coerce(where: str, key: str, raw: Any, current: Any) -> Any:
    """``raw`` (a string from the command line, or already a value) as the type of
    ``current``; :class:`ConfigError` when it is not one."""
    if not isinstance(raw, str):
        return raw
    s = raw.strip()
    try:
        if isinstance(current, bool):
            if s.lower() in _TRUE:
                return True
            if s.lower() in _FALSE:
                return False
            raise ValueError
        if isinstance(current, tuple):
            items = [x.strip() for x in s.split(",") if x.strip()]
            if not items:
                raise ValueError
            kind = type(current[0]) if current else str
            return tuple(coerce(where, key, x, kind()) for x in items)
        if isinstance(current, int):
            return int(s)
        if isinstance(current, float):
            v = float(s)
            if not math.isfinite(v):
                raise ValueError
            return v
    except (ValueError, ConfigError):
        kind = "true or false" if isinstance(current, bool) else type(current).__name__
        if isinstance(current, tuple):
            kind = f"comma-separated {type(current[0]).__name__ if current else 'str'}s"
        raise ConfigError(f"{where} {key}={raw!r}: expected {kind}") from None
    return s


def apply_overrides(
    cfg: T,
    overrides: Mapping[str, Any],
    where: str,
    rules: Mapping[str, Rule] | None = None,
    fixed: tuple[str, ...] = (),
) -> T:
    """A copy of the dataclass ``cfg`` with ``overrides`` applied, coerced and validated.

    ``where`` names the config in messages ("drl config"); ``fixed`` lists fields that cannot
    be overridden this way. Errors of the class's own ``__post_init__`` come back as
    :class:`ConfigError` too.
    """
    known = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    rules = rules or {}
    out: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in known or key in fixed:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {sorted(known - set(fixed))})")
        v = coerce(where, key, raw, getattr(cfg, key))
        rule = rules.get(key)
        if rule is not None and not rule.ok(v):
            raise ConfigError(f"{where} {key}={raw!r}: must be {rule.describe()}")
        out[key] = v
    try:
        return dataclasses.replace(cfg, **out)  # type: ignore[type-var]
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def validate(cfg: Any, where: str, rules: Mapping[str, Rule]) -> None:
    """Check every ruled field of a built config (presets and defaults included)."""
    for key, rule in rules.items():
        v = getattr(cfg, key)
        if not rule.ok(v):
            raise ConfigError(f"{where} {key}={v!r}: must be {rule.describe()}")


def world_pairs(world_preset: str, overrides: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """World ``--set`` overrides as sorted ``(key, value)`` string pairs (a report config's
    ``world_overrides``), applied once to ``world_preset`` now so that a bad key or value is a
    :class:`ConfigError` before any work starts."""
    pairs = tuple(sorted((str(k), str(v)) for k, v in overrides.items()))
    preset(world_preset).with_overrides(dict(pairs))
    return pairs


def pick(presets: Mapping[str, T], name: str, what: str) -> T:
    """``presets[name]``, or a :class:`ConfigError` listing the known names."""
    try:
        return presets[name]
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r} (known: {sorted(presets)})") from None


def check_device(device: str) -> str:
    """``device`` when torch can use it here: ``cpu``, ``cuda`` or ``cuda:<i>`` (with CUDA and
    that many GPUs), ``mps`` (with MPS); otherwise :class:`ConfigError`."""
    import torch

    d = device.strip().lower()
    if d == "cpu":
        return d
    if d == "cuda" or d.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device}: CUDA is not available here (no CUDA in this torch build or "
                "no driver); use --device cpu"
            )
        idx = d.split(":", 1)[1] if ":" in d else "0"
        if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: {torch.cuda.device_count()} CUDA device(s)")
        return d
    if d == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device {device}: MPS is not available on this machine")
        return d
    raise ConfigError(f"--device {device!r}: expected cpu, cuda, cuda:<index> or mps")


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds as ints: at least one, all distinct (a :class:`ConfigError` otherwise)."""
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"seeds={out}: need at least one, all distinct")
    return out
