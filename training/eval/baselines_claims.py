"""The baselines report's numbers and verdicts: aggregation over seeds, the sanity checks
(orderings, NCIS against the online truth) and the summary of findings; pure functions of the
per-seed summaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from training.eval.baselines_run import EvalConfig
from training.eval.metrics import rela_impr
from training.harness.arms import REFERENCE_ARMS
from training.harness.claims import check
from training.harness.render import (
    num,
    pct,
    pm,
)
from training.harness.stats import (
    mean_std,
    pool_rows,
    pooled,
    pooled_positive,
    pooled_relative,
)

#: Online metrics of the report: name -> column title.
ONLINE_METRICS: dict[str, str] = {
    "clicks_per_user": "ACN (clicks/user)",
    "watch_time_per_session": "watch s/session",
    "depth_per_session": "depth/session",
    "like_per_session": "like/session",
    "follow_per_session": "follow/session",
    "comment_per_session": "comment/session",
    "hate_per_session": "hate/session",
}


def aggregate(summaries: Sequence[Mapping[str, Any]], cfg: EvalConfig) -> dict[str, Any]:
    """The report's numbers from the per-seed summaries."""
    seeds = [s["seed"] for s in summaries]
    models = list(cfg.models)
    # ---- offline ----
    offline: dict[str, Any] = {}
    for m in models:
        per = [s["models"][m]["offline"] for s in summaries]
        auc_fm = [s["models"]["fm"]["offline"]["auc"] for s in summaries]
        ri = [rela_impr(p["auc"], b) for p, b in zip(per, auc_fm, strict=True)]
        row = {"relaimpr": mean_std(ri), "relaimpr_per_seed": ri}
        for key in ("auc", "gauc", "auc_like", "auc_long_view"):
            row[key] = mean_std([p[key] for p in per])
            row[f"{key}_per_seed"] = [p[key] for p in per]
        row["epochs"] = [s["models"][m]["epochs"] for s in summaries]
        row["n_params"] = summaries[0]["models"][m]["n_params"]
        row["n_train"] = [s["models"][m]["n_train"] for s in summaries]
        row["n_test"] = [s["models"][m]["offline"]["n_test"] for s in summaries]
        offline[m] = row
    # ---- online ----
    found = [
        r["arm"] for r in summaries[0]["online"]["summary"] if r["metric"] == "clicks_per_user"
    ]
    # A fixed order (references, models, stochastic arms), whatever order the JSON kept.
    canon = [*REFERENCE_ARMS, *models, *(f"{m}@T" for m in cfg.ncis_models)]
    arms = [a for a in canon if a in found] + sorted(a for a in found if a not in canon)
    online: dict[str, dict[str, Any]] = {a: {} for a in arms}
    for a in arms:
        for metric in ONLINE_METRICS:
            rows = [
                next(r for r in s["online"]["summary"] if r["arm"] == a and r["metric"] == metric)
                for s in summaries
            ]
            online[a][metric] = {
                "value": pool_rows(rows, pooled_positive),
                "rel": pool_rows(rows, pooled_relative, "rel_pct", "rel_low", "rel_high"),
            }
        cpr = [s["online"]["clicks_per_request"][a] for s in summaries]
        online[a]["clicks_per_request"] = {"value": pool_rows(cpr, pooled, "value")}
    # ---- sanity: oracle > best baseline > random ----
    trained = [a for a in models if a in online]
    ordering = {
        # Clicks per user: the long-term oracle is the upper reference (the click oracle is
        # myopic: its clickbait ends sessions early).
        "acn": _ordering(online, trained, "oracle_lt", "clicks_per_user", len(seeds)),
        # Clicks per request: what the click oracle maximises, list by list.
        "cpr": _ordering(online, trained, "oracle", "clicks_per_request", len(seeds)),
    }
    # ---- sanity: NCIS ----
    ncis: dict[str, Any] = {}
    for pol in sorted(summaries[0]["ncis"]["policies"], key=lambda p: (p != "logging", p)):
        per = [s["ncis"]["policies"][pol] for s in summaries]
        cmp_ = [p["compare"] for p in per]
        bias = pool_rows(cmp_, pooled, "bias")
        ncis[pol] = {
            "ncis": pool_rows([p["ncis"] for p in per], pooled, "value"),
            "online": pool_rows([p["online"] for p in per], pooled, "value"),
            "bias": bias,
            "rel_bias_pct": mean_std([c["rel_bias_pct"] for c in cmp_]),
            "agrees_per_seed": [c["agrees"] for c in cmp_],
            "agrees": bool(bias["low"] <= 0.0 <= bias["high"]),
            "ess": [p["ncis"]["ess"] for p in per],
            "n": [p["ncis"]["n"] for p in per],
            "clipped_fraction": [p["ncis"]["clipped_fraction"] for p in per],
            "temperature": [p.get("temperature") for p in per],
            "cap_quantile": [p.get("cap_quantile") for p in per],
            "uncapped_ess": [p.get("uncapped_ess") for p in per],
            "mean_logged_reward": [p["ncis"]["mean_logged_reward"] for p in per],
        }
    # ---- timing ----
    timing = [_seed_timing(s) for s in summaries]
    return {
        "seeds": seeds,
        "offline": offline,
        "online": online,
        "arms": arms,
        "ordering": ordering,
        "ncis": ncis,
        "timing": timing,
    }


