"""Verdicts from numbers, shared by the reports: sign claims, ratio claims, sanity checks.

A claim is a pure function of numbers; its direction is part of the claim ("A beats B" is
``direction`` +1 on ``A - B``). A sanity check that fails makes the report command exit
non-zero unless the report declares it an expected finding (:func:`failed_checks`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

REPRODUCED, NOT_REPRODUCED, NOT_RUN = "reproduced", "not reproduced", "not run"


def direction_status(per_seed: Sequence[float], direction: int = 1) -> dict[str, Any]:
    """A sign claim on per-seed differences: "A > B" for ``direction`` +1, "A < B" for -1.

    Reproduced when the mean difference has the claimed sign **and** every seed agrees.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction={direction}: +1 or -1")
    d = np.asarray(per_seed, dtype=np.float64)
    if d.size == 0:
        return {"status": NOT_RUN, "agree": 0, "seeds": 0, "mean": math.nan}
    agree = int(np.sum(d * direction > 0))
    ok = bool(float(d.mean()) * direction > 0 and agree == d.size)
    return {"status": REPRODUCED if ok else NOT_REPRODUCED, "agree": agree,
            "seeds": int(d.size), "mean": float(d.mean())}  # fmt: skip


def interval_status(low: float, high: float, direction: int = 1) -> str:
    """A significance claim: the whole 95% interval lies on the claimed side of 0."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return NOT_RUN
    ok = low > 0 if direction > 0 else high < 0
    return REPRODUCED if ok else NOT_REPRODUCED


def ratio_status(ours: float | None, paper: float, tol: float) -> str:
    """Reproduced when ``|ours / paper - 1| <= tol``."""
    if ours is None or not np.isfinite(ours):
        return NOT_RUN
    return REPRODUCED if abs(ours / paper - 1.0) <= tol else NOT_REPRODUCED


def check(cid: str, text: str, ok: bool | None, detail: str = "") -> dict[str, Any]:
    """A sanity check's record (``ok`` None: not run)."""
    return {"id": cid, "check": text, "ok": ok, "detail": detail}


def failed_checks(
    checks: Iterable[Mapping[str, Any]], expected: Iterable[str] = ()
) -> list[Mapping[str, Any]]:
    """The checks that failed and are not declared as expected findings (by id)."""
    exp = set(expected)
    return [c for c in checks if c["ok"] is False and c["id"] not in exp]


class SanityError(RuntimeError):
    """A report's sanity check failed and was not declared as an expected finding."""

    def __init__(self, failed: Sequence[Mapping[str, Any]], where: str):
        ids = ", ".join(f"{c['id']} ({c['detail']})" if c.get("detail") else c["id"]
                        for c in failed)  # fmt: skip
        super().__init__(f"sanity checks failed: {ids}; the report is written to {where}")
        self.failed = list(failed)
