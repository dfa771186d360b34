"""The stages of one seed that read its finished runs: the online tests (:func:`online_test`),
the click-AUC ceiling (:func:`ceiling`), the slate truth (:func:`slate_truth`), and the serving
cost of the first seed (:func:`run_cost`). Each is cached in the seed's folder with its inputs
(:func:`training.harness.runfolder.cached`)."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from training.data.features import Requests
from training.drl.report.aggregate import online_row
from training.drl.report.plan import ReportConfig, world_config
from training.harness.arms import q_policy, reference_arms
from training.harness.data import online_population, split_days
from training.harness.render import pct
from training.harness.runfolder import cached, read_json, write_json

if TYPE_CHECKING:
    from training.drl.report.runs import SeedData

__all__ = ["INTERVALS", "TRUTH_Q_ARMS", "ceiling", "online_test", "run_cost", "slate_truth"]


def _load_cost_module() -> Any:
    """``benchmarks/drl_cost.py`` (a script folder, not a package): loaded from its path."""
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "drl_cost.py"
    spec = importlib.util.spec_from_file_location("drl_cost", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path}: cost benchmark not found")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def online_test(
    ctx: SeedData,
    variant: str,
    arms: Mapping[str, tuple[str, str]],
    path: Path,
    optional: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Simulated A/B test on the test days of a world variant.

    ``arms``: arm name -> (run name, "teacher" | "student"); the logging policy is added as
    the reference arm. Arms in ``optional`` are left out while their run is missing (and the
    test reruns once it exists); a missing required run skips the test. Saved to ``path``
    (the full per-session result beside it).
    """
    runs = ctx.root

    def ready(run_name: str) -> bool:
        p = runs / run_name / "train.json"
        return p.exists() and "eval" in read_json(p)

    present = {a: v for a, v in arms.items() if ready(v[0])}
    missing = sorted(set(arms) - set(present) - set(optional))
    if missing:
        ctx.log(f"online ({variant}): runs missing for arms {missing}; skipped")
        return None
    want = {"arms": {k: list(v) for k, v in present.items()},
            "online_users": ctx.cfg.online_users, "seed_offset": ctx.cfg.online_seed_offset,
            "variant": variant, "intervals": INTERVALS}  # fmt: skip
    return cached(path, want, lambda: _run_online(ctx, variant, present, path))


#: Version of the online summaries' intervals (log-ratio relative changes, log-scale means);
#: part of an online test's inputs, so results summarised the older way are recomputed.
INTERVALS = "log-2"


def _run_online(
    ctx: SeedData, variant: str, present: Mapping[str, tuple[str, str]], path: Path
) -> dict[str, Any]:
    from training.eval.online import OnlineResult, run_online
    from training.sim.world import build_world

    runs = ctx.root
    ds, side, _ = ctx.dataset(variant)
    wcfg = world_config(ctx.cfg, ctx.seed, variant)
    world = build_world(wcfg)
    days = split_days(ds, "test")
    users = online_population(ctx.seed, world.n_users, ctx.cfg.online_users)
    policies = reference_arms(world, ctx.seed, ["logging"])
    for arm, (run_name, which) in present.items():
        policies[arm] = q_policy(runs / run_name, which, side)
    t0 = time.perf_counter()
    ctx.log(f"online ({variant}): arms {list(policies)}, {len(users)} users, days {days}")
    result: OnlineResult = run_online(world, policies, users=users, days=days,
                                      seed_offset=ctx.cfg.online_seed_offset,
                                      progress=ctx.progress)  # fmt: skip
    metrics = ["clicks_per_user", "clicks_per_session", "depth_per_session",
               "watch_time_per_session"]  # fmt: skip
    rows = {b: result.summary(b, metrics) for b in policies}
    out = {
        "days": days,
        "n_users": int(len(users)),
        "n_sessions": result.n_sessions,
        "active_users": int(result.active_users().shape[0]),
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 2),
        "arm_seconds": result.meta.get("seconds", {}),
    }
    write_json(path.with_name(path.stem + "_sessions.json"), result.to_dict())
    for arm in policies:
        r = online_row(out, arm, "logging", "clicks_per_user")
        ctx.log(f"online ({variant}) {arm}: ACN {r['mean']:.3f} ({pct(r['rel_pct'])} vs logging)")
    return out


def ceiling(ctx: SeedData, path: Path) -> dict[str, Any]:
    """Click-AUC ceiling of the base world's test sample (training/eval/ceiling.py): the
    logging policy replayed for the sample's users, the world's click probabilities scored."""
    req = ctx.test("base")
    users = np.unique(req.user_id)
    want = {"eval_sample": ctx.eval_key, "users": int(users.size)}
    return cached(path, want, lambda: _compute_ceiling(ctx, req, users))


