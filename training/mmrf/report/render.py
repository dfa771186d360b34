"""The MMRF report's Markdown and plots, from the aggregated numbers
(:func:`training.mmrf.report.claims.aggregate`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.schema import FEEDBACK
from training.harness.claims import failed_checks
from training.harness.render import (
    chance_line,
    ci,
    compact,
    findings_section,
    json_block,
    mmss,
    num,
    para,
    pm,
    pyplot,
    reference_line,
    save_figure,
    status,
)
from training.harness.runfolder import write_json, write_text
from training.mmrf.report.claims import (
    aggregate,
    claims,
    findings,
    relative_bars,
    sanity_checks,
)
from training.mmrf.report.measures import ONLINE_FIELDS
from training.mmrf.report.plan import CONTROL, TABLE1_ROWS, MMRFReportConfig

PLOTS = ("online_vs_ltr.png", "feedback_auc.png", "kl_by_exposure.png")


def _cell(x: Mapping[str, Any], d: int = 4) -> str:
    return ci(x, d, sign=False)


def _sig(x: Mapping[str, Any], d: int = 3) -> str:
    return ci(x, fmt=lambda v: compact(v, d))


def _table1(w: Any, t1: Mapping[str, Any], measure: str) -> None:
    w("| row | " + " | ".join(FEEDBACK) + " |")
    w("|---|" + "---|" * len(FEEDBACK))
    best = {
        a: max(
            (r for r in TABLE1_ROWS if np.isfinite(t1[r][a][measure]["mean"])),
            key=lambda r: t1[r][a][measure]["mean"],
            default=None,
        )
        for a in FEEDBACK
    }
    for r in TABLE1_ROWS:
        cells = []
        for a in FEEDBACK:
            x = t1[r][a][measure]
            c = _cell(x) if measure == "gauc" else _sig(x)
            cells.append(f"**{c}**" if best[a] == r else c)
        w(f"| {r} | " + " | ".join(cells) + " |")
    w("")


def plots(agg: Mapping[str, Any], out: Path) -> None:
    """The three PNGs of :data:`PLOTS` into ``out``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(ONLINE_FIELDS), figsize=(4 * len(ONLINE_FIELDS), 3.8))
    for ax, metric in zip(axes, ONLINE_FIELDS, strict=True):
        bars = relative_bars(agg["table2"], metric)
        names = list(bars)
        m = np.array([bars[a][0] for a in names])
        lo = np.array([bars[a][1] for a in names])
        hi = np.array([bars[a][2] for a in names])
        err = np.nan_to_num(np.vstack([m - lo, hi - m]))
        ax.bar(names, m, yerr=err, capsize=3, color="tab:blue", label="vs LTR, 95% interval")
        if not np.isfinite(m).any():
            ax.text(0.5, 0.5, f"undefined: no {metric} in the LTR arm", ha="center",
                    transform=ax.transAxes)  # fmt: skip
        reference_line(ax, 0.0, "LTR control")
        ax.set_title(f"{metric} per user")
        ax.set_ylabel("relative change (%)")
        ax.tick_params(axis="x", labelrotation=45)
        ax.legend(fontsize=7)
    save_figure(fig, out / PLOTS[0])

    fb = agg["feedback"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    aspects = [a for a in fb["impressions_auc"]]
    x = np.arange(len(aspects))
    series = (
        ("held-out impressions", fb["impressions_auc"]),
        ("non-impressed (truth labels)", fb["probe"]["non_impressed"]["auc"]),
        ("truth itself (ceiling)", fb["probe"]["non_impressed"]["truth_auc"]),
    )
    for i, (label, d) in enumerate(series):
        ax.bar(x + (i - 1) * 0.27, [d.get(a, (np.nan,))[0] or np.nan for a in aspects], 0.27,
               label=label)  # fmt: skip
    chance_line(ax)
    ax.set_xticks(x, aspects)
    ax.set_ylim(0.3, 1.0)
    ax.set_ylabel("AUC")
    ax.set_title("Feedback model M: AUC per aspect")
    ax.legend(fontsize=7)
    save_figure(fig, out / PLOTS[1])

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for g, b in (
        ("non-impressed (probe)", fb["kl_by_exposure"]["non_impressed"]),
        ("impressed (probe)", fb["kl_by_exposure"]["impressed"]),
        ("held-out impressions", fb["kl_by_exposure_impressions"]),
    ):
        ax.plot([x["label"] for x in b], [x["kl"][0] for x in b], marker="o", label=g)
    ax.set_xlabel("item impressions in the training split")
    ax.set_ylabel("mean KL(r || r') over aspects")
    ax.set_title("Uncertainty of M against exposure")
    ax.legend(fontsize=7)
    save_figure(fig, out / PLOTS[2])


def build_report(summaries: Sequence[Mapping[str, Any]], cfg: MMRFReportConfig, out: Path,
                 preset_name: str, wall_seconds: float, command: str | None = None
                 ) -> tuple[Path, list]:  # fmt: skip
    """Write ``report.md``, ``summary.json`` and the plots; returns (report path, failed
    undeclared sanity checks)."""
    agg = aggregate(summaries)
    cl = claims(agg)
    checks = sanity_checks(agg)
    found = findings(agg, cl, checks, cfg.expected_findings)
    plots(agg, out)
    lines: list[str] = []
    w = lines.append
    para(w, "# MMRF report: Table 1 and Table 2 analogues, the feedback model")
    para(
        w,
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; preset "
        f"`{preset_name}`, world `{cfg.world_preset}`, seeds {agg['seeds']}; wall time "
        f"{mmss(wall_seconds)}" + (f"; command `{command}`" if command else "") + ".",
    )
    findings_section(w, found)
    para(w, "## Claims")
    w("| claim | paper | measured | status |")
    w("|---|---|---|---|")
    for c in cl:
        w(f"| `{c['id']}`: {c['claim']} | {c['paper']} | {c['measured']} | {status(c['status'])} |")
    w("")
    para(w, "## Sanity checks")
    for c in checks:
        v = "not run" if c["ok"] is None else ("PASS" if c["ok"] else "FAIL")
        w(f"- `{c['id']}`: {c['check']}: {status(v)} ({c['detail']})")
    w("")
    para(
        w,
        "## Choices (validation split only)",
        f"Eq. 6's lambda from {list(cfg.lambdas)} by the served score's correlation with watch "
        f"time on the valid split: chosen {agg['lambda']} (per seed), also used by MMRF-CO. "
        "Checkpoints: the last of each run (none is chosen on test). Learning rates: "
        "MMRFConfig's defaults, not tuned. Point-wise rows: the epoch with the best valid loss; "
        "LTR: the iteration with the best valid NDCG; NCIS temperature and cap: the largest "
        "valid ESS. Test data is read only for the figures below.",
    )
    para(
        w,
        "## Table 1 analogue: offline, test split",
        "GAUC per aspect (hate: of the negated score; watch time: above the sample's median) "
        "and NCIS per aspect (per request, the aspect summed over the slate; watch time in "
        "seconds) of each row as a softmax policy. Mean over seeds [95% t interval, clipped to "
        "the quantity's range]; the best "
        "row of each column in bold. BC imitates the logging policy; Wide&Deep and DeepFM are "
        "the feedback-weighted ones; LTR (the online control) is an extra row.",
    )
    para(w, "GAUC:")
    _table1(w, agg["table1"], "gauc")
    para(w, "NCIS:")
    _table1(w, agg["table1"], "ncis")
    para(
        w,
        "## Table 2 analogue: simulated online A/B test against the LTR control",
        "Per user on the test days (fresh sessions, the same users in every arm): mean "
        "[95% interval], and the relative change against the LTR control and against the "
        "logging policy (paired, log-ratio interval), pooled over seeds. Depth: impressions "
        "per user.",
    )
    w("| arm | " + " | ".join(f"{m} | {m} vs LTR" for m in ONLINE_FIELDS)
      + " | watch time vs logging |")  # fmt: skip
    w("|---|" + "---|---|" * len(ONLINE_FIELDS) + "---|")
    for a, row in agg["table2"].items():
        cells = [f"{_sig(row[m]['value'])} | {ci(row[m][f'vs_{CONTROL}'], 2, as_pct=True)}"
                 for m in ONLINE_FIELDS]  # fmt: skip
        w(f"| {a} | " + " | ".join(cells)
          + f" | {ci(row['watch_time']['vs_logging'], 2, as_pct=True)} |")  # fmt: skip
    w("")
    b = agg["table2"].get("mmrf_bundle", {}).get("watch_time", {}).get("vs_mmrf")
    if b:
        para(
            w,
            "`mmrf_bundle` is MMRF's actor exported to ONNX and ranked by the runtime's list "
            "builder (what the service serves as `mmrf_watchtime`); its watch time per user "
            f"against the torch actor `mmrf`: {ci(b, 2, as_pct=True)}.",
        )
    w(f"![online vs LTR]({PLOTS[0]})")
    w("")
    fb = agg["feedback"]
    para(
        w,
        "## The feedback model M (MMRF's chosen run)",
        "Per-aspect AUC on the test split's logged impressions; on the probe's candidates "
        "(logging-policy sessions of the test days, every candidate scored at slot 0) against "
        "labels drawn from the world's expected responses, which a real system never sees "
        "(long_view has no expectation in the simulator). Watch time on the model scale "
        "(min(w / cap, 1)).",
    )
    aspects = list(fb["impressions_auc"])
    w("| | " + " | ".join(aspects) + " |")
    w("|---|" + "---|" * len(aspects))
    for label, d in (
        ("held-out impressions", fb["impressions_auc"]),
        ("non-impressed vs truth", fb["probe"]["non_impressed"]["auc"]),
        ("impressed vs truth", fb["probe"]["impressed"]["auc"]),
        ("truth itself, non-impressed", fb["probe"]["non_impressed"]["truth_auc"]),
    ):
        w(f"| {label} | " + " | ".join(pm(d.get(a)) for a in aspects) + " |")
    w("")
    para(
        w,
        f"Watch time on held-out impressions: MSE {pm(fb['watch_time_mse'], 5)}, "
        f"correlation {pm(fb['watch_time_corr'])}; correlation of M with the truth on "
        "non-impressed candidates: "
        + ", ".join(f"{a} {pm(v)}" for a, v in fb["probe"]["non_impressed"]["corr"].items())
        + ".",
    )
    para(
        w,
        "Uncertainty (KL(r || r'), mean over aspects) by the item's impressions in the "
        "training split:",
    )
    w("| exposure | non-impressed (n) | impressed (n) | held-out impressions (n) |")
    w("|---|---|---|---|")
    for i, b in enumerate(fb["kl_by_exposure"]["non_impressed"]):
        cells = [f"{pm(x[i]['kl'], 5)} ({sum(x[i]['n']):,})" for x in (
            fb["kl_by_exposure"]["non_impressed"], fb["kl_by_exposure"]["impressed"],
            fb["kl_by_exposure_impressions"])]  # fmt: skip
        w(f"| {b['label']} | " + " | ".join(cells) + " |")
    w("")
    w(f"![feedback AUC]({PLOTS[1]}) ![KL by exposure]({PLOTS[2]})")
    w("")
    st = agg["stage_seconds"]
    para(w, "## Timing", "Seconds per seed of each stage, as recorded by the run that did it "
         "(a `--resume` reuses finished work and keeps its times): " + "; ".join(
             f"{k} " + ", ".join(num(x[k], 0) for x in st) for k in st[0])
         + f". This command: {mmss(wall_seconds)}.")  # fmt: skip
    json_block(w, "Config", cfg.to_dict())
    path = out / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    write_json(
        out / "summary.json",
        {
            "config": cfg.to_dict(),
            "preset": preset_name,
            "aggregate": agg,
            "claims": cl,
            "checks": checks,
            "findings": found,
            "wall_seconds": wall_seconds,
            "code_version": summaries[0].get("code_version"),
        },
    )
    return path, failed_checks(checks, cfg.expected_findings)
