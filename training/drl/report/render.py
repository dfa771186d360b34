"""Rendering the DRL-Rec report: Markdown sections and plots from :func:`.aggregate.aggregate`'s
numbers (formatting helpers from :mod:`training.harness.render`)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from training.data.pipeline import code_version
from training.drl.report.aggregate import (
    aggregate,
    loss_sizes,
    table2_keys,
)
from training.drl.report.beyond import (
    control_section,
    diagnostics_section,
    gap_section,
    slate_truth_section,
    timing_section,
    variants_section,
)
from training.drl.report.claims import findings, sanity_checks
from training.drl.report.plan import (
    ABLATIONS,
    LONG_TERM_OFF_KEYS,
    PAPER,
    RATIO_TOLERANCE,
    VERSION,
    ReportConfig,
    build_plan,
    world_config,
)
from training.drl.report.plots import write_plots
from training.harness.claims import failed_checks
from training.harness.data import world_fingerprint
from training.harness.render import (
    ci,
    findings_section,
    json_block,
    num,
    para,
    pm,
    status,
)
from training.harness.runfolder import (
    jsonable,
    write_json,
    write_text,
)

# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def _claim_ours(c: Mapping[str, Any]) -> str:
    if "ours" in c:
        return str(c["ours"])
    if c.get("diff"):
        d = c["diff"]
        return f"Δ AUC {ci(d)} (seeds agreeing {c['agree']}/{c['seeds']})"
    if c["id"] == "fig4a" and "drop_50_to_25" in c:
        return (
            f"drop 50%→25%: {c['drop_50_to_25']:+.4f}; largest step 87.5%..50%: "
            f"{c['max_step_87_to_50']:.4f}"
        )
    if c["id"] == "fig4b" and "best" in c:
        return f"best at {c['best']}"
    if c["id"] == "n_explore" and "mean" in c:
        return f"AUC(1000) - AUC(100) = {c['mean']:+.4f}"
    return "n/a"


def build_report(
    cfg: ReportConfig,
    seeds: Sequence[int],
    runs_root: str | Path,
    out: str | Path,
    preset_name: str,
    wall_seconds: float | None = None,
    command: str | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Write ``report.md``, the PNG plots and ``summary.json`` into ``out``; returns the report's
    path and the failed sanity checks that ``cfg.expected_findings`` does not declare."""
    runs_root, out = Path(runs_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = build_plan(cfg, seeds)
    agg = aggregate(cfg, seeds, runs_root, plan)
    plots = write_plots(agg, cfg, out)
    lines: list[str] = []
    w = lines.append
    seeds_s = ", ".join(map(str, seeds))
    para(w, f"# DRL-Rec report: `{preset_name}` world, seeds {seeds_s}")
    findings_section(w, findings(agg))
    para(w, "## Setup")
    w(f"- Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `{command or 'ranker drl-report'}`")
    versions = sorted({i.get("code_version", "?") for s in seeds
                       for i in agg["collected"][s]["runs"].values()} - {"?"})  # fmt: skip
    w(f"- Code version: `{code_version()}`" + (f" (runs: {', '.join(versions)})" if versions
                                                 else ""))  # fmt: skip
    w(f"- Run folders: `{runs_root}` (checkpoints, per-run train.json, scores, online sessions)")
    wc = world_config(cfg, seeds[0], "base")
    w(f"- World: preset `{cfg.world_preset}`: {wc.n_users:,} users, {wc.n_items:,} items, "
      f"{wc.n_days} days (the last is the test day), {wc.n_candidates} candidates per request, "
      f"lists of {wc.list_size}")  # fmt: skip
    w(f"- Training budget per run: **{cfg.budget:,} real instances** (logged impressions; "
      f"`max_instances` {cfg.max_instances:,} x scale {cfg.scale:g}), one pass, the same stream "
      "for every model; point-wise models see the same number of impressions")  # fmt: skip
    w(f"- Input exploration candidates: **{cfg.n_explore}** in every run except the sweep. The "
      "paper's default is 1000; 100 keeps CPU training 2-3x faster. The sweep covers "
      "100/500/1000.")  # fmt: skip
    sweep_on = sorted({s for s in seeds for r in plan[s] if r.group == "sweeps"})
    w(f"- Fig. 4 sweeps run on seed(s) {', '.join(map(str, sweep_on)) or 'none'} only "
      "(time budget); Tables 2-4, online and the control on every seed.")  # fmt: skip
    n_test = sorted({i["eval"]["impressions"] for s in seeds
                     for i in agg["collected"][s]["runs"].values()
                     if i.get("spec", {}).get("world") == "base"})  # fmt: skip
    w(f"- Offline test sample: {', '.join(f'{n:,}' for n in n_test) or 'n/a'} impressions per "
      f"seed (whole users of the test day drawn at random; `test_impressions` "
      f"{cfg.test_impressions:,}, 0 = all). No choice is made on the test split.")  # fmt: skip
    w("")
    para(w, "## Claims of the paper, as measured here")
    w("Sign claims are **reproduced** when the mean over seeds has the paper's sign and every "
      "seed agrees; Δ is a paired AUC difference on the same test impressions, its 95% interval "
      "from a user-cluster bootstrap pooled over seeds. Cost ratios are reproduced within "
      f"{RATIO_TOLERANCE:.0%} (relative) of the paper's.")  # fmt: skip
    w("")
    w("| claim | paper | ours | status |")
    w("|---|---|---|---|")
    for c in agg["claims"]:
        w(f"| {c['claim']} | {c['paper']} | {_claim_ours(c)} | {status(c['status'])} |")
    ctl = agg["control"]
    if ctl:
        st = "**holds**" if ctl["student"]["holds"] else "**violated**"
        w(
            f"| Negative control: with the long-term mechanisms off, gamma 0.4 does not beat "
            f"gamma 0 online (student ACN) | (ours) | {ci(ctl['student'], 2, as_pct=True)} | {st} |"
        )
    w("")
    checks = sanity_checks(agg)
    failed = failed_checks(checks, cfg.expected_findings)
    para(w, "## Sanity checks")
    w("A failed check makes `ranker drl-report` exit non-zero unless the report config declares "
      "it an expected finding (`--budget expected_findings=<id>,...`).")  # fmt: skip
    w("")
    w("| check | id | result | detail |")
    w("|---|---|---|---|")
    for c in checks:
        res = "PASS" if c["ok"] else ("expected finding" if c["id"] in cfg.expected_findings
                                      else "FAIL")  # fmt: skip
        w(f"| {c['check']} | `{c['id']}` | {status(res)} | {c['detail']} |")
    if not checks:
        w("| (no check has its runs yet) | | | |")
    w("")
    _table2_section(w, agg)
    _table4_section(w, agg, plots)
    _fig4_section(w, agg, cfg, plots)
    _table3_section(w, agg, cfg)
    slate_truth_section(w, agg)
    control_section(w, agg, cfg)
    variants_section(w, agg, cfg)
    gap_section(w, agg)
    diagnostics_section(w, agg, seeds)
    timing_section(w, agg, cfg, seeds, wall_seconds)
    para(w, "## Configuration")
    json_block(w, "Report config", cfg.to_dict())
    json_block(w, "DRL-Rec base config (seed 0; each run overrides one field)",
               dataclasses.asdict(cfg.drl_config(0)), indent=None)  # fmt: skip
    hrl = json.dumps(dataclasses.asdict(cfg.hrl_config(0)), sort_keys=True)
    para(w, f"HRL-Rec config: `{hrl}`")
    para(w, "Runs per seed: " + "; ".join(f"seed {s}: {len(plan[s])}" for s in seeds)
      + ". Negative-control world overrides: "
      + ", ".join(f"`{k}=false`" for k in LONG_TERM_OFF_KEYS) + ".")  # fmt: skip
    analysis = out / "analysis.md"
    if analysis.exists():
        para(w, "## Analysis (hand-written, `analysis.md`)")
        para(w, analysis.read_text().strip())
    path = out / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    small = {k: v for k, v in agg.items() if k != "collected"}
    small.update({"version": VERSION, "preset": preset_name, "config": cfg.to_dict(),
                  "drl_config": dataclasses.asdict(cfg.drl_config(0)),
                  "world": world_fingerprint(wc), "code_version": code_version(),
                  "sanity_checks": checks, "findings": findings(agg),
                  "run_code_versions": versions, "wall_seconds": wall_seconds,
                  "runs_root": str(runs_root), "plots": plots})  # fmt: skip
    small["compression_cost"] = {str(k): v for k, v in small["compression_cost"].items()}
    small["sweep_means"] = {k: {str(a): b for a, b in v.items()}
                            for k, v in small["sweep_means"].items()}  # fmt: skip
    write_json(out / "summary.json", jsonable(small))
    return path, failed


def _table2_section(w: Callable[[str], None], agg: Mapping[str, Any]) -> None:
    para(w, "## Table 2 analogue: offline click AUC (test sample)")
    w("RelaImpr over FM per seed, then mean ± std over seeds. Scores: the predicted click logit "
      "(point-wise), Q(s_t, a_t) of the logged impression (teacher, student), the actor's "
      "ranking score <mu(s_t), W a_t> (HRL-Rec).")  # fmt: skip
    w("")
    w("| model | AUC (ours) | RelaImpr (ours) | AUC (paper) | RelaImpr (paper) | seeds |")
    w("|---|---:|---:|---:|---:|---:|")
    for key, _, _, title in table2_keys():
        r = agg["table2"].get(key)
        p = PAPER["table2"][key]
        if not r or not r["seeds"]:
            w(f"| {title} | n/a | n/a | {p[0]:.4f} | {p[1]:.2f}% | 0 |")
            continue
        ri = r["relaimpr"]
        w(
            f"| {title} | {pm(r['auc'])} | {pm(ri, 2)} % | {p[0]:.4f} | "
            f"{p[1]:.2f}% | {len(r['seeds'])} |"
        )
    ce = agg.get("ceiling") or {}
    if ce.get("per_seed"):
        w(
            f"| *Ceiling: the world's own click probability* | {pm(ce['auc'])} | | | | "
            f"{len(ce['per_seed'])} |"
        )
    w("")
    if ce.get("per_seed"):
        cap = ce["captured"]
        best = max(cap, key=lambda k: cap[k][0]) if cap else None
        para(w,
            "The ceiling row is no model: it scores each test impression by its true click "
            "probability, recomputed by replaying the logging policy for the sample's users "
            "(training/eval/ceiling.py; the replay reproduces the logged impressions and clicks "
            f"exactly: {'yes' if ce['replay_matches_log'] else '**no**'}). No model can beat it "
            "in expectation. Share of the ceiling's lift over chance, (AUC - 0.5) / (ceiling - "
            "0.5): "
            + ", ".join(f"{k} {cap[k][0]:.1%}" for k in ("fm", "wide_deep", "teacher", "student")
                        if k in cap)
            + (f"; the best is {best} ({cap[best][0]:.1%})." if best else ".")
        )  # fmt: skip
    c = agg["hrl_critic_auc"]
    if not math.isnan(c[0]):
        para(
            w,
            f"HRL-Rec's critic Q(s, W a) scores an AUC of {pm(c)} (its actor's ranking score is "
            "the table's number).",
        )


def _table4_section(w: Callable[[str], None], agg: Mapping[str, Any], plots: Mapping) -> None:
    para(w, "## Table 4 analogue: ablations")
    para(
        w,
        "Student AUC of each variant; Δ = variant - full DRL-Rec on the same impressions (paired, "
        "95% interval pooled over seeds). Each ablation changes one switch of the full run.",
    )
    w("| variant | student AUC | RelaImpr | Δ vs DRL-Rec | lower in seeds | teacher AUC | "
      "paper AUC | paper RelaImpr |")  # fmt: skip
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    t4 = agg["table4"]
    rows = [("drl", "DRL-Rec (full)")] + [(n, t) for n, (_, t) in ABLATIONS.items()]
    for n, title in rows:
        r = t4.get(n, {})
        p = PAPER["table4"][n]
        d = agg["ablation_diffs"].get(n)
        lower = f"{sum(x < 0 for x in d['per_seed'])}/{len(d['per_seed'])}" if d else ""
        if not r.get("seeds"):
            w(f"| {title} | n/a | n/a | n/a | | n/a | {p[0]:.4f} | {p[1]:.2f}% |")
            continue
        ri = r["relaimpr"]
        w(
            f"| {title} | {pm(r['auc'])} | {num(ri[0], 2)}% | {ci(d) if d else '—'} | {lower} | "
            f"{pm(r['teacher_auc'])} | {p[0]:.4f} | {p[1]:.2f}% |"
        )
    w("")
    para(
        w,
        "Without exploring and filtering a state's KL list holds the real item alone, so the KL "
        "term is 0 and distillation runs through the hint loss only (training/drl/train.py).",
    )
    sizes = loss_sizes(agg)
    if sizes:
        para(
            w,
            f"Loss sizes in the full run (first seed, last logged window): TD (student) "
            f"{sizes['td_student']:.3g}, hint {sizes['hint']:.3g}, KL {sizes['kl']:.3g} "
            f"(KL / TD = {sizes['kl_over_td']:.1e})."
            + (
                " The KL carries Hinton's tau^2 factor, so for small differences it is about "
                "half the variance, over a state's lesson list, of Q_teacher - Q_student, "
                "whatever tau: it is small because the student's Q lists already agree with "
                "the teacher's (both fit TD targets from the same batches), and switching it "
                "off can change little. The tau = 1 variant below checks that tau is not the "
                "reason."
                if sizes["kl_over_td"] < 1e-2
                else ""
            ),
        )
    if plots.get("ablations"):
        para(w, f"![Ablations]({plots['ablations']})")


def _fig4_section(w: Callable[[str], None], agg: Mapping[str, Any], cfg: ReportConfig,
                  plots: Mapping) -> None:  # fmt: skip
    para(w, "## Fig. 4 analogues: compression rate, filtered items, input candidates")
    para(
        w,
        "Every point on the seeds that ran the sweep; the base config's point (50%, k = 3, "
        f"{cfg.n_explore} inputs) is the full `drl` run on those seeds. Parameters and "
        "multiply-adds are the student's over the teacher's, counted from the architecture.",
    )
    cc = agg["compression_cost"]
    w("| compression | run | student AUC | teacher AUC | params (student/teacher) | "
      "MACs/request (student/teacher) | seeds |")  # fmt: skip
    w("|---:|---|---:|---:|---:|---:|---:|")
    for r in agg["sweeps"]["compression"]:
        c = cc.get(r["value"], {})
        w(
            f"| {r['value']:.1%} | {r['run']} | {pm(r['student'])} | {pm(r['teacher'])} | "
            f"{c.get('parameters', math.nan):.1%} | {c.get('macs', math.nan):.1%} | "
            f"{len(r['seeds'])} |"
        )
    w("")
    if plots.get("fig4a"):
        para(w, f"![Fig. 4a]({plots['fig4a']})")
    for key, title in (("n_filtered", "filtered items (top-k per network)"),
                       ("n_explore", "input exploration candidates")):  # fmt: skip
        w(f"| {title} | run | student AUC | teacher AUC | seeds |")
        w("|---:|---|---:|---:|---:|")
        for r in agg["sweeps"][key]:
            w(
                f"| {r['value']} | {r['run']} | {pm(r['student'])} | {pm(r['teacher'])} | "
                f"{len(r['seeds'])} |"
            )
        w("")
    if plots.get("fig4b"):
        para(w, f"![Fig. 4b]({plots['fig4b']})")
    w("The teacher gets no gradient from distillation, and its initialisation and batch stream "
      "do not depend on the compression rate or on k, so its AUC is the same across those "
      "sweeps (a check of the runs' determinism). The input-candidate count changes how many "
      "exploration draws the stream's generator makes, so from the stream's second chunk of "
      "sessions on the batches, and the teacher, differ.")  # fmt: skip
    w("")


def _table3_section(w: Callable[[str], None], agg: Mapping[str, Any], cfg: ReportConfig) -> None:
    para(w, "## Table 3 analogue: online A/B test and serving cost")
    on = agg["online"]
    if not on:
        para(w, "Online A/B: not run.")
    else:
        para(w, f"Simulated A/B test on the test day(s) {on['days']} with fresh sessions "
          f"(seed offset {cfg.online_seed_offset}), common random numbers across arms; "
          f"population {on['n_users'][0]:,} random users per seed (active: "
          f"{', '.join(map(str, on['active_users']))}; sessions: "
          f"{', '.join(map(str, on['n_sessions']))}). Greedy Q policies "
          "(training/eval/policies.py QPolicy). ACN = clicks per active user; relative changes "
          "are paired (per user), 95% intervals pooled over seeds "
          f"{', '.join(map(str, on['seeds']))}.")  # fmt: skip
        w("| arm | ACN | vs teacher | vs logging | clicks/session | depth/session |")
        w("|---|---:|---:|---:|---:|---:|")
        for arm, r in on["arms"].items():
            w(
                f"| {arm} | {ci(r['acn'], 3, sign=False)} | {ci(r['vs_teacher'], 2, True)} "
                f"| {ci(r['vs_logging'], 2, True)} | {pm(r['clicks_per_session'], 2)} | "
                f"{pm(r['depth_per_session'], 2)} |"
            )
        w("")
        para(
            w,
            f"Paper: DRL-Rec (student) vs the teacher: ACN **+1.38%**. Ours: "
            f"**{ci(on['student_vs_teacher'], 2, True)}**.",
        )
        if on.get("arm_seconds_ratio"):
            para(
                w,
                "Time of the online arms (all requests of a day ranked in batches, the simulator's "
                f"share included): student / teacher = {on['arm_seconds_ratio'][0]:.2f} "
                f"(mean over seeds; {', '.join(f'{x:.2f}' for x in on['arm_seconds_ratio'][1])}).",
            )
    cost = agg["cost"]
    if not cost:
        para(w, "Serving cost: not measured.")
        return
    t, s, r = cost["teacher"], cost["student"], cost["student_over_teacher"]
    para(w, f"Serving cost of one list of {cost['want']['k']} from {cost['want']['candidates']} "
      "candidates (benchmarks/drl_cost.py `measure`: cached state, k scorer calls and k state "
      f"steps; torch on the CPU, {cost['threads']} thread, one request at a time, fastest of "
      f"{cost['want']['rounds']} rounds of {cost['want']['requests']} requests; load average "
      f"{cost['load_average']:.1f}):")  # fmt: skip
    w("| | teacher | student | student / teacher | paper |")
    w("|---|---:|---:|---:|---:|")
    paper = PAPER["table3"]
    for key, title, pk in (
        ("parameters", "parameters", None),
        ("parameters_without_embeddings", "parameters without embeddings", None),
        ("bytes_in_memory", "bytes in memory", "memory"),
        ("bytes_on_disk", "bytes on disk", None),
        ("macs_per_request", "multiply-adds per request", None),
        ("ms_per_request", "ms per request (measured)", "computation"),
    ):
        pv = f"{paper[pk]:.1%}" if pk else ""
        w(f"| {title} | {t[key]:,} | {s[key]:,} | {r[key]:.1%} | {pv} |")
    w("")
    para(w, "Multiply-adds scale with width squared (every width halves at 50%), so they fall to "
      "about a quarter; measured time falls far less, because per-call overheads of small "
      "matrices dominate at this size. The paper's 76.7% 'computation' is closer to the "
      "measured-time ratio.")  # fmt: skip
