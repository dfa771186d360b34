"""The baselines report's plots: online ACN per arm, offline AUC per model, relative change
against the logging policy, NCIS against the online value (PNG files in the report folder)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training.eval.baselines_claims import ONLINE_METRICS
from training.eval.baselines_run import EvalConfig
from training.harness.arms import REFERENCE_ARMS
from training.harness.render import chance_line, pyplot, reference_line, save_figure

__all__ = ["write_plots"]


def write_plots(agg: Mapping[str, Any], cfg: EvalConfig, out: Path) -> dict[str, str]:
    """Write the four plots into ``out``; returns their file names by key (``acn``, ``auc``,
    ``relative``, ``ncis``)."""
    plt = pyplot()

    names = {"acn": "online_acn.png", "auc": "offline_auc.png",
             "relative": "online_relative.png", "ncis": "ncis_vs_online.png"}  # fmt: skip
    arms = agg["arms"]

    def colour(a: str) -> str:
        if a in REFERENCE_ARMS:
            return {"random": "#999999", "logging": "#1f77b4", "oracle": "#2ca02c",
                    "oracle_lt": "#17becf"}[a]  # fmt: skip
        return "#ff7f0e" if a.endswith("@T") else "#d62728"

    # ACN per arm with the interval of the mean
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(arms) + 1.5))
    v = [agg["online"][a]["clicks_per_user"]["value"] for a in arms]
    y = np.arange(len(arms))[::-1]
    means = np.array([x["mean"] for x in v])
    err = np.array([[x["mean"] - x["low"], x["high"] - x["mean"]] for x in v]).T
    ax.barh(y, means, xerr=err, color=[colour(a) for a in arms], capsize=3)
    ax.set_yticks(y, arms)
    err = np.nan_to_num(err)  # one user: no interval
    ax.axvline(agg["online"]["logging"]["clicks_per_user"]["value"]["mean"], ls="--",
               color="#1f77b4", lw=1, label="logging policy")  # fmt: skip
    ax.legend(fontsize=8, loc="lower right")
    for yi, m, top in zip(y, means, means + err[1], strict=True):
        ax.text(top, yi, f"  {m:.2f}", va="center", fontsize=8)
    ax.set_xlabel("clicks per user (ACN), mean over seeds, 95% interval")
    ax.set_title(f"Online ACN per arm ({len(agg['seeds'])} seeds)")
    ax.set_xlim(0, float((means + err[1]).max()) * 1.15)
    save_figure(fig, out / names["acn"])

    # AUC per model with std over seeds
    fig, ax = plt.subplots(figsize=(8, 3.8))
    models = list(cfg.models)
    m_auc = np.array([agg["offline"][m]["auc"][0] for m in models])
    s_auc = np.nan_to_num(np.array([agg["offline"][m]["auc"][1] for m in models]))  # 1 seed
    x = np.arange(len(models))
    ax.bar(x, m_auc, yerr=s_auc, capsize=3,
           color=["#9467bd" if m == "bc" else "#d62728" for m in models])  # fmt: skip
    for xi, m, s_ in zip(x, m_auc, s_auc, strict=True):
        ax.text(xi, m + s_, f"{m:.4f}", ha="center", va="bottom", fontsize=7)
    lo = max(0.5, float(np.nanmin(m_auc - s_auc)) - 0.01)
    hi = float(np.nanmax(m_auc + s_auc)) + 0.012
    ax.set_ylim(lo, hi)
    if lo <= 0.5:
        chance_line(ax)
    else:
        ax.plot([], [], " ", label=f"chance (AUC 0.5) is below the axis (from {lo:.2f})")
    ax.legend(fontsize=8)
    ax.set_xticks(x, models, rotation=30, ha="right")
    ax.set_ylabel("test click AUC (mean ± std over seeds)")
    ax.set_title("Offline click AUC per model")
    save_figure(fig, out / names["auc"])

    # relative change vs logging for three headline metrics
    mets = ["clicks_per_user", "watch_time_per_session", "depth_per_session"]
    others = [a for a in arms if a != "logging"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(mets)
    xx = np.arange(len(others))
    for i, m in enumerate(mets):
        r = [agg["online"][a][m]["rel"] for a in others]
        mean = np.array([q["mean"] for q in r])
        e = np.array([[q["mean"] - q["low"], q["high"] - q["mean"]] for q in r]).T
        ax.bar(xx + (i - 1) * width, mean, width, yerr=np.nan_to_num(e), capsize=2,
               label=ONLINE_METRICS[m])  # fmt: skip
    reference_line(ax, 0.0, "logging policy (no change)", color="black", style="-")
    ax.set_xticks(xx, others, rotation=30, ha="right")
    ax.set_ylabel("% change vs logging (95% interval)")
    ax.set_title("Online: relative change vs the logging policy")
    ax.legend(fontsize=8)
    save_figure(fig, out / names["relative"])

    # NCIS vs online per policy
    pols = list(agg["ncis"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, p in enumerate(pols):
        for j, (key, c, lab) in enumerate(
            [("ncis", "#ff7f0e", "NCIS (test logs)"), ("online", "#1f77b4", "online truth")]
        ):
            q = agg["ncis"][p][key]
            ax.errorbar(i + (j - 0.5) * 0.25, q["mean"],
                        yerr=[[q["mean"] - q["low"]], [q["high"] - q["mean"]]], fmt="o",
                        color=c, capsize=4, label=lab if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(pols)), pols)
    ax.set_ylabel("clicks per request (95% interval)")
    ax.set_title("Off-policy NCIS vs the online value")
    ax.legend(fontsize=8)
    save_figure(fig, out / names["ncis"])
    return names
