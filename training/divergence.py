"""Stopping a diverged training run: a NaN or infinite loss ends the loop at the step it
appears, with an error naming the step and the loss term, instead of finishing the budget.

Every training loop calls :func:`check_finite` on its step's loss terms (and gradient norms)
before that step's checkpoint can be written, and :func:`check_finite_parameters` guards each
checkpoint, so a run folder never holds a checkpoint written after the divergence: it keeps
the last good one and no ``train.json`` (it is not marked finished). The CLI turns
:class:`DivergenceError` into a one-line error and exit status :data:`EXIT_DIVERGED`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays out of the import: the CLI imports this module for any command
    from torch import nn

__all__ = [
    "EXIT_DIVERGED",
    "DivergenceError",
    "check_finite",
    "check_finite_parameters",
    "watched",
]

#: Exit status of a command whose training diverged (2 means bad input, 1 an unexpected error).
EXIT_DIVERGED = 3


class DivergenceError(RuntimeError):
    """A training quantity became NaN or infinite.

    Attributes:
        step: 1-based number of the optimiser step whose values these are (the loop stopped
            there; no later step ran).
        values: name -> the non-finite value (``losses/td_teacher``, ``weighted_bce``, ...).
    """

    def __init__(self, step: int, values: Mapping[str, float], what: str = "training") -> None:
        self.step = int(step)
        self.values = dict(values)
        detail = ", ".join(f"{k}={v}" for k, v in self.values.items())
        super().__init__(
            f"{what} diverged at step {self.step}: non-finite {detail}; stopped there (a run "
            "folder keeps its last checkpoint written before, and is not finished)"
        )


def watched(metrics: Mapping[str, float]) -> dict[str, float]:
    """The entries of a step's metrics that must stay finite: the loss terms (``losses/...``)
    and the gradient norms (any name containing ``grad_norm``: a non-finite norm means the
    optimiser step just applied NaN or inf to the parameters)."""
    return {k: v for k, v in metrics.items() if k.startswith("losses/") or "grad_norm" in k}


def check_finite(values: Mapping[str, Any], step: int, what: str = "training") -> None:
    """Raise :class:`DivergenceError` if any value is NaN or infinite.

    Args:
        values: name -> a number or a one-element tensor (read with ``float``, which
            synchronises a GPU once per call).
        step: 1-based number of the step the values come from.
        what: the run's name for the message ("drl-rec", "point-wise nfm", ...).

    Raises:
        DivergenceError: naming ``step`` and every non-finite entry.
    """
    floats = {k: float(v.detach() if hasattr(v, "detach") else v) for k, v in values.items()}
    bad = {k: v for k, v in floats.items() if not math.isfinite(v)}
    if bad:
        raise DivergenceError(step, bad, what)


def check_finite_parameters(
    modules: Mapping[str, nn.Module], step: int, what: str = "training"
) -> None:
    """Raise :class:`DivergenceError` if a parameter or buffer of ``modules`` holds NaN or inf
    (checked before a checkpoint is written, so none is written from a diverged state).

    The error's values are ``{"<module>.<parameter>": <a non-finite element>}`` for the
    first offending tensor of each module.
    """
    bad: dict[str, float] = {}
    for name, module in modules.items():
        for pname, t in (*module.named_parameters(), *module.named_buffers()):
            t = t.detach()
            if t.is_floating_point() and not bool(t.isfinite().all()):
                bad[f"{name}.{pname}"] = float(t[~t.isfinite()].flatten()[0])
                break
    if bad:
        raise DivergenceError(step, bad, what)
