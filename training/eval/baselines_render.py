"""The baselines report's Markdown (:func:`build_report`: ``report.md`` and ``summary.json``
from the seeds' summaries, through :mod:`training.eval.baselines_claims`); the plots are in
:mod:`training.eval.baselines_plots`.

Aggregation over seeds: a table cell is the mean over seeds of the per-seed value, ``± std``
the sample standard deviation over seeds. Online cells also carry a 95% interval of that mean
from the within-seed sampling error: with per-seed half-widths ``h_s`` (seeds independent),
``h = sqrt(sum_s h_s^2) / S``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.data.pipeline import code_version
from training.eval.baselines_claims import ONLINE_METRICS, aggregate, findings, sanity_checks
from training.eval.baselines_plots import write_plots
from training.eval.baselines_run import EvalConfig
from training.eval.samples import MMRF_WEIGHTS, WATCH_NORM_S
from training.harness.claims import failed_checks
from training.harness.data import world_fingerprint
from training.harness.render import (
    ci,
    compact,
    findings_section,
    json_block,
    mmss,
    num,
    para,
    pct,
    pm,
    status,
)
from training.harness.runfolder import write_text

__all__ = ["build_report"]


def _verdict(ok: bool) -> str:
    return status("PASS" if ok else "FAIL")


def build_report(
    summaries: Sequence[Mapping[str, Any]],
    cfg: EvalConfig,
    out: str | Path,
    preset_name: str,
    wall_seconds: float | None = None,
    runs_dir: str | Path | None = None,
    command: str | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Write ``report.md``, PNG plots and ``summary.json`` into ``out``; returns the report's
    path and the failed sanity checks that ``cfg.expected_findings`` does not declare."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(summaries, cfg)
    plots = write_plots(agg, cfg, out)
    s0 = summaries[0]
    versions = sorted({s["code_version"] for s in summaries})
    lines: list[str] = []
    w = lines.append
    checks = sanity_checks(agg)
    failed = failed_checks(checks, cfg.expected_findings)
    para(w, f"# Baselines report: `{preset_name}` world, seeds {', '.join(map(str, agg['seeds']))}")
    findings_section(w, findings(agg, checks, cfg))
    para(w, "## Setup")
    cmd = command or (f"ranker report --preset {preset_name} --seeds "
                      f"{' '.join(map(str, agg['seeds']))} --out {out}")  # fmt: skip
    w(f"- Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `{cmd}`")
    w(f"- Code version: `{code_version()}` (runs: {', '.join(f'`{v}`' for v in versions)})")
    sims = [s.get("sim_source") for s in summaries]
    data_sims = [s["dataset"].get("sim_source") or "unknown" for s in summaries]
    w(f"- Simulator source sha1 (training/sim/*.py) per seed: runs {', '.join(map(str, sims))}; "
      f"datasets {', '.join(data_sims)}"
      + ("" if len(set(sims)) == 1 else " — **seeds ran different simulator code**"))  # fmt: skip
    if runs_dir is not None:
        w(f"- Run folders (checkpoints, per-session online results): `{runs_dir}`")
    ds = s0["dataset"]
    w(f"- World: preset `{cfg.world_preset}`"
      + (f", overrides {dict(cfg.world_overrides)}" if cfg.world_overrides else "")
      + f"; {s0['world']['n_users']:,} users, {s0['world']['n_items']:,} items, "
      f"{s0['world']['n_days']} days, {s0['world']['n_candidates']} candidates, "
      f"K = {s0['world']['list_size']}; split days train {ds['split_days']['train']}, "
      f"valid {ds['split_days']['valid']}, test {ds['split_days']['test']}")  # fmt: skip
    imps = ", ".join(f"seed {s['seed']}: {s['dataset']['counts']['impressions']:,}"
                     for s in summaries)  # fmt: skip
    para(w, f"- Logged impressions per world: {imps}")
    para(w, "## Timing")
    _timing_section(w, agg, wall_seconds)
    w("")
    para(w, "## Sanity checks")
    _sanity_section(w, agg, cfg, checks)
    w("")
    para(w, "## Offline (test split)")
    _offline_section(w, agg, cfg, summaries)
    w("")
    para(w, f"![AUC per model]({plots['auc']})")
    para(w, "## Online (simulated A/B, common random numbers)")
    _online_section(w, agg, cfg, summaries)
    w("")
    para(w, f"![ACN per arm]({plots['acn']})")
    para(w, f"![Relative change vs logging]({plots['relative']})")
    para(w, "## Off-policy estimate (NCIS) against the online truth")
    _ncis_section(w, agg, cfg)
    w("")
    para(w, f"![NCIS vs online]({plots['ncis']})")
    para(w, "## Configuration")
    _config_section(w, cfg, summaries)
    w("")
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    small = {
        "preset": preset_name,
        "config": cfg.to_dict(),
        "world": world_fingerprint(s0["world"]),
        "sanity_checks": checks,
        "code_version": code_version(),
        "run_code_versions": versions,
        "wall_seconds": wall_seconds,
        **agg,
    }
    write_text(out / "summary.json", json.dumps(small, indent=1, sort_keys=True))
    return path, failed


def _timing_section(w: Callable[[str], None], agg: Mapping[str, Any], wall: float | None) -> None:
    tm = agg["timing"]
    stages = ["generate", "data", "train", "offline", "ncis_temperature", "online", "ncis"]
    w("Compute time of each stage as recorded when it ran (min:s; 2 shared CPU cores, torch on "
      "1 thread):")  # fmt: skip
    w("")
    w("| seed | " + " | ".join(stages) + " | total |")
    w("|---|" + "---:|" * (len(stages) + 1))
    for seed, t in zip(agg["seeds"], tm, strict=True):
        w(f"| {seed} | " + " | ".join(mmss(t[s]) for s in stages) + f" | {mmss(t['total'])} |")
    total = sum(t["total"] for t in tm)
    para(w, "| all | " + " | ".join(mmss(sum(t[s] for t in tm)) for s in stages)
      + f" | **{mmss(total)}** |")  # fmt: skip
    w(f"The stage times sum to **{mmss(total)}**: the time to build this report from nothing "
      "(dataset generation included), each stage timed in the run that computed it.")  # fmt: skip
    if wall is not None:
        w(f"Wall clock of the command that wrote this file: {mmss(wall)} (stages found "
          "finished in the run folders are loaded, not recomputed).")  # fmt: skip


def _sanity_section(
    w: Callable[[str], None], agg: Mapping[str, Any], cfg: EvalConfig,
    checks: Sequence[Mapping[str, Any]],
) -> None:  # fmt: skip
    para(
        w,
        "A failed check makes `ranker report` exit non-zero unless it is declared an expected "
        f"finding (`--budget expected_findings=...`; now: {', '.join(cfg.expected_findings)}).",
    )
    w("| check | measured | verdict |")
    w("|---|---|---|")
    titles = {"acn": "online ACN (clicks/user)", "cpr": "online clicks/request"}
    for key, o in agg["ordering"].items():
        w(
            f"| {titles[key]}: {o['oracle_arm']} > best baseline > random "
            f"| {o['oracle_arm']} {compact(o['oracle']['mean'])} > {o['best_baseline']} "
            f"{compact(o['best']['mean'])} > random {compact(o['random']['mean'])}; per seed "
            f"{sum(o['per_seed_ok'])}/{len(o['per_seed_ok'])} | {_verdict(o['pass'])} |"
        )
    for pol, n in agg["ncis"].items():
        bias = n["bias"]
        what = (
            "NCIS(logging) on its own logs = online logging clicks/request"
            if pol == "logging"
            else f"NCIS({pol}) = online {pol} clicks/request (estimator bias)"
        )
        w(
            f"| {what} | NCIS {num(n['ncis']['mean'])} vs online {num(n['online']['mean'])}: "
            f"bias {num(bias['mean'], 4)} [{num(bias['low'], 4)}, {num(bias['high'], 4)}] "
            f"({pct(n['rel_bias_pct'][0])}); per seed {sum(n['agrees_per_seed'])}/"
            f"{len(n['agrees_per_seed'])} within interval | {_verdict(n['agrees'])} |"
        )
    w("")
    w("Verdicts: an ordering must hold in the mean and in every seed (best baseline = the "
      "trained model, greedy, with the highest mean of that metric). On clicks per user the "
      "reference is `oracle_lt` (greedy on the true click probability + 0.1 × the true "
      "satisfaction logit): the myopic click `oracle` fills lists with clickbait, whose low "
      "satisfaction ends sessions early, so it is not an upper reference for clicks per user "
      "(tests/training/test_online.py shows the same); on clicks per request it is. An NCIS "
      "check passes when the 95% interval of "
      "NCIS − online (seeds pooled, see the NCIS section) contains 0; for the two stochastic "
      "policies a FAIL is the estimator's measured bias, not a bug to tune away.")  # fmt: skip


def _offline_section(
    w: Callable[[str], None], agg: Mapping[str, Any], cfg: EvalConfig, summaries: Sequence
) -> None:
    off = agg["offline"]
    n_train = off["fm"]["n_train"]
    n_test = off["fm"]["n_test"]
    para(w, f"Click AUC, RelaImpr over FM and GAUC (per-user AUC weighted by impressions) on a "
      f"user sample of the test day ({', '.join(f'{n:,}' for n in n_test)} impressions per "
      f"seed); models trained on {', '.join(f'{n:,}' for n in n_train)} train impressions "
      f"(sessions sampled), early-stopped on the valid day. Mean ± std over "
      f"{len(agg['seeds'])} seeds. AUC like / long_view: the same scores ranked against those "
      f"aspects.")  # fmt: skip
    w("| model | AUC | RelaImpr | GAUC | AUC like | AUC long_view | epochs | params |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in cfg.models:
        r = off[m]
        w(f"| {m} | {pm(r['auc'])} | {pm(r['relaimpr'], 2)} % "
          f"| {pm(r['gauc'])} | {pm(r['auc_like'], 3)} | {pm(r['auc_long_view'], 3)} "
          f"| {','.join(map(str, r['epochs']))} | {r['n_params']:,} |")  # fmt: skip
    w("")
    ws = ", ".join(f"{k} {v:+g}" for k, v in MMRF_WEIGHTS.items())
    w(f"`*_weighted`: label click, sample weight `max(0, 1 + sum_a c_a x_a)` with {ws} "
      f"(watch_time as min(seconds / {WATCH_NORM_S:g}, 1)). `bc`: DeepFM trained to tell "
      f"impressed (1) from non-impressed (0) logged candidates ({cfg.bc_negatives} negatives "
      f"sampled per request at a random slot, weighted to stand for all), i.e. behaviour "
      f"cloning of the logging policy; its AUC is its click AUC.")  # fmt: skip


def _online_section(
    w: Callable[[str], None], agg: Mapping[str, Any], cfg: EvalConfig, summaries: Sequence
) -> None:
    info = summaries[0]["online"]["info"]
    n_sess = [s["online"]["info"]["n_sessions"] for s in summaries]
    temps = {k: [s["online"]["info"]["temperatures"][k] for s in summaries]
             for k in info["temperatures"]}  # fmt: skip
    w(f"Days {info['days']} (the test days), fresh sessions (env seed offset "
      f"{info['seed_offset']}), a random population of {info['n_users']:,} users per world "
      f"({', '.join(map(str, n_sess))} sessions per seed), every arm in its own env with the same "
      f"random numbers. Trained models act greedily slot by slot"
      + (f" over a shortlist of the {cfg.shortlist} best candidates by slot-0 score"
         if cfg.shortlist else "")
      + "; `<model>@T` samples each slot from softmax(score / T) (T chosen on valid for NCIS: "
      + ", ".join(f"{k} T = {v}" for k, v in temps.items())
      + "). `oracle`: greedy on the world's true click probability (myopic); `oracle_lt`: "
      "greedy on the true click probability + 0.1 × the true satisfaction logit.")  # fmt: skip
    agree = [s["online"]["info"].get("shortlist_agreement") or {} for s in summaries]
    if any(agree):
        parts = []
        for name in agree[0]:
            same = [a[name]["same_list"] for a in agree if name in a]
            items = [a[name]["same_items"] for a in agree if name in a]
            parts.append(f"{name}: {100 * np.mean(same):.0f}% identical lists, "
                         f"{100 * np.mean(items):.0f}% same items")  # fmt: skip
        w(f"Shortlist check (first requests of the test day, full greedy vs shortlist): "
          f"{'; '.join(parts)}.")  # fmt: skip
    w("")
    para(
        w,
        "Mean over seeds, with the 95% interval of that mean (per-user / per-session normal "
        "intervals, seeds pooled):",
    )
    _online_table(w, agg, "value", lambda v: ci(v, fmt=compact))
    w("")
    para(
        w,
        "Relative change vs the `logging` arm (%), paired over the same users / sessions "
        "(delta-method intervals, seeds pooled):",
    )
    _online_table(w, agg, "rel", lambda r: ci(r, 2, as_pct=True))


def _online_table(
    w: Callable[[str], None], agg: Mapping[str, Any], key: str, cell: Callable[[Any], str]
) -> None:
    """A table of every arm (rows) and online metric (columns): ``cell`` of each one's ``key``."""
    w("| arm | " + " | ".join(ONLINE_METRICS.values()) + " |")
    w("|---|" + "---:|" * len(ONLINE_METRICS))
    for a in agg["arms"]:
        w(f"| {a} | " + " | ".join(cell(agg["online"][a][m][key]) for m in ONLINE_METRICS) + " |")


