"""Sections of the DRL-Rec report beyond the paper's tables: what the policies place, the negative
control, the variants (KL temperature, per-request discount), the student-teacher gaps,
diagnostics and timing."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from training.drl.report.plan import (
    ReportConfig,
    world_config,
)
from training.harness.render import (
    ci,
    mmss,
    para,
    pm,
)

# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def variants_section(w: Callable[[str], None], agg: Mapping[str, Any], cfg: ReportConfig) -> None:
    tau, hz = agg["tau"], agg["horizon"]
    has_tau = not math.isnan(tau["student"][0])
    if not has_tau and not hz.get("base") and not hz.get("control"):
        return
    para(w, "## Variants beyond the paper: the KL temperature and a per-request discount")
    para(
        w,
        "Two findings of the runs above, each tested with one more run per seed. Neither changes "
        "the headline configuration (METHODS.md: tau = 10, gamma per slot), and nothing here is "
        "chosen on the test split: these rows say *why* two of the paper's effects are absent.",
    )
    base_t = cfg.drl_config(0).temperature
    if has_tau:
        para(w, f"### The list-wise KL at tau = {tau['tau']:g}")
        w("| run | student AUC | KL / TD (last window, mean over seeds) | Δ AUC vs no KL |")
        w("|---|---:|---:|---:|")
        kr = tau["kl_over_td"]
        t4 = agg["table4"]
        drl_auc = t4.get("drl", {}).get("auc")
        w(f"| DRL-Rec, tau = {base_t:g} (`drl`) | {pm(drl_auc) if drl_auc else 'n/a'} | "
          f"{_sci(kr.get('drl'))} | {ci(tau['drl_vs_no_kl'])} |")  # fmt: skip
        tau_run = f"tau{tau['tau']:g}"
        para(w, f"| DRL-Rec, tau = {tau['tau']:g} (`{tau_run}`) | {pm(tau['student'])} | "
          f"{_sci(kr.get(tau_run))} | {ci(tau['vs_no_kl'])} |")  # fmt: skip
        para(
            w,
            f"tau = {tau['tau']:g} minus tau = {base_t:g}: {ci(tau['vs_drl'])} (paired, pooled "
            "over seeds). With the tau^2 factor the KL is, for small differences, about half "
            "the variance over the list of Q_teacher - Q_student whatever tau (tau only "
            "reweights the list's items), so a smaller tau does not make the term larger; the "
            "last column says whether distillation through it moves the student's AUC.",
        )
    b, c = hz.get("base"), hz.get("control")
    if b or c:
        gamma = cfg.drl_config(0).gamma
        k = world_config(cfg, agg["seeds"][0], "base").list_size
        para(w, "### Discounting per request instead of per slot")
        para(
            w,
            f'`DRLConfig.discount = "request"`: no discount between the slots of one request, '
            f"gamma = {gamma:g} where the next state is the session's next request (terminal at "
            "the session's end). Q(s_t, a) then values the rest of the list plus "
            f"{gamma:g} x the next request's value, instead of weighing the next request by "
            f"{gamma:g}^{k} = {gamma**k:.0e}. The leave hazard and cross-request fatigue act "
            "exactly there. `request_gamma0` keeps the list's own future and drops the next "
            "request: the pair isolates the cross-request term.",
        )
        auc = hz.get("auc", {})
        if auc:
            w("| run | discount | gamma | student AUC |")
            w("|---|---|---:|---:|")
            for run, disc, g in (("drl", "slot", gamma), ("gamma0", "slot", 0.0),
                                 ("request_gamma0.4", "request", 0.4),
                                 ("request_gamma0", "request", 0.0)):  # fmt: skip
                a = auc.get(run)
                shown = pm(a) if a and not math.isnan(a[0]) else "n/a"
                w(f"| `{run}` | {disc} | {g:g} | {shown} |")
            if hz.get("auc_vs_drl"):
                w("")
                w(f"Offline, request_gamma0.4 minus drl (student): {ci(hz['auc_vs_drl'])}.")
            w("")
        for t, title in ((b, "full world"), (c, "long-term-off world (the control)")):
            if not t:
                continue
            w(f"Online, {title}: seeds {', '.join(map(str, t['seeds']))}; relative ACN changes "
              "paired per user, pooled over seeds.")  # fmt: skip
            w("")
            w("| comparison | ACN change |")
            w("|---|---:|")
            for who in ("student", "teacher"):
                if who in t:
                    verdict = ""
                    if t is c:
                        verdict = " (holds)" if t[who]["holds"] else " (violated)"
                    w(f"| {who}: request gamma 0.4 vs request gamma 0 | "
                      f"{ci(t[who], 2, True)}{verdict} |")  # fmt: skip
            if "request_vs_slot" in t:
                w(f"| student: request gamma 0.4 vs slot gamma 0.4 (the paper's) | "
                  f"{ci(t['request_vs_slot'], 2, True)} |")  # fmt: skip
            if "request0_vs_slot0" in t:
                w(f"| student: request gamma 0 vs slot gamma 0 | "
                  f"{ci(t['request0_vs_slot0'], 2, True)} |")  # fmt: skip
            w("")
            w("| arm | ACN | vs logging |")
            w("|---|---:|---:|")
            for a, r in t["acn"].items():
                w(f"| {a} | {ci(r, 3, sign=False)} | {ci(t['vs_logging'][a], 2, True)} |")
            w("")


def slate_truth_section(w: Callable[[str], None], agg: Mapping[str, Any]) -> None:
    t = agg.get("slate_truth")
    if not t:
        return
    para(w, "### What the policies place: the first list of a session, by the world's truth")
    para(
        w,
        f"The same first requests of the test day (users of the online population; "
        f"{', '.join(f'{n:,}' for n in t['requests'])} requests per seed) ranked by each policy, "
        "the placed items scored by the world: click probability at their slot, mean "
        "satisfaction logit (it drives the leave hazard after each request) and the share of "
        "clickbait items (high appeal, low satisfaction). Mean ± std over seeds "
        f"{', '.join(map(str, t['seeds']))}. Oracles are greedy on the truth: `click_oracle` on "
        "the click probability, `long_term_oracle` on click + 0.1 satisfaction.",
    )
    w("| policy | p(click) | satisfaction logit | clickbait share |")
    w("|---|---:|---:|---:|")
    for arm, r in t["rows"].items():
        w(f"| {arm} | {pm(r['p_click'], 3)} | {pm(r['satisfaction'], 2)} | "
          f"{pm(r['clickbait'], 3)} |")  # fmt: skip
    w("")


def _sci(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1e}"


def control_section(w: Callable[[str], None], agg: Mapping[str, Any], cfg: ReportConfig) -> None:
    para(w, "## Negative control: future rewards without long-term mechanisms")
    ctl = agg["control"]
    if not ctl:
        para(w, "Not run.")
        return
    para(
        w,
        "World: the same preset with drift, cross-request fatigue and the satisfaction-dependent "
        "leave hazard switched off (`long_term_off`): nothing a ranking does now changes later "
        "requests, so valuing future rewards (gamma 0.4) has nothing to gain over gamma 0. Both "
        "DRL-Rec runs trained on that world's logs, compared online on its test day(s); relative "
        f"change of ACN (paired per user, pooled over seeds {', '.join(map(str, ctl['seeds']))}).",
    )
    w("| comparison | ACN change | verdict |")
    w("|---|---:|---|")
    for who in ("student", "teacher"):
        r = ctl[who]
        v = "holds (gamma 0.4 not better)" if r["holds"] else "violated (gamma 0.4 better)"
        w(f"| {who}: gamma 0.4 vs gamma 0 | {ci(r, 2, True)} | {v} |")
    on = agg["online"]
    if on and "gamma_full_world" in on:
        w(
            f"| contrast, full world: student gamma 0.4 vs gamma 0 | "
            f"{ci(on['gamma_full_world'], 2, True)} | (the same comparison with the mechanisms "
            "on) |"
        )
    w("")
    w("| arm (long-term-off world) | ACN |")
    w("|---|---:|")
    for arm, r in ctl["acn"].items():
        w(f"| {arm} | {ci(r, 3, sign=False)} |")
    w("")
    gamma = cfg.drl_config(0).gamma
    k = world_config(cfg, agg["seeds"][0], "base").list_size
    para(
        w,
        f"Horizon: gamma discounts per slot (the last slot's next state is the next request's "
        f"first slot), so a reward one request ({k} slots) ahead weighs gamma^{k} = "
        f"{gamma**k:.1e} and the effective horizon 1 / (1 - gamma) is {1 / (1 - gamma):.2g} slots. "
        "The world's long-term mechanisms act across requests and sessions (the leave hazard "
        "after each request, cross-request fatigue, drift between sessions), mostly beyond what "
        "gamma 0.4 weighs; the contrast row shows how much it gains where they are on.",
    )


def gap_section(w: Callable[[str], None], agg: Mapping[str, Any]) -> None:
    if not agg["gaps"]:
        return
    para(w, "## Student minus teacher, per variant")
    para(
        w,
        "Paired AUC difference (student - teacher of the same run) in every DRL-Rec variant: "
        "where the distilled student overtakes its teacher, and which switch moves the gap.",
    )
    w("| run | student - teacher | seeds |")
    w("|---|---:|---:|")
    for g in agg["gaps"]:
        w(f"| {g['run']} | {ci(g)} | {len(g['seeds'])} |")
    w("")


def diagnostics_section(w: Callable[[str], None], agg: Mapping[str, Any], seeds: Sequence[int]):
    para(w, "## Training diagnostics (last logged window, first seed)")
    s = seeds[0]
    runs = agg["collected"][s]["runs"]
    keys = ["losses/td_teacher", "losses/td_student", "losses/kl", "losses/hint",
            "charts/confidence", "charts/q_teacher", "charts/q_student"]  # fmt: skip
    w("| run | steps | " + " | ".join(k.split("/")[1] for k in keys) + " |")
    w("|---|---:|" + "---:|" * len(keys))
    for name, info in runs.items():
        hist = info.get("history") or []
        if not hist or "losses/td_teacher" not in hist[-1]:
            continue
        last = hist[-1]
        w(f"| {name} | {info.get('steps', '')} | "
          + " | ".join(f"{last.get(k, math.nan):.4g}" for k in keys) + " |")  # fmt: skip
    w("")


def timing_section(w: Callable[[str], None], agg: Mapping[str, Any], cfg: ReportConfig,
                    seeds: Sequence[int], wall: float | None) -> None:  # fmt: skip
    para(w, "## Timing")
    tm = agg["timing"]
    para(w, f"Seconds per run as recorded when it ran (torch on {cfg.threads} thread, device "
      f"`{cfg.device}`; mean over the seeds that ran it):")  # fmt: skip
    w("| run | train | eval | instances/s | seeds |")
    w("|---|---:|---:|---:|---:|")
    for name, r in tm["per_run"].items():
        w(
            f"| {name} | {mmss(np.mean(r['train']))} | {mmss(np.mean(r['eval']))} | "
            f"{np.mean(r['ips']):,.0f} | {len(r['train'])} |"
        )
    w("")
    para(
        w,
        f"Total recorded compute (runs, online tests, datasets generated here): "
        f"**{mmss(tm['total_seconds'])}**"
        + (f"; wall clock of the command that wrote this report: {mmss(wall)}" if wall else "")
        + ".",
    )
