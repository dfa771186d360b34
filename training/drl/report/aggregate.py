"""Numbers and verdicts: every number of the report from the run folders, and the claims as pure
functions of those numbers (:func:`paper_claims`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.drl.report.plan import (
    ABLATIONS,
    PAPER,
    POINTWISE,
    POINTWISE_TITLES,
    RATIO_TOLERANCE,
    SWEEPS,
    TAU_VARIANT,
    ReportConfig,
    RunSpec,
    sweep_run_name,
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
from training.harness.runfolder import (
    read_json,
    write_json,
)
from training.harness.stats import (
    mean_std,
    paired_auc_diff,
    pooled,
    pooled_positive,
    pooled_relative,
    relaimpr_columns,
)

# --------------------------------------------------------------------------------------------
# collecting and aggregating (pure functions first)
# --------------------------------------------------------------------------------------------


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


def _collect(root: Path, seeds: Sequence[int], plan: Mapping[int, list[RunSpec]]) -> dict:
    """Per seed: run name -> train.json (finished runs only), online, control, datasets."""
    out: dict[int, dict[str, Any]] = {}
    for s in seeds:
        d = root / f"seed{s}"
        runs = {}
        for spec in plan[s]:
            p = d / spec.name / "train.json"
            if p.exists():
                info = read_json(p)
                if "eval" in info:
                    runs[spec.name] = info
        entry: dict[str, Any] = {"runs": runs}
        for key, fname in (("online", "online.json"), ("control", "control_online.json"),
                           ("horizon", "horizon_online.json"),
                           ("horizon_control", "horizon_control_online.json"),
                           ("ceiling", "ceiling.json"),
                           ("slate_truth", "slate_truth.json"),
                           ("datasets", "datasets.json")):  # fmt: skip
            p = d / fname
            entry[key] = read_json(p) if p.exists() else None
        out[s] = entry
    return out


def _scores(root: Path, seed: int, name: str, key: str) -> np.ndarray | None:
    p = root / f"seed{seed}" / name / "scores.npz"
    if not p.exists():
        return None
    with np.load(p) as z:
        return z[key] if key in z.files else None


def _model_auc(info: Mapping[str, Any], which: str) -> float:
    """AUC of score ``which`` (teacher, student, actor, critic; score: a point-wise model's)."""
    e = info["eval"]
    return float(e["auc"] if which == "score" else e[f"auc_{which}"])


def table2_keys() -> list[tuple[str, str, str, str]]:
    """(row key, run name, score key in scores.npz, title)."""
    rows = [(m, m, "score", POINTWISE_TITLES[m]) for m in POINTWISE]
    rows += [("teacher", "drl", "teacher", "The teacher network"),
             ("hrl", "hrl", "actor", "HRL-Rec (DDPG item recommender)"),
             ("student", "drl", "student", "DRL-Rec (student)")]  # fmt: skip
    return rows


def aggregate(
    cfg: ReportConfig, seeds: Sequence[int], root: Path, plan: Mapping[int, list[RunSpec]]
) -> dict[str, Any]:
    """Every number of the report from the run folders under ``root``."""
    col = _collect(root, seeds, plan)
    tests: dict[int, dict[str, np.ndarray]] = {}
    for s in seeds:
        p = root / f"seed{s}" / "test_base.npz"
        if p.exists():
            with np.load(p) as z:
                tests[s] = {"click": z["click"], "user": z["user"]}

    def auc_of(run: str, which: str) -> dict[int, float]:
        return {s: _model_auc(col[s]["runs"][run], which) for s in seeds
                if run in col[s]["runs"]}  # fmt: skip

    cache_path = root / "paired_auc_cache.json"
    cache: dict[str, list[float]] = read_json(cache_path) if cache_path.exists() else {}

    def stamp(s: int, run: str) -> int:
        p = root / f"seed{s}" / run / "scores.npz"
        return p.stat().st_mtime_ns if p.exists() else 0

    def diff(a: tuple[str, str], b: tuple[str, str]) -> dict[str, Any] | None:
        """Paired AUC difference ``a - b`` ((run, score key) each) per seed, pooled. Bootstraps
        are cached by the score files' modification times."""
        pts, lows, highs, used = [], [], [], []
        for s in seeds:
            key = f"{s}|{a}|{b}|{cfg.n_boot}|{stamp(s, a[0])}|{stamp(s, b[0])}"
            if key in cache:
                v, lo, hi = cache[key]
            else:
                sa, sb = _scores(root, s, *a), _scores(root, s, *b)
                if sa is None or sb is None or s not in tests:
                    continue
                v, lo, hi = paired_auc_diff(tests[s]["click"], tests[s]["user"], sa, sb,
                                            cfg.n_boot, s)  # fmt: skip
                cache[key] = [v, lo, hi]
            pts.append(v)
            lows.append(lo)
            highs.append(hi)
            used.append(s)
        if not pts:
            return None
        return {**pooled(pts, lows, highs), "seeds": used}

    # ---- Table 2 ----
    t2_aucs: dict[str, dict[int, float]] = {}
    for key, run, which, _ in table2_keys():
        t2_aucs[key] = auc_of(run, which)
    hrl_critic = auc_of("hrl", "critic")
    table2 = relaimpr_columns(t2_aucs)
    ceil = {s: float(col[s]["ceiling"]["auc"]) for s in seeds if col[s]["ceiling"]}
    ceiling = {"auc": mean_std(list(ceil.values())), "per_seed": ceil,
               "replay_matches_log": all(col[s]["ceiling"]["replay_matches_log"] for s in ceil),
               # share of the ceiling's lift over chance each model reaches, per seed then mean
               "captured": {k: mean_std([(v[s] - 0.5) / (ceil[s] - 0.5) for s in v if s in ceil])
                            for k, v in t2_aucs.items() if any(s in ceil for s in v)}}  # fmt: skip
    # ---- Table 4 ----
    t4_aucs = {"drl": auc_of("drl", "student")}
    t4_teacher = {"drl": auc_of("drl", "teacher")}
    for n in ABLATIONS:
        t4_aucs[n] = auc_of(n, "student")
        t4_teacher[n] = auc_of(n, "teacher")
    t4_aucs["fm"] = t2_aucs["fm"]
    table4 = relaimpr_columns(t4_aucs)
    table4.pop("fm", None)
    for n in t4_teacher:
        table4.setdefault(n, {})["teacher_auc"] = mean_std(list(t4_teacher[n].values()))
    ablation_diffs = {n: diff((n, "student"), ("drl", "student")) for n in ABLATIONS}
    # ---- sweeps: every point on the seeds that run the sweep (the base point included) ----
    sweep_on = {s for s in seeds if any(r.group == "sweeps" for r in plan[s])}
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for key, values in SWEEPS.items():
        rows = []
        for v in values:
            name = sweep_run_name(cfg, key, v)
            st = {s: a for s, a in auc_of(name, "student").items() if s in sweep_on}
            te = {s: a for s, a in auc_of(name, "teacher").items() if s in sweep_on}
            sweep_seeds = sorted(st)
            rows.append({"value": v, "run": name, "student": mean_std(list(st.values())),
                         "teacher": mean_std(list(te.values())), "seeds": sweep_seeds,
                         "student_per_seed": st, "teacher_per_seed": te})  # fmt: skip
        sweeps[key] = rows

    # Sweep claims compare runs on the seeds that ran the sweep (the sweep's own seeds).
    def sweep_means(key: str) -> dict[Any, float]:
        rows = sweeps[key]
        common = set.intersection(*[set(r["seeds"]) for r in rows]) if rows else set()
        if not common:
            return {}
        return {r["value"]: float(np.mean([r["student_per_seed"][s] for s in common]))
                for r in rows}  # fmt: skip

    comp_cost = _compression_cost(cfg)
    cm, fm_, em = (sweep_means(k) for k in ("compression", "n_filtered", "n_explore"))
    online = _online_table(seeds, col)
    cost = read_json(root / "cost.json") if (root / "cost.json").exists() else None
    control = _control_table(seeds, col)
    # ---- variants beyond the paper: KL temperature, per-request discount ----
    tau_run = f"tau{TAU_VARIANT:g}"
    tau = {"tau": TAU_VARIANT, "student": mean_std(list(auc_of(tau_run, "student").values())),
           "vs_no_kl": diff((tau_run, "student"), ("no_kl", "student")),
           "vs_drl": diff((tau_run, "student"), ("drl", "student")),
           "drl_vs_no_kl": ablation_diffs.get("no_kl"),
           "kl_over_td": {r: kl_over_td([col[s]["runs"][r] for s in seeds
                                         if r in col[s]["runs"]])
                          for r in ("drl", tau_run)}}  # fmt: skip
    horizon = _horizon_table(seeds, col)
    horizon["auc"] = {r: mean_std(list(auc_of(r, "student").values()))
                      for r in ("drl", "gamma0", "request_gamma0.4", "request_gamma0")}  # fmt: skip
    horizon["auc_vs_drl"] = diff(("request_gamma0.4", "student"), ("drl", "student"))
    means = {"compression": cm, "n_filtered": fm_, "n_explore": em}
    claims = paper_claims(diff, table2, means, online, cost, horizon.get("control"))
    # the gap student - teacher in every DRL-Rec variant that has both (what lifts the student)
    gaps = []
    for spec in plan[seeds[0]]:
        if spec.kind != "drl" or spec.world != "base":
            continue
        d = diff((spec.name, "student"), (spec.name, "teacher"))
        if d:
            gaps.append({"run": spec.name, **d})
    if root.exists():
        write_json(cache_path, cache)
    return {
        "seeds": list(seeds),
        "collected": col,
        "table2": table2,
        "table2_paper": PAPER["table2"],
        "ceiling": ceiling,
        "hrl_critic_auc": mean_std(list(hrl_critic.values())),
        "table4": table4,
        "table4_paper": PAPER["table4"],
        "ablation_diffs": ablation_diffs,
        "sweeps": sweeps,
        "sweep_means": {"compression": cm, "n_filtered": fm_, "n_explore": em},
        "compression_cost": comp_cost,
        "claims": claims,
        "online": online,
        "control": control,
        "tau": tau,
        "horizon": horizon,
        "slate_truth": _slate_truth_table(seeds, col),
        "cost": cost,
        "gaps": gaps,
        "timing": _timing(seeds, col, plan),
    }


def _compression_cost(cfg: ReportConfig) -> dict[float, dict[str, float]]:
    """Analytic student/teacher ratios (parameters, MACs per request) per compression rate."""
    from training.drl.networks import QNetwork, flops_per_request, param_count

    base = cfg.drl_config(0)
    t_cfg = base.teacher_net()
    with torch.random.fork_rng(devices=[]):
        t_params = param_count(QNetwork(t_cfg))
        out = {}
        for c in SWEEPS["compression"]:
            s_cfg = t_cfg.scaled(c)
            out[c] = {
                "parameters": param_count(QNetwork(s_cfg)) / t_params,
                "macs": flops_per_request(s_cfg, cfg.cost_candidates, cfg.cost_k)
                / flops_per_request(t_cfg, cfg.cost_candidates, cfg.cost_k),
            }
    return out


def _online_table(seeds: Sequence[int], col: Mapping[int, Any]) -> dict[str, Any] | None:
    have = [s for s in seeds if col[s]["online"]]
    if not have:
        return None
    arms = [a for a in col[have[0]]["online"]["rows"]
            if all(a in col[s]["online"]["rows"] for s in have)]  # fmt: skip
    table: dict[str, Any] = {"seeds": have, "arms": {}}
    for arm in arms:
        rows = [online_row(col[s]["online"], arm, "logging", "clicks_per_user") for s in have]
        rel_t = [online_row(col[s]["online"], arm, "teacher", "clicks_per_user") for s in have]
        cps = [online_row(col[s]["online"], arm, "logging", "clicks_per_session") for s in have]
        dps = [online_row(col[s]["online"], arm, "logging", "depth_per_session") for s in have]
        table["arms"][arm] = {
            "acn": pooled_positive([r["mean"] for r in rows], [r["low"] for r in rows],
                          [r["high"] for r in rows]),
            "vs_logging": pooled_relative([r["rel_pct"] for r in rows],
                                          [r["rel_low"] for r in rows],
                                          [r["rel_high"] for r in rows]),
            "vs_teacher": pooled_relative([r["rel_pct"] for r in rel_t],
                                          [r["rel_low"] for r in rel_t],
                                          [r["rel_high"] for r in rel_t]),
            "clicks_per_session": mean_std([r["mean"] for r in cps]),
            "depth_per_session": mean_std([r["mean"] for r in dps]),
        }  # fmt: skip
    table["student_vs_teacher"] = table["arms"]["student"]["vs_teacher"]
    if "student_gamma0" in table["arms"]:
        rows = [online_row(col[s]["online"], "student", "student_gamma0", "clicks_per_user")
                for s in have]  # fmt: skip
        table["gamma_full_world"] = pooled_relative([r["rel_pct"] for r in rows],
                                           [r["rel_low"] for r in rows],
                                           [r["rel_high"] for r in rows])  # fmt: skip
    ratios = [
        col[s]["online"]["arm_seconds"]["student"] / col[s]["online"]["arm_seconds"]["teacher"]
        for s in have
        if col[s]["online"].get("arm_seconds", {}).get("teacher")
    ]
    if ratios:
        table["arm_seconds_ratio"] = (float(np.mean(ratios)), ratios)
    table["n_users"] = [col[s]["online"]["n_users"] for s in have]
    table["active_users"] = [col[s]["online"]["active_users"] for s in have]
    table["n_sessions"] = [col[s]["online"]["n_sessions"] for s in have]
    table["days"] = col[have[0]]["online"]["days"]
    return table


def _control_table(seeds: Sequence[int], col: Mapping[int, Any]) -> dict[str, Any] | None:
    """Negative control: gamma 0.4 vs gamma 0 online in the long-term-off world."""
    have = [s for s in seeds if col[s]["control"]]
    if not have:
        return None
    out: dict[str, Any] = {"seeds": have}
    for who in ("student", "teacher"):
        rows = [online_row(col[s]["control"], f"{who}_gamma0.4", f"{who}_gamma0", "clicks_per_user")
                for s in have]  # fmt: skip
        p = pooled_relative([r["rel_pct"] for r in rows], [r["rel_low"] for r in rows],
                   [r["rel_high"] for r in rows])  # fmt: skip
        out[who] = {**p, "holds": bool(p["low"] <= 0.0)}
    for arm in ("logging", "student_gamma0.4", "student_gamma0", "teacher_gamma0.4",
                "teacher_gamma0"):  # fmt: skip
        rows = [online_row(col[s]["control"], arm, "logging", "clicks_per_user") for s in have]
        out.setdefault("acn", {})[arm] = pooled_positive([r["mean"] for r in rows],
                                                [r["low"] for r in rows],
                                                [r["high"] for r in rows])  # fmt: skip
    return out


def _rel(online: Mapping[int, Any], have: Sequence[int], arm: str, base: str) -> dict[str, Any]:
    """Relative ACN change ``arm`` vs ``base`` (paired per user), pooled over ``have``."""
    rows = [online_row(online[s], arm, base, "clicks_per_user") for s in have]
    return pooled_relative([r["rel_pct"] for r in rows], [r["rel_low"] for r in rows],
                  [r["rel_high"] for r in rows])  # fmt: skip


def _horizon_table(seeds: Sequence[int], col: Mapping[int, Any]) -> dict[str, Any]:
    """The per-request discount variant online: on the full world (against the paper's
    per-slot discount and against gamma 0) and in the long-term-off world (its control)."""
    out: dict[str, Any] = {}
    for key in ("horizon", "horizon_control"):
        have = [s for s in seeds if col[s][key]]
        if not have:
            continue
        on = {s: col[s][key] for s in have}
        arms = [a for a in on[have[0]]["rows"] if all(a in on[s]["rows"] for s in have)]
        t: dict[str, Any] = {"seeds": have, "acn": {}, "vs_logging": {}}
        for a in arms:
            rows = [online_row(on[s], a, "logging", "clicks_per_user") for s in have]
            t["acn"][a] = pooled_positive([r["mean"] for r in rows], [r["low"] for r in rows],
                                 [r["high"] for r in rows])  # fmt: skip
            t["vs_logging"][a] = _rel(on, have, a, "logging")
        for who in ("student", "teacher"):
            hi, lo = f"{who}_request0.4", f"{who}_request0"
            if hi in arms and lo in arms:
                p = _rel(on, have, hi, lo)
                t[who] = {**p, "holds": bool(p["low"] <= 0.0)}
        if "student_slot" in arms and "student_request0.4" in arms:
            t["request_vs_slot"] = _rel(on, have, "student_request0.4", "student_slot")
        if "student_slot_gamma0" in arms and "student_request0" in arms:
            t["request0_vs_slot0"] = _rel(on, have, "student_request0", "student_slot_gamma0")
        out["base" if key == "horizon" else "control"] = t
    return out


def _slate_truth_table(seeds: Sequence[int], col: Mapping[int, Any]) -> dict[str, Any] | None:
    """Mean ± std over seeds of each policy's slate truth (policies every seed has)."""
    have = [s for s in seeds if col[s]["slate_truth"]]
    if not have:
        return None
    rows = [col[s]["slate_truth"]["rows"] for s in have]
    arms = [a for a in rows[0] if all(a in r for r in rows)]
    return {"seeds": have, "requests": [r["logging"]["requests"] for r in rows],
            "rows": {a: {m: mean_std([r[a][m] for r in rows]) for m in
                         ("p_click", "satisfaction", "clickbait")} for a in arms}}  # fmt: skip


def _timing(seeds: Sequence[int], col: Mapping[int, Any], plan: Mapping[int, list]) -> dict:
    per_run: dict[str, dict[str, list[float]]] = {}
    total = 0.0
    for s in seeds:
        for name, info in col[s]["runs"].items():
            r = per_run.setdefault(name, {"train": [], "eval": [], "ips": []})
            r["train"].append(float(info.get("seconds", 0.0)))
            r["eval"].append(float(info.get("eval_seconds", 0.0)))
            r["ips"].append(float(info.get("instances_per_s", 0.0)))
            total += r["train"][-1] + r["eval"][-1]
        for key in ("online", "control"):
            if col[s][key]:
                total += float(col[s][key]["seconds"])
        for d in (col[s]["datasets"] or {}).values():
            if d.get("generated_now") and d.get("generate_seconds"):
                total += float(d["generate_seconds"])
    return {"per_run": per_run, "total_seconds": total}


def loss_sizes(agg: Mapping[str, Any]) -> dict[str, float] | None:
    """Last logged TD (student), hint and KL losses of the first seed's full run."""
    runs = agg["collected"][agg["seeds"][0]]["runs"]
    hist = runs.get("drl", {}).get("history") or []
    if not hist or "losses/kl" not in hist[-1]:
        return None
    last = hist[-1]
    td, kl = float(last["losses/td_student"]), float(last["losses/kl"])
    return {"td_student": td, "hint": float(last["losses/hint"]), "kl": kl, "kl_over_td": kl / td}


def kl_over_td(infos: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean over runs of KL / TD (student) in each run's last logged window."""
    vals = []
    for info in infos:
        hist = info.get("history") or []
        if hist and "losses/kl" in hist[-1] and float(hist[-1]["losses/td_student"]) > 0:
            vals.append(float(hist[-1]["losses/kl"]) / float(hist[-1]["losses/td_student"]))
    return float(np.mean(vals)) if vals else None


def online_row(online: Mapping[str, Any], arm: str, baseline: str, metric: str) -> dict[str, Any]:
    return next(r for r in online["rows"][baseline] if r["arm"] == arm and r["metric"] == metric)


Diff = Callable[[tuple[str, str], tuple[str, str]], "dict[str, Any] | None"]


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
