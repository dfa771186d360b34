"""The reports' number formatting (one copy) and plot conventions.

Missing numbers print as ``n/a``; a spread that does not exist (one seed) is left out rather
than printed as ``± 0``; an interval prints as ``point [low, high]``. Plots get a legend for
every series and a label on every reference line (:func:`reference_line`, :func:`chance_line`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def num(x: float | None, d: int = 4) -> str:
    return "n/a" if missing(x) else f"{x:.{d}f}"


def signed(x: float | None, d: int = 4) -> str:
    return "n/a" if missing(x) else f"{x:+.{d}f}"


def pct(x: float | None, d: int = 2) -> str:
    return "n/a" if missing(x) else f"{x:+.{d}f}%"


def compact(x: float | None, d: int = 3) -> str:
    """Significant digits for small values, fixed decimals for large ones."""
    if missing(x):
        return "n/a"
    if x == 0:
        return "0"
    a = abs(x)  # type: ignore[arg-type]
    if a >= 100:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.{d - 1}f}"
    return f"{x:.{d}g}"


def pm(ms: Sequence[float] | None, d: int = 4) -> str:
    """``mean ± std``; just the mean when the spread is undefined (one seed)."""
    if ms is None or missing(ms[0]):
        return "n/a"
    if len(ms) < 2 or missing(ms[1]):
        return num(ms[0], d)
    return f"{num(ms[0], d)} ± {num(ms[1], d)}"


def ci(
    p: Mapping[str, float] | None,
    d: int = 4,
    as_pct: bool = False,
    *,
    sign: bool = True,
    fmt: Callable[[float | None], str] | None = None,
) -> str:
    """``point [low, high]`` of a dict with ``mean``, ``low``, ``high``: ``d`` decimals, signed
    (unless not ``sign``) or as a percentage (``as_pct``), or each number through ``fmt``; just
    the point when the interval is missing."""
    if not p:
        return "n/a"
    if fmt is None:
        fmt = (lambda x: pct(x, d)) if as_pct else (lambda x: (signed if sign else num)(x, d))
    f = fmt
    if missing(p.get("low")) or missing(p.get("high")):
        return f(p["mean"])
    return f"{f(p['mean'])} [{f(p['low'])}, {f(p['high'])}]"


def json_block(w: Any, title: str, obj: Any, indent: int | None = 1) -> None:
    """``title:`` and then ``obj`` as a fenced JSON block (keys sorted), for config sections."""
    for line in (f"{title}:", "", "```json", json.dumps(obj, indent=indent, sort_keys=True), "```"):
        w(line)
    w("")


def mmss(sec: float) -> str:
    sec = float(sec)
    if sec >= 3600:
        return f"{int(sec // 3600)}:{int(sec % 3600 // 60):02d}:{int(sec % 60):02d}"
    return f"{int(sec // 60)}:{int(round(sec % 60)):02d}" if sec >= 60 else f"{sec:.0f} s"


def status(s: str) -> str:
    bold = ("reproduced", "not reproduced", "holds", "violated", "PASS", "FAIL")
    return f"**{s}**" if s in bold else s


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (the reports write PNG files; no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Any) -> None:
    """Lay out ``fig``, write it to ``path`` (PNG, 110 dpi) and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def reference_line(ax: Any, y: float, label: str, color: str = "grey", style: str = "--") -> None:
    """A horizontal reference line that names itself in the legend."""
    ax.axhline(y, color=color, linestyle=style, linewidth=1, label=label)


def chance_line(ax: Any, label: str = "chance (AUC 0.5)") -> None:
    reference_line(ax, 0.5, label, color="black", style=":")


def para(w: Any, *texts: str) -> None:
    """Each of ``texts`` as a line, then a blank line: a Markdown heading or paragraph."""
    for t in texts:
        w(t)
    w("")


def findings_section(w: Any, findings: Sequence[str]) -> None:
    """The summary of findings at the top of a report (sentences computed from the numbers)."""
    w("## Summary of findings")
    w("")
    w("Generated from the numbers below; the hand-written analysis, when present, is at the end.")
    w("")
    for f in findings or ["No finished runs yet."]:
        w(f"- {f}")
    w("")
