"""The MMRF report's numbers and verdicts: aggregation over seeds, the claims (the paper's and
ours), the sanity checks and the summary of findings; pure functions of the per-seed
summaries (:func:`training.mmrf.report.runs.run_seed`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from contract.schema import FEEDBACK
from training.harness.claims import (
    NOT_REPRODUCED,
    NOT_RUN,
    REPRODUCED,
    check,
    direction_status,
    interval_status,
)
from training.harness.render import ci, num, pct
from training.harness.stats import finite, mean_std, pool_rows, pooled_positive, pooled_relative
from training.mmrf.report.plan import BASELINE_ROWS, CONTROL, TABLE1_ROWS

#: The paper's figures (KuaiRand-1K, Table 1; online, Table 2).
PAPER = {"wt_gauc": 0.6833, "wt_gauc_best_baseline": 0.6679, "wt_ncis_pct": 7.1,
         "online_watch_time_pct": 0.55, "online_follow_pct": 1.45}  # fmt: skip


def seed_interval(
    values: Sequence[float | None], lo: float = -math.inf, hi: float = math.inf
) -> dict[str, Any]:
    """Mean over seeds with a 95% t interval (``mean -/+ t_{0.975, S-1} sd / sqrt(S)``),
    clipped to the quantity's range ``[lo, hi]`` (an AUC's [0, 1], a count's [0, inf)); NaN
    bounds for one seed (no spread is shown, never ± 0); NaN mean for none."""
    a = finite(list(values))
    m, sd = mean_std(a.tolist())
    half = math.nan
    if a.size > 1:
        from scipy.stats import t

        half = float(t.ppf(0.975, a.size - 1) * sd / math.sqrt(a.size))
    return {"mean": m, "std": sd, "low": max(m - half, lo), "high": min(m + half, hi),
            "per_seed": [None if v is None else float(v) for v in values]}  # fmt: skip


def aggregate(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report's numbers from the per-seed summaries."""
    table1: dict[str, Any] = {}
    for row in TABLE1_ROWS:
        per = [s["offline"]["rows"][row] for s in summaries]
        table1[row] = {a: {"gauc": seed_interval([p["gauc"][a] for p in per], 0.0, 1.0),
                           "ncis": seed_interval([p["ncis"]["value"][a] for p in per], 0.0)}
                       for a in FEEDBACK}  # fmt: skip
        table1[row]["temperature"] = [p["ncis"]["temperature"] for p in per]
    arms = list(summaries[0]["online"]["arms"])
    table2: dict[str, Any] = {}
    for arm in arms:
        table2[arm] = {}
        for metric in summaries[0]["online"]["arms"][arm]:
            rows = [s["online"]["arms"][arm][metric] for s in summaries]
            table2[arm][metric] = {
                "value": pool_rows([r["value"] for r in rows], pooled_positive),
                **{k: pool_rows([r[k] for r in rows], pooled_relative)
                   for k in rows[0] if k.startswith("vs_")},
            }  # fmt: skip
    fq = [s["feedback"] for s in summaries]
    feedback = {
        "impressions_auc": {a: mean_std([f["impressions"]["auc"].get(a) for f in fq])
                            for a in fq[0]["impressions"]["auc"]},
        "watch_time_mse": mean_std([f["impressions"]["watch_time_mse"] for f in fq]),
        "watch_time_corr": mean_std([f["impressions"]["watch_time_corr"] for f in fq]),
        "probe": {g: {"auc": {a: mean_std([f["probe"][g]["auc"].get(a) for f in fq])
                              for a in fq[0]["probe"][g]["auc"]},
                      "truth_auc": {a: mean_std([f["probe"][g]["truth_auc"].get(a) for f in fq])
                                    for a in fq[0]["probe"][g]["truth_auc"]},
                      "corr": {a: mean_std([f["probe"][g]["corr"].get(a) for f in fq])
                               for a in fq[0]["probe"][g]["corr"]},
                      "n": [f["probe"][g]["n"] for f in fq]}
                  for g in ("non_impressed", "impressed")},
        "kl_by_exposure": {g: _buckets([f["probe"][g]["kl_by_exposure"] for f in fq])
                           for g in ("non_impressed", "impressed")},
        "kl_by_exposure_impressions": _buckets([f["impressions"]["kl_by_exposure"] for f in fq]),
    }  # fmt: skip
    return {"seeds": [s["seed"] for s in summaries], "table1": table1, "table2": table2,
            "arms": arms, "feedback": feedback,
            "lambda": [s["choices"]["lambda"]["chosen"] for s in summaries],
            "stage_seconds": [s["stage_seconds"] for s in summaries]}  # fmt: skip


