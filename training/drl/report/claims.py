"""Claims, sanity checks and findings of the DRL-Rec report: pure functions from the aggregated
numbers to verdicts and sentences (tested with made-up numbers in both directions)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from training.drl.report.plan import (
    ABLATIONS,
    PAPER,
    POINTWISE,
    RATIO_TOLERANCE,
)
from training.harness.claims import (
    NOT_REPRODUCED,
    NOT_RUN,
    REPRODUCED,
    check,
    direction_status,
    interval_status,
    ratio_status,
)
from training.harness.render import (
    ci,
    num,
)

# --------------------------------------------------------------------------------------------
# collecting and aggregating (pure functions first)
# --------------------------------------------------------------------------------------------


Diff = Callable[[tuple[str, str], tuple[str, str]], "dict[str, Any] | None"]


def compression_shape(aucs: Mapping[float, float]) -> dict[str, Any]:
    """Fig. 4a's shape: "stable from 87.5% to 50%, then a sharp drop to 25%".

    Parameter-free reading: the drop from 50% to 25% is positive and larger than every change
    between neighbouring rates from 87.5% to 50%. ``aucs``: compression rate -> AUC.
    """
    need = (0.875, 0.75, 0.625, 0.5, 0.25)
    if any(c not in aucs for c in need):
        return {"status": "not run"}
    upper = [aucs[c] for c in need[:4]]
    max_step = float(np.max(np.abs(np.diff(upper))))
    drop = float(aucs[0.5] - aucs[0.25])
    ok = drop > 0 and drop > max_step
    return {"status": "reproduced" if ok else "not reproduced", "drop_50_to_25": drop,
            "max_step_87_to_50": max_step}  # fmt: skip


def best_at(aucs: Mapping[Any, float], expected: Any) -> dict[str, Any]:
    """Claim "the best value of the sweep is ``expected``"."""
    if expected not in aucs or len(aucs) < 2:
        return {"status": "not run"}
    best = max(aucs, key=lambda k: aucs[k])
    return {"status": "reproduced" if best == expected else "not reproduced", "best": best}


def paper_claims(
    diff: Diff,
    table2: Mapping[str, Any],
    sweep_means: Mapping[str, Mapping[Any, float]],
    online: Mapping[str, Any] | None,
    cost: Mapping[str, Any] | None,
    horizon_control: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The paper's claims as verdicts on our numbers (a pure function of them).

    ``diff(a, b)``: the paired AUC difference ``a - b`` of two ``(run, score)`` pairs pooled
    over seeds (``per_seed``, ``mean``, ``low``, ``high``) or None; ``table2``: the Table 2
    rows (:func:`training.harness.stats.relaimpr_columns`); ``sweep_means``: sweep -> value ->
    mean student AUC; ``online``: :func:`_online_table`; ``cost``: the cost stage's result;
    ``horizon_control``: the per-request discount variant on the long-term-off world.
    """
    claims: list[dict[str, Any]] = []

    def sign_claim(cid: str, text: str, paper: str, a: tuple[str, str], b: tuple[str, str],
                   direction: int) -> None:  # fmt: skip
        d = diff(a, b)
        st = direction_status(d["per_seed"] if d else [], direction)
        claims.append({"id": cid, "claim": text, "paper": paper, "diff": d, **st})

    pw = {m: table2[m]["auc"][0] for m in POINTWISE if m in table2 and table2[m]["seeds"]}
    best_pw = max(pw, key=lambda m: pw[m]) if pw else None
    sign_claim("student>teacher", "DRL-Rec (50% student) beats its teacher on AUC",
               "0.7653 vs 0.7619", ("drl", "student"), ("drl", "teacher"), +1)  # fmt: skip
    sign_claim("student>hrl", "DRL-Rec beats HRL-Rec (DDPG) on AUC", "0.7653 vs 0.7625",
               ("drl", "student"), ("hrl", "actor"), +1)  # fmt: skip
    if best_pw:
        sign_claim("student>pointwise", f"DRL-Rec beats the best point-wise model ({best_pw})",
                   f"0.7653 vs {PAPER['table2']['autoint'][0]} (AutoInt)", ("drl", "student"),
                   (best_pw, "score"), +1)  # fmt: skip
        sign_claim("teacher>pointwise", f"The RL teacher beats the best point-wise model "
                   f"({best_pw})", "0.7619 vs 0.7463", ("drl", "teacher"),
                   (best_pw, "score"), +1)  # fmt: skip
    for n, (_, title) in ABLATIONS.items():
        sign_claim(f"ablation:{n}", f"Ablation {title} lowers the AUC",
                   f"{PAPER['table4'][n][0]:.4f} vs 0.7653", (n, "student"), ("drl", "student"),
                   -1)  # fmt: skip
    claims.append({"id": "fig4a", "claim": "Fig. 4a: AUC stable from 87.5% to 50%, then drops "
                   "sharply to 25%", "paper": "stable, then a sharp drop",
                   **compression_shape(sweep_means.get("compression", {}))})  # fmt: skip
    claims.append({"id": "fig4b", "claim": "Fig. 4b: top-3 filtered items is the best of 1/3/5/10",
                   "paper": "best at 3",
                   **best_at(sweep_means.get("n_filtered", {}), 3)})  # fmt: skip
    em = sweep_means.get("n_explore", {})
    ex = direction_status([em[1000] - em[100]], +1) if 100 in em and 1000 in em else {
        "status": NOT_RUN}  # fmt: skip
    claims.append({"id": "n_explore", "claim": "More input exploration candidates help "
                   "(AUC at 1000 above AUC at 100)", "paper": "1000 chosen; too few insufficient",
                   **ex})  # fmt: skip
    if online:
        rel = online["student_vs_teacher"]
        claims.append({"id": "online_acn", "claim": "Online: the student's ACN beats the "
                       "teacher's (significant at 0.05)", "paper": "+1.38%",
                       "status": interval_status(rel["low"], rel["high"], +1),
                       "ours": ci(rel, 2, as_pct=True)})  # fmt: skip
    if cost:
        r = cost["student_over_teacher"]
        for key, paper_key, text in (
            ("bytes_in_memory", "memory", "Student memory / teacher's"),
            ("ms_per_request", "computation", "Student computation / teacher's (measured time)"),
            ("macs_per_request", "computation", "Student computation / teacher's (multiply-adds)"),
        ):
            claims.append({"id": f"cost:{key}", "claim": text,
                           "paper": f"{PAPER['table3'][paper_key]:.1%}", "ours": f"{r[key]:.1%}",
                           "status": ratio_status(r[key], PAPER["table3"][paper_key],
                                                  RATIO_TOLERANCE)})  # fmt: skip
    if horizon_control and "student" in horizon_control:
        hs = horizon_control["student"]
        claims.append({"id": "control:request", "claim": "Negative control, per-request discount "
                       "variant: with the long-term mechanisms off, gamma 0.4 does not beat gamma "
                       "0 online (student ACN)", "paper": "(ours)",
                       "ours": ci(hs, 2, as_pct=True),
                       "status": "holds" if hs["holds"] else "violated"})  # fmt: skip
    return claims