def _ncis_section(w: Callable[[str], None], agg: Mapping[str, Any], cfg: EvalConfig) -> None:
    para(w, "NCIS estimates clicks per logged *request* (one slate) from the test-day logs; the "
      "online value is the same policy's clicks per request in the online run (total clicks / "
      "total requests), both with user-cluster bootstrap 95% intervals. Slate probabilities "
      "are products over slots: the logging policy's logged propensities (exact: it is a "
      "sequential sampler), and for `<model>@T` the softmax(score / T) probability of the "
      "logged item among the candidates not yet placed, given the logged prefix (exact for "
      "these sequential samplers). Ratios in log space; weights min(c, pi/mu). On about "
      f"{cfg.ncis_requests:,} valid-day requests, T maximises the uncapped ESS over the grid "
      f"{list(cfg.temperatures)}, and c is the largest quantile of that T's ratios (1, 0.999, "
      f"0.995, ..., 0.5) whose capped weights keep ESS >= {cfg.cap_min_ess_share:g} n. "
      "bias = NCIS − online, interval sqrt(h_ncis² + h_online²). "
      "The logging policy's NCIS uses every test-day request; the others a user sample of "
      f"about {cfg.ncis_requests:,} requests.")  # fmt: skip
    w("| policy | T | cap q | NCIS | online | bias | rel. bias | ESS / n | clipped | within |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for pol, n in agg["ncis"].items():
        e, o, b = n["ncis"], n["online"], n["bias"]
        temps = [t for t in n["temperature"] if t is not None]
        ess = "; ".join(f"{x:,.0f}/{m:,}" for x, m in zip(n["ess"], n["n"], strict=True))
        clip = ", ".join(f"{100 * c:.1f}%" for c in n["clipped_fraction"])
        caps = ",".join(f"{q:g}" for q in n["cap_quantile"] if q is not None) or "-"
        w(f"| {pol} | {','.join(f'{t:g}' for t in temps) or '-'} | {caps} "
          f"| {ci(e, sign=False)} | {ci(o, sign=False)} | {ci(b, sign=False)} "
          f"| {pct(n['rel_bias_pct'][0])} | {ess} | {clip} "
          f"| {sum(n['agrees_per_seed'])}/{len(n['agrees_per_seed'])} seeds |")  # fmt: skip
    lg = agg["ncis"].get("logging")
    if lg:
        same = [abs(a - b) for a, b in zip(lg["ncis"]["per_seed"], lg["mean_logged_reward"],
                                           strict=True)]  # fmt: skip
        w("")
        w(f"NCIS(logging) equals the mean logged clicks per request in every seed (largest "
          f"difference {max(same):.2e}): all weights are 1 when target = behaviour.")  # fmt: skip


def _config_section(w: Callable[[str], None], cfg: EvalConfig, summaries: Sequence) -> None:
    json_block(w, "Evaluation config (`training.eval.baselines_run.EvalConfig`)", cfg.to_dict())
    json_block(w, "World config (seed replaced per run)", summaries[0]["world"])