def _ordering(
    online: Mapping[str, Any], trained: Sequence[str], oracle: str, metric: str, n_seeds: int
) -> dict[str, Any]:
    """``oracle > best trained arm > random`` on ``metric``, in the mean and in every seed."""
    v = {a: online[a][metric]["value"] for a in online}
    best = max(trained, key=lambda a: v[a]["mean"])
    per_seed_ok = []
    for i in range(n_seeds):
        b_i = max(v[a]["per_seed"][i] for a in trained)
        per_seed_ok.append(bool(v[oracle]["per_seed"][i] > b_i > v["random"]["per_seed"][i]))
    return {
        "metric": metric,
        "oracle_arm": oracle,
        "best_baseline": best,
        "oracle": v[oracle],
        "best": v[best],
        "random": v["random"],
        "per_seed_ok": per_seed_ok,
        "pass": bool(
            all(per_seed_ok) and v[oracle]["mean"] > v[best]["mean"] > v["random"]["mean"]
        ),
    }


def _seed_timing(s: Mapping[str, Any]) -> dict[str, float]:
    """Compute seconds of each stage of a seed (as recorded when the stage ran)."""
    t = s.get("stage_seconds", {})
    models = s["models"]
    out = {
        "generate": float(s["dataset"].get("generate_seconds") or 0.0),
        "data": float(sum(v for k, v in t.items() if k.startswith("data_"))),
        "train": float(sum(m["seconds"]["train"] for m in models.values())),
        "offline": float(sum(m["seconds"]["offline"] for m in models.values())),
        "ncis_temperature": float(s["temperatures"].get("seconds", 0.0)),
        "online": float(s["online"]["info"]["seconds"]),
        "ncis": float(s["ncis"].get("seconds", 0.0)),
    }
    out["total"] = float(sum(out.values()))
    out["this_run"] = float(s["timing"].get("this_run", 0.0))
    return out


def _interval(v: Mapping[str, Any]) -> str:
    """`` [low, high]`` of an aggregated value, or nothing where it has no interval."""
    return f" [{num(v['low'])}, {num(v['high'])}]" if "low" in v and "high" in v else ""


def sanity_checks(agg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The report's sanity checks (ids ``ordering:acn``, ``ordering:cpr``, ``ncis:<policy>``)
    from the aggregated numbers."""
    out = [
        check(
            f"ordering:{k}",
            f"{o['oracle_arm']} > best baseline > random on {o['metric']}",
            o["pass"],
            f"{o['best_baseline']} best",
        )
        for k, o in agg["ordering"].items()
    ]
    for pol, n in agg["ncis"].items():
        out.append(
            check(
                f"ncis:{pol}",
                f"NCIS({pol}) equals the online value within its interval",
                n["agrees"],
                f"bias {num(n['bias']['mean'])}" + _interval(n["bias"]),
            )
        )
    return out  # fmt: skip


def findings(
    agg: Mapping[str, Any], checks: Sequence[Mapping[str, Any]], cfg: EvalConfig
) -> list[str]:
    """The summary at the top of the report, computed from the numbers."""
    out: list[str] = []
    off = agg["offline"]
    best = max(off, key=lambda m: off[m]["auc"][0])
    out.append(f"Offline, the best click AUC is {best}'s ({pm(off[best]['auc'])}); FM's is "
               f"{pm(off['fm']['auc'])}.")  # fmt: skip
    on = agg["online"]
    trained = [a for a in agg["arms"] if a in cfg.models or a.endswith("@T")]
    rel = {a: on[a]["clicks_per_user"]["rel"] for a in trained}
    below = [a for a in trained if rel[a]["high"] < 0]
    above = [a for a in trained if rel[a]["low"] > 0]
    if trained and len(below) == len(trained):
        out.append("Online, every trained ranker is below the logging policy on clicks per user "
                   f"(best {max(trained, key=lambda a: rel[a]['mean'])}: "
                   f"{pct(max(rel[a]['mean'] for a in trained), 1)}).")  # fmt: skip
    elif trained:
        out.append(f"Online vs the logging policy on clicks per user: {len(above)} of "
                   f"{len(trained)} trained rankers above ({', '.join(above) or 'none'}), "
                   f"{len(below)} below, the rest not separable.")  # fmt: skip
    for c in checks:
        if c["ok"] is False:
            exp = " (declared an expected finding)" if c["id"] in cfg.expected_findings else ""
            out.append(f"Sanity check `{c['id']}` fails{exp}: it expects {c['check']}; "
                       f"measured {c['detail']}.")  # fmt: skip
    return out