def _buckets(per_seed: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Exposure buckets over seeds: label, impressions per seed, mean KL (mean over seeds)."""
    return [{"label": b["label"], "n": [p[i]["n"] for p in per_seed],
             "kl": mean_std([p[i]["mean"] for p in per_seed]),
             "per_seed": [p[i]["mean"] for p in per_seed]}
            for i, b in enumerate(per_seed[0])]  # fmt: skip


def strongest_baseline(table1: Mapping[str, Any], aspect: str, measure: str) -> str:
    """The Table 1 baseline with the highest mean ``measure`` (gauc / ncis) on ``aspect``."""

    def key(r: str) -> float:
        v = table1[r][aspect][measure]["mean"]
        return v if math.isfinite(v) else -math.inf

    return max(BASELINE_ROWS, key=key)


def kl_gap(buckets: Sequence[Mapping[str, Any]]) -> list[float]:
    """Per seed: mean KL of the rarest exposure bucket minus that of the most exposed one,
    among the buckets with candidates in that seed (none when fewer than two)."""
    out = []
    for i in range(len(buckets[0]["per_seed"])):
        v = [
            b["per_seed"][i]
            for b in buckets
            if b["n"][i] > 0 and b["per_seed"][i] is not None and math.isfinite(b["per_seed"][i])
        ]
        if len(v) >= 2:
            out.append(float(v[0] - v[-1]))
    return out


def _claim(cid: str, text: str, paper: str, measured: str, status: str) -> dict[str, Any]:
    return {"id": cid, "claim": text, "paper": paper, "measured": measured, "status": status}


def _measured(r: Mapping[str, Any] | None, base: str, metric: str) -> str:
    """A relative change as text; why it is missing when it is (the base arm has none)."""
    if r is None:
        return "n/a"
    if not math.isfinite(r["mean"]):
        per = [v for v in r.get("per_seed", []) if v is not None]
        bad = sum(1 for v in per if not math.isfinite(v))
        seeds = f" in {bad} of {len(per)} seeds" if per and bad < len(per) else ""
        return f"undefined: no {metric.replace('_', ' ')} in the {base} arm{seeds}"
    return ci(r, 2, as_pct=True)


def claims(agg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims and ours, each reproduced / not reproduced / not run with the
    measured figure."""
    t1, t2 = agg["table1"], agg["table2"]
    out = []
    b = strongest_baseline(t1, "watch_time", "gauc")
    mm, bb = t1["MMRF"]["watch_time"]["gauc"], t1[b]["watch_time"]["gauc"]
    diff = [x - y for x, y in zip(mm["per_seed"], bb["per_seed"], strict=True)
            if x is not None and y is not None]  # fmt: skip
    st = direction_status(diff)
    out.append(_claim("wt_gauc", "MMRF has a higher WatchTime GAUC than the strongest baseline",
                      f"{PAPER['wt_gauc']} vs {PAPER['wt_gauc_best_baseline']} (MASSA)",
                      f"{num(mm['mean'])} vs {num(bb['mean'])} ({b}); {st['agree']} of "
                      f"{st['seeds']} seeds", st["status"]))  # fmt: skip
    b = strongest_baseline(t1, "watch_time", "ncis")
    mm, bb = t1["MMRF"]["watch_time"]["ncis"], t1[b]["watch_time"]["ncis"]
    rel = [100.0 * (x / y - 1.0) for x, y in zip(mm["per_seed"], bb["per_seed"], strict=True)
           if x is not None and y]  # fmt: skip
    st = direction_status(rel)
    out.append(_claim("wt_ncis", "MMRF's WatchTime NCIS is above the strongest baseline's",
                      f"+{PAPER['wt_ncis_pct']}%",
                      f"{pct(st['mean'])} over {b}; {st['agree']} of {st['seeds']} seeds",
                      st["status"]))  # fmt: skip
    for cid, metric, paper, base in (
        ("online_watch_time", "watch_time", PAPER["online_watch_time_pct"], CONTROL),
        ("online_follow", "follow", PAPER["online_follow_pct"], CONTROL),
        ("ours_watch_time_vs_logging", "watch_time", None, "logging"),
    ):
        r = t2.get("mmrf", {}).get(metric, {}).get(f"vs_{base}")
        verdict = interval_status(r["low"], r["high"]) if r else NOT_RUN
        who = "the LTR control" if base == CONTROL else "the logging policy"
        out.append(_claim(cid, f"Online, MMRF's {metric.replace('_', ' ')} per user is above "
                          f"{who} (95% interval above 0)" + ("" if paper else " (our goal)"),
                          f"+{paper}%" if paper else "not in the paper",
                          _measured(r, base, metric), verdict))  # fmt: skip
    r = t2.get("mmrf_bundle", {}).get("watch_time", {}).get("vs_mmrf")
    ok = r is not None and all(math.isfinite(r[k]) for k in ("mean", "low", "high"))
    verdict = NOT_RUN
    if r is not None and ok:
        verdict = REPRODUCED if r["low"] <= 0.0 <= r["high"] else NOT_REPRODUCED
    out.append(_claim("bundle_parity", "The exported MMRF bundle, ranked by the list builder, "
                      "reaches the torch actor's online watch time per user (interval holds 0)",
                      "issue 10", ci(r, 2, as_pct=True) if r else "n/a", verdict))  # fmt: skip
    gap = kl_gap(agg["feedback"]["kl_by_exposure"]["non_impressed"])
    st = direction_status(gap)
    out.append(_claim("kl_exposure", "M's uncertainty (KL) is larger for rarely exposed items "
                      "than for the most exposed (non-impressed candidates)",
                      "Sec. 2.3 (motivation, no figure)",
                      f"rarest - most exposed bucket {num(st['mean'], 5)}; {st['agree']} of "
                      f"{st['seeds']} seeds", st["status"]))  # fmt: skip
    return out


def sanity_checks(agg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``feedback_auc``: M ranks held-out clicks above chance; ``truth_ceiling``: the world's
    own probabilities rank the probe's drawn clicks at least as well as M."""
    fb = agg["feedback"]
    a = fb["impressions_auc"].get("click", (math.nan,))[0]
    ok_a = None if not math.isfinite(a) else bool(a > 0.5)
    g = fb["probe"]["non_impressed"]
    m_, t_ = g["auc"].get("click", (math.nan,))[0], g["truth_auc"].get("click", (math.nan,))[0]
    ok_t = None if not (math.isfinite(m_) and math.isfinite(t_)) else bool(t_ >= m_)
    return [check("feedback_auc", "M's click AUC on held-out impressions > 0.5", ok_a,
                  f"AUC {num(a)}"),
            check("truth_ceiling", "on non-impressed candidates the truth's click AUC >= M's",
                  ok_t, f"truth {num(t_)}, M {num(m_)}")]  # fmt: skip


def findings(
    agg: Mapping[str, Any],
    claim_rows: Sequence[Mapping[str, Any]],
    checks: Sequence[Mapping[str, Any]],
    expected: Sequence[str],
) -> list[str]:
    """The summary at the top of the report, computed from the numbers."""
    t1, t2, out = agg["table1"], agg["table2"], []
    for measure, name in (("gauc", "GAUC"), ("ncis", "NCIS")):
        rows = [r for r in TABLE1_ROWS if math.isfinite(t1[r]["watch_time"][measure]["mean"])]
        if rows:
            best = max(rows, key=lambda r: t1[r]["watch_time"][measure]["mean"])
            rank = sorted(rows, key=lambda r: -t1[r]["watch_time"][measure]["mean"]).index("MMRF")
            out.append(f"Offline, the best WatchTime {name} is {best}'s "
                       f"({num(t1[best]['watch_time'][measure]['mean'])}); MMRF ranks "
                       f"{rank + 1} of {len(rows)}.")  # fmt: skip
    wt = {a: t2[a]["watch_time"]["vs_logging"] for a in t2 if a != "logging"}
    above = [a for a, r in wt.items() if r["low"] > 0]
    below = [a for a, r in wt.items() if r["high"] < 0]
    out.append(f"Online, watch time per user against the logging policy: {len(above)} of "
               f"{len(wt)} arms above ({', '.join(above) or 'none'}), {len(below)} below "
               f"({', '.join(below) or 'none'}), the rest not separable; MMRF "
               f"{ci(wt.get('mmrf'), 2, as_pct=True)}.")  # fmt: skip
    fb = agg["feedback"]
    out.append(
        f"The feedback model's click AUC is {num(fb['impressions_auc']['click'][0])} on "
        f"held-out impressions and {num(fb['probe']['non_impressed']['auc']['click'][0])} "
        "on non-impressed candidates against labels drawn from the world's truth "
        f"(the truth itself: {num(fb['probe']['non_impressed']['truth_auc']['click'][0])})."
    )
    n_rep = sum(c["status"] == REPRODUCED for c in claim_rows)
    out.append(
        f"{n_rep} of {len(claim_rows)} claims reproduced: "
        + "; ".join(f"`{c['id']}` {c['status']}" for c in claim_rows)
        + "."
    )
    for c in checks:
        if c["ok"] is False:
            exp = " (declared an expected finding)" if c["id"] in expected else ""
            out.append(f"Sanity check `{c['id']}` fails{exp}: {c['check']} ({c['detail']}).")
    if len(agg["seeds"]) == 1:
        out.append("One seed: intervals of Table 1 are not shown; a claim needs every seed.")
    return out


def relative_bars(t2: Mapping[str, Any], metric: str) -> dict[str, tuple[float, float, float]]:
    """Per arm (not the control): relative change vs the control on ``metric`` as
    (mean, low, high), for the plot."""
    out = {}
    for a, m in t2.items():
        if a == CONTROL:
            continue
        r = m[metric][f"vs_{CONTROL}"]
        out[a] = (r["mean"], r["low"], r["high"])
    return out


__all__ = [
    "PAPER",
    "aggregate",
    "claims",
    "findings",
    "kl_gap",
    "relative_bars",
    "sanity_checks",
    "seed_interval",
    "strongest_baseline",
]
