"""Online arms: the reference policies every online test compares against, and trained Q
policies loaded from DRL-Rec run folders (:func:`training.bundles.load_drl_run`).

Reference arms (names as the reports print them): ``random`` (uniform), ``logging`` (the
world's logging policy), ``oracle`` (greedy on the true click probability: myopic) and
``oracle_lt`` (greedy on click + 0.1 x the true satisfaction logit, :data:`ORACLE_LT_REWARD`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The long-term oracle's reward: click plus a tenth of the satisfaction logit.
ORACLE_LT_REWARD = {"click": 1.0, "satisfaction": 0.1}
REFERENCE_ARMS = ("random", "logging", "oracle", "oracle_lt")


def reference_arms(
    world: Any, seed: int, names: Sequence[str] = REFERENCE_ARMS,
    rename: Mapping[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Reference policies ``names`` for ``world`` (``rename``: reference name -> arm name)."""
    from training.eval.online import OraclePolicy, RandomPolicy
    from training.sim.logging_policy import LoggingPolicy

    make = {
        "random": lambda: RandomPolicy(seed),
        "logging": lambda: LoggingPolicy(world),
        "oracle": lambda: OraclePolicy(reward="click"),
        "oracle_lt": lambda: OraclePolicy(reward=ORACLE_LT_REWARD),
    }
    unknown = sorted(set(names) - set(make))
    if unknown:
        raise KeyError(f"unknown reference arms {unknown} (known: {list(make)})")
    rename = rename or {}
    return {rename.get(n, n): make[n]() for n in names}


def q_policy(run_dir: str | Path, which: str, side: Any) -> Any:
    """The greedy Q policy of a DRL-Rec run's ``teacher`` or ``student`` (on the CPU)."""
    from training.bundles import load_drl_run
    from training.eval.policies import QPolicy

    if which not in ("teacher", "student"):
        raise ValueError(f"which={which!r}: teacher or student")
    _, model, _ = load_drl_run(run_dir)
    return QPolicy(model.teacher if which == "teacher" else model.student, side)