def _compute_ceiling(ctx: SeedData, req: Requests, users: np.ndarray) -> dict[str, Any]:
    from training.eval.ceiling import click_ceiling

    ds, _, _ = ctx.dataset("base")
    t0 = time.perf_counter()
    c = click_ceiling(world_config(ctx.cfg, ctx.seed, "base"), users, split_days(ds, "test"))
    y = req.label("click")
    out = {"auc": c.auc, "impressions": c.n_impressions,
           "clicks": int(c.click.sum()), "mean_p_click": float(c.p_click.mean()),
           "sample_impressions": int(req.n_impressions), "sample_clicks": int(y.sum()),
           "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    out["replay_matches_log"] = bool(
        out["impressions"] == out["sample_impressions"] and out["clicks"] == out["sample_clicks"]
    )
    ctx.log(f"click-AUC ceiling {c.auc:.4f} on {c.n_impressions:,} impressions (replay matches "
            f"the log: {out['replay_matches_log']}, {out['seconds']:.0f} s)")  # fmt: skip
    return out


#: Policies of the slate-truth diagnostic: name -> (run, network) for Q networks.
TRUTH_Q_ARMS = {"teacher": ("drl", "teacher"), "student": ("drl", "student"),
                "student_gamma0": ("gamma0", "student"),
                "student_request0.4": ("request_gamma0.4", "student")}  # fmt: skip
#: Users (of the online population) whose first list of the test day the diagnostic scores.
TRUTH_USERS = 3000


def slate_truth(ctx: SeedData, path: Path) -> dict[str, Any] | None:
    """What each policy puts in the first list of a session, by the world's truth (click
    probability, satisfaction logit, clickbait share)."""
    present = {a: v for a, v in TRUTH_Q_ARMS.items()
               if (ctx.root / v[0] / "train.json").exists()}  # fmt: skip
    if "student" not in present:
        return None
    want = {"arms": sorted(present), "users": TRUTH_USERS, "online_users": ctx.cfg.online_users}
    return cached(path, want, lambda: _compute_slate_truth(ctx, present))


def _compute_slate_truth(ctx: SeedData, present: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    from training.eval.ceiling import first_slates
    from training.sim.world import build_world

    ds, side, _ = ctx.dataset("base")
    world = build_world(world_config(ctx.cfg, ctx.seed, "base"))
    users = online_population(ctx.seed, world.n_users, ctx.cfg.online_users)[:TRUTH_USERS]
    pols = reference_arms(world, ctx.seed, rename={"oracle": "click_oracle",
                                                   "oracle_lt": "long_term_oracle"})  # fmt: skip
    for arm, (run_name, which) in present.items():
        pols[arm] = q_policy(ctx.root / run_name, which, side)
    t0 = time.perf_counter()
    day = split_days(ds, "test")[0]
    rows = first_slates(world, pols, users, day, world.cfg.list_size)
    out = {"day": day, "rows": rows, "seconds": round(time.perf_counter() - t0, 2)}
    ctx.log(f"slate truth: {len(rows)} policies, {rows['logging']['requests']} requests "
            f"({out['seconds']:.0f} s)")  # fmt: skip
    return out


def run_cost(
    cfg: ReportConfig, run_dir: Path, path: Path, log: Callable[[str], None]
) -> dict | None:
    """Serving cost of the first seed's student against its teacher (Table 3's cost side)."""
    want = {"candidates": cfg.cost_candidates, "k": cfg.cost_k, "requests": cfg.cost_requests,
            "rounds": cfg.cost_rounds, "run": str(run_dir)}  # fmt: skip
    if not (run_dir / "train.json").exists():
        log("cost: the first seed's drl run is missing; skipped")
        return None
    return cached(path, want, lambda: _measure_cost(cfg, run_dir, log))


def _measure_cost(cfg: ReportConfig, run_dir: Path, log: Callable[[str], None]) -> dict:
    from training.bundles import load_drl_run

    mod = _load_cost_module()
    _, model, _ = load_drl_run(run_dir)
    nets = {"teacher": model.teacher, "student": model.student}
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    for r in range(cfg.cost_rounds):
        for name, net in nets.items():
            m = mod.measure(net, cfg.cost_candidates, cfg.cost_k, cfg.cost_requests, seed=r)
            if name not in res or m["ms_per_request"] < res[name]["ms_per_request"]:
                m["ms_rounds"] = res.get(name, {}).get("ms_rounds", []) + [m["ms_per_request"]]
                res[name] = m
            else:
                res[name]["ms_rounds"].append(m["ms_per_request"])
    t, s = res["teacher"], res["student"]
    keys = ("parameters", "parameters_without_embeddings", "bytes_on_disk", "bytes_in_memory",
            "macs_per_request", "ms_per_request")  # fmt: skip
    out = {
        "teacher": t,
        "student": s,
        "student_over_teacher": {k: s[k] / t[k] for k in keys},
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    r = out["student_over_teacher"]
    log(
        f"cost: student/teacher bytes {r['bytes_in_memory']:.3f}, MACs {r['macs_per_request']:.3f}"
        f", ms {r['ms_per_request']:.3f} ({t['ms_per_request']:.1f} vs {s['ms_per_request']:.1f})"
    )
    return out
