"""Numbers and verdicts: every number of the report from the run folders, and the claims as pure
functions of those numbers (:func:`paper_claims`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.drl.report.claims import paper_claims
from training.drl.report.plan import (
    ABLATIONS,
    PAPER,
    POINTWISE,
    POINTWISE_TITLES,
    SWEEPS,
    TAU_VARIANT,
    ReportConfig,
    RunSpec,
    sweep_run_name,
)
from training.harness.runfolder import (
    read_json,
    write_json,
)
from training.harness.stats import (
    mean_std,
    paired_auc_diff,
    pool_rows,
    pooled,
    pooled_positive,
    pooled_relative,
    relaimpr_columns,
)

# --------------------------------------------------------------------------------------------
# collecting and aggregating (pure functions first)
# --------------------------------------------------------------------------------------------


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
    on = {s: col[s]["online"] for s in have}
    table: dict[str, Any] = {"seeds": have, "arms": {}}
    for arm in arms:
        cps = [online_row(on[s], arm, "logging", "clicks_per_session") for s in have]
        dps = [online_row(on[s], arm, "logging", "depth_per_session") for s in have]
        table["arms"][arm] = {
            "acn": _acn(on, have, arm),
            "vs_logging": _rel(on, have, arm, "logging"),
            "vs_teacher": _rel(on, have, arm, "teacher"),
            "clicks_per_session": mean_std([r["mean"] for r in cps]),
            "depth_per_session": mean_std([r["mean"] for r in dps]),
        }
    table["student_vs_teacher"] = table["arms"]["student"]["vs_teacher"]
    if "student_gamma0" in table["arms"]:
        table["gamma_full_world"] = _rel(on, have, "student", "student_gamma0")
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
    on = {s: col[s]["control"] for s in have}
    out: dict[str, Any] = {"seeds": have}
    for who in ("student", "teacher"):
        out[who] = _no_gain(_rel(on, have, f"{who}_gamma0.4", f"{who}_gamma0"))
    arms = ("logging", "student_gamma0.4", "student_gamma0", "teacher_gamma0.4", "teacher_gamma0")
    out["acn"] = {arm: _acn(on, have, arm) for arm in arms}
    return out


def _rel(online: Mapping[int, Any], have: Sequence[int], arm: str, base: str) -> dict[str, Any]:
    """Relative ACN change ``arm`` vs ``base`` (paired per user), pooled over ``have``."""
    rows = [online_row(online[s], arm, base, "clicks_per_user") for s in have]
    return pool_rows(rows, pooled_relative, "rel_pct", "rel_low", "rel_high")


def _acn(online: Mapping[int, Any], have: Sequence[int], arm: str) -> dict[str, Any]:
    """ACN (clicks per user) of ``arm``, pooled over ``have`` on the log scale."""
    rows = [online_row(online[s], arm, "logging", "clicks_per_user") for s in have]
    return pool_rows(rows, pooled_positive)


def _no_gain(p: dict[str, Any]) -> dict[str, Any]:
    """A control's relative change with its verdict: it ``holds`` when the interval reaches 0 or
    below (no significant gain from the future rewards)."""
    return {**p, "holds": bool(p["low"] <= 0.0)}


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
            t["acn"][a] = _acn(on, have, a)
            t["vs_logging"][a] = _rel(on, have, a, "logging")
        for who in ("student", "teacher"):
            hi, lo = f"{who}_request0.4", f"{who}_request0"
            if hi in arms and lo in arms:
                t[who] = _no_gain(_rel(on, have, hi, lo))
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
