"""Plots of the DRL-Rec report: legends on every series, labelled reference lines, the chance
line where AUC 0.5 is in range."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training.drl.report.plan import (
    ABLATIONS,
    ReportConfig,
)
from training.harness.render import chance_line, pyplot, reference_line, save_figure

# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def _chance_if_visible(ax: Any) -> None:
    """The chance line (AUC 0.5) where the axis range shows it."""
    lo, hi = ax.get_ylim()
    if lo <= 0.5 <= hi:
        chance_line(ax)


def write_plots(agg: Mapping[str, Any], cfg: ReportConfig, out: Path) -> dict[str, str]:
    plt = pyplot()

    names: dict[str, str] = {}
    # ---- ablations ----
    t4 = agg["table4"]
    rows = [("drl", "DRL-Rec")] + [(n, n.replace("no_", "- ")) for n in ABLATIONS]
    rows = [(n, t) for n, t in rows if t4.get(n, {}).get("seeds")]
    if rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        m = np.array([t4[n]["auc"][0] for n, _ in rows])
        sd = np.nan_to_num(np.array([t4[n]["auc"][1] for n, _ in rows]))  # 1 seed: no bar
        x = np.arange(len(rows))
        ax.bar(x, m, yerr=sd, capsize=3, color=["#d62728"] + ["#7f7f7f"] * (len(rows) - 1))
        for xi, mi, si in zip(x, m, sd, strict=True):
            ax.text(xi, mi + si, f"{mi:.4f}", ha="center", va="bottom", fontsize=7)
        reference_line(ax, float(m[0]), f"full DRL-Rec ({m[0]:.4f})", color="#d62728")
        pad = max(0.004, 0.15 * float(np.max(m + sd) - np.min(m - sd)))
        ax.set_ylim(float(np.min(m - sd)) - pad, float(np.max(m + sd)) + pad)
        _chance_if_visible(ax)
        ax.legend(fontsize=8)
        ax.set_xticks(x, [t for _, t in rows], rotation=25, ha="right")
        ax.set_ylabel("student test AUC (mean ± std over seeds)")
        ax.set_title("Table 4 analogue: ablations of DRL-Rec")
        names["ablations"] = "ablations.png"
        save_figure(fig, out / names["ablations"])

    def line(ax: Any, rows: list[dict], xs: list[float], label_x: str, title: str) -> None:
        st = np.array([r["student"][0] for r in rows], dtype=float)
        ss = np.array([r["student"][1] for r in rows], dtype=float)
        te = np.array([r["teacher"][0] for r in rows], dtype=float)
        ok = ~np.isnan(st)
        if not ok.any():
            ax.set_title(title + " (not run)")
            return
        xa = np.asarray(xs, dtype=float)
        ss = np.nan_to_num(ss)  # one seed: no error bar
        ax.errorbar(xa[ok], st[ok], yerr=ss[ok], marker="o", color="#d62728", capsize=3,
                    label="student (DRL-Rec)")  # fmt: skip
        ax.plot(xa[ok], te[ok], ls="--", marker="x", color="#1f77b4", label="teacher")
        for xi, yi in zip(xa[ok], st[ok], strict=True):
            ax.annotate(f"{yi:.4f}", (xi, yi), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7)  # fmt: skip
        ax.set_xlabel(label_x)
        ax.set_ylabel("test AUC")
        ax.set_title(title)
        _chance_if_visible(ax)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    sw = agg["sweeps"]
    fig, ax = plt.subplots(figsize=(6, 4))
    rows_c = sw["compression"]
    line(ax, rows_c, [100 * r["value"] for r in rows_c], "compression rate (student / teacher, %)",
         "Fig. 4a analogue: AUC vs compression rate")  # fmt: skip
    ax.invert_xaxis()
    names["fig4a"] = "fig4a_compression.png"
    save_figure(fig, out / names["fig4a"])

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    rows_k = sw["n_filtered"]
    line(a1, rows_k, [r["value"] for r in rows_k], "filtered exploration items (top-k)",
         "Fig. 4b analogue: AUC vs filtered items")  # fmt: skip
    a1.set_xticks([r["value"] for r in rows_k])
    rows_e = sw["n_explore"]
    line(a2, rows_e, [r["value"] for r in rows_e], "input exploration candidates",
         "AUC vs input candidates")  # fmt: skip
    a2.set_xscale("log")
    a2.set_xticks([r["value"] for r in rows_e], [str(r["value"]) for r in rows_e])
    names["fig4b"] = "fig4b_filtered.png"
    save_figure(fig, out / names["fig4b"])
    return names