def sanity_checks(agg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Checks whose failure means the measurement itself is in doubt (not a claim of the
    paper): the ceiling is of the same sample, no model beats the world's own click
    probability, the negative controls hold."""
    out: list[dict[str, Any]] = []
    ceil = agg["ceiling"]
    if ceil["per_seed"]:
        out.append(
            check(
                "ceiling_replay",
                "the replayed logging policy reproduces the test sample's impressions and clicks",
                bool(ceil["replay_matches_log"]),
            )
        )
        aucs = {k: v["auc"][0] for k, v in agg["table2"].items() if v["seeds"]}
        if aucs:
            best = max(aucs, key=lambda k: aucs[k])
            out.append(
                check(
                    "below_ceiling",
                    "no model's AUC is above the world's own click probability's",
                    aucs[best] <= ceil["auc"][0],
                    f"{best} {aucs[best]:.4f} vs ceiling {ceil['auc'][0]:.4f}",
                )
            )
    ctl = agg.get("control")
    if ctl:
        out.append(
            check(
                "control",
                "negative control: with the long-term mechanisms off, gamma "
                "0.4 does not beat gamma 0 online (student ACN)",
                bool(ctl["student"]["holds"]),
                ci(ctl["student"], 2, as_pct=True),
            )
        )
    hc = (agg.get("horizon") or {}).get("control") or {}
    if "student" in hc:
        out.append(
            check(
                "control:request",
                "negative control of the per-request discount",
                bool(hc["student"]["holds"]),
                ci(hc["student"], 2, as_pct=True),
            )
        )
    return out  # fmt: skip


def _vs(p: Mapping[str, float]) -> str:
    """Direction of a pooled relative change by its interval: above, below or not separable."""
    if p["low"] > 0:
        return "above"
    if p["high"] < 0:
        return "below"
    return "not separable from"


def findings(agg: Mapping[str, Any]) -> list[str]:
    """The summary at the top of the report: sentences computed from the numbers."""
    out: list[str] = []
    cl = [c for c in agg["claims"] if c["status"] in (REPRODUCED, NOT_REPRODUCED)]
    if cl:
        ok = [c["id"] for c in cl if c["status"] == REPRODUCED]
        out.append(f"{len(ok)} of {len(cl)} measured claims of the paper reproduce here"
                   + (f" ({', '.join(ok)})" if ok else "") + ".")  # fmt: skip
    t2 = {k: v["auc"][0] for k, v in agg["table2"].items() if v["seeds"]}
    pw = {k: t2[k] for k in POINTWISE if k in t2}
    rl = {k: t2[k] for k in ("teacher", "hrl", "student") if k in t2}
    if pw and rl:
        best = max(pw, key=lambda k: pw[k])
        below = [k for k in rl if rl[k] < pw[best]]
        who = "every RL model" if len(below) == len(rl) else ", ".join(below) or "no RL model"
        out.append(f"Offline, {who} scores a lower click AUC than the best point-wise model "
                   f"({best} {pw[best]:.4f}; student {num(rl.get('student'))}, teacher "
                   f"{num(rl.get('teacher'))}, HRL-Rec {num(rl.get('hrl'))}).")  # fmt: skip
    cap = agg["ceiling"].get("captured") or {}
    if cap:
        best = max(cap, key=lambda k: cap[k][0])
        out.append(f"The best model ({best}) reaches {100 * cap[best][0]:.0f}% of the ceiling's "
                   f"lift over chance (ceiling AUC {num(agg['ceiling']['auc'][0])}).")  # fmt: skip
    on = agg.get("online")
    if on:
        arms = {a: v["vs_logging"] for a, v in on["arms"].items() if a != "logging"}
        sides = {a: _vs(p) for a, p in arms.items()}
        detail = ", ".join(f"{a} {ci(p, 1, as_pct=True)}" for a, p in arms.items())
        if len(set(sides.values())) == 1:
            out.append(f"Online, every trained ranker is {next(iter(sides.values()))} the logging "
                       f"policy on clicks per user ({detail}).")  # fmt: skip
        else:
            out.append(f"Online vs the logging policy on clicks per user: {detail}.")
        st = on["student_vs_teacher"]
        out.append(f"Online, the student is {_vs(st)} its teacher ({ci(st, 2, as_pct=True)}).")
    for c in sanity_checks(agg):
        if c["ok"] is False:
            out.append(f"Sanity check failed: {c['check']} ({c['detail']}).")
    cost = agg.get("cost")
    if cost:
        r = cost["student_over_teacher"]
        out.append(
            f"Serving cost: the student takes {r['bytes_in_memory']:.0%} of the teacher's "
            f"memory and {r['ms_per_request']:.0%} of its measured time per request."
        )
    return out  # fmt: skip
