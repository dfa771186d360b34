"""The ``ranker`` command: one entry point, a subcommand per job.

    ranker simulate --preset tiny --out data/tiny        # a simulated world's impression log
    ranker simulate --preset default --set n_days=14 --out data/default
    ranker kuairand --logs 'path/log_*.csv' --users U.csv --videos V.csv --out data/kr
    ranker import --mapping examples/bandit_log/mapping.toml --out data/bandit   # any layout
    ranker validate data/tiny                            # check a whole dataset, or shards
    ranker info data/tiny                                # what a dataset holds

Errors in what the user passed (bad config values, malformed logs, existing outputs) end
with a one-line message and exit status 2, not a traceback; a training run whose loss turns NaN
or infinite stops at that step with a one-line message and exit status 3.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from contract.bundle import BundleError
from contract.schema import LogValidationError, validate_log_file
from training.data import validate
from training.data.pipeline import Dataset, DatasetError
from training.sim.config import ConfigError, parse_overrides, preset

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Handler] = {}


def _non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} < 0: give 0 or more")
    return v


def _cmd_simulate(args: argparse.Namespace) -> int:
    from training.sim.generate import generate_dataset

    cfg = preset(args.preset).with_overrides(parse_overrides(args.set or []))
    meta = generate_dataset(
        cfg,
        args.out,
        overwrite=args.overwrite,
        shard_rows=args.shard_rows,
        valid_days=args.valid_days,
        test_days=args.test_days,
        progress=not args.no_progress,
        preset_name=args.preset,
    )
    c = meta["counts"]
    print(
        f"wrote {args.out}: {c['impressions']:,} impressions, {c['rows']:,} rows, "
        f"{c['sessions']:,} sessions, {len(meta['shards'])} shards in {meta['seconds']} s"
    )
    return 0


def _cmd_kuairand(args: argparse.Namespace) -> int:
    from training.data.kuairand import convert_kuairand

    meta = convert_kuairand(
        logs=args.logs,
        users_csv=args.users,
        videos_csv=args.videos,
        out=args.out,
        session_gap_minutes=args.session_gap_minutes,
        list_size=args.list_size,
        overwrite=args.overwrite,
        valid_days=args.valid_days,
        test_days=args.test_days,
        progress=not args.no_progress,
    )
    c = meta["counts"]
    print(f"wrote {args.out}: {c['impressions']:,} impressions, {c['sessions']:,} sessions")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from training.data.importer import import_log, summary_lines

    report = import_log(args.mapping, args.out, overwrite=args.overwrite,
                        shard_rows=args.shard_rows, progress=not args.no_progress)  # fmt: skip
    print(f"wrote {args.out} (report: {args.out}/import.json)")
    for line in summary_lines(report):
        print("  " + line)
    return 0


def _cmd_drl_train(args: argparse.Namespace) -> int:
    from training.drl.train import DRLConfig, run
    from training.harness.config import DRL_RULES, apply_overrides, check_device

    cfg = apply_overrides(DRLConfig(), parse_overrides(args.set or []), "drl config", DRL_RULES)
    device = check_device(args.device)
    validate.check_dataset(args.data)  # a bad dataset fails before anything is written
    out = Path(args.out)
    if _finished_run(out, cfg, args.resume):
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    s = _train_in_run_folder(out, args, lambda: run(args.data, out, cfg, device=device,
                             resume=args.resume, progress=not args.no_progress))  # fmt: skip
    if s.get("rank", 0) == 0:
        msg = f"trained {s['instances']:,} instances in {s['seconds']} s ({s['instances_per_s']}/s)"
        if "eval" in s:
            e = s["eval"]
            msg += f"; test AUC teacher {e['auc_teacher']:.4f}, student {e['auc_student']:.4f}"
        print(msg)
    return 0


def _train_in_run_folder(out: Path, args: argparse.Namespace, train: Callable[[], dict]) -> dict:
    """``train()`` with ``out`` claimed as a run folder (``--resume`` / ``--overwrite``); under
    torchrun rank 0 owns the folder and every other rank makes the same refusal, so no rank
    waits for a peer that has exited (rank 0 writes nothing before the first collective)."""
    from training.harness.runfolder import output_folder

    if int(os.environ.get("RANK", "0")) != 0:
        if any(out.glob("*")) and not (args.resume or args.overwrite):
            raise FileExistsError(f"{out} exists; pass --resume or --overwrite")
        return train()
    with output_folder(out, resume=args.resume, overwrite=args.overwrite, what="run folder",
                       resumable=lambda p: (p / "checkpoint.pt").exists()):  # fmt: skip
        return train()


def _finished_run(out: Path, cfg: object, resume: bool) -> bool:
    """``--resume`` into a run folder: True (and says so) when ``out`` is a finished run of
    ``cfg``; a finished run or a checkpoint of another config is refused (ConfigError).
    drl-train's and mmrf-train's rule."""
    import dataclasses

    from training.harness.runfolder import jsonable, read_json

    want = jsonable(dataclasses.asdict(cfg))  # type: ignore[call-overload]
    done = out / "train.json"
    if resume and done.exists():
        info = read_json(done)
        if info.get("config") != want:
            raise ConfigError(f"{out} is a finished run of another config "
                              f"({_config_differences(info.get('config'), want)}); choose "
                              "another --out or the run's --set values")  # fmt: skip
        print(f"{out} is a finished run ({info['instances']:,} instances, {info['steps']:,} "
              "steps); nothing to resume, nothing changed")  # fmt: skip
        return True
    if resume and (out / "checkpoint.pt").exists():
        import torch

        have = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
        if jsonable(have.get("cfg")) != want:
            raise ConfigError(f"{out}/checkpoint.pt is of another config "
                              f"({_config_differences(jsonable(have.get('cfg')), want)}); "
                              "choose another --out or the run's --set values")  # fmt: skip
    return False


def _config_differences(have: object, want: dict) -> str:
    """``key: run's value -> asked value`` for the keys two config dicts differ in (at most
    five named), or what the run's record is when it is not a config dict."""
    if not isinstance(have, dict):
        return "the run records no config"
    keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    shown = [f"{k}: {have.get(k)!r} -> {want.get(k)!r}" for k in keys[:5]]
    return ", ".join(shown) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _cmd_mmrf_train(args: argparse.Namespace) -> int:
    """MMRF, its ablations and the multi-agent baselines (training.mmrf.train.run): the run
    folder rules of drl-train (refuse an existing one, --resume, --overwrite)."""
    from training.harness.config import check_device
    from training.mmrf.train import build_config, run

    cfg = build_config(args.variant, args.set or [])
    device = check_device(args.device)
    if args.checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every {args.checkpoint_every}: must be >= 1")
    validate.check_dataset(args.data)  # a bad dataset fails before anything is written
    out = Path(args.out)
    if _finished_run(out, cfg, args.resume):
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    s = _train_in_run_folder(out, args, lambda: run(
        args.data, out, cfg, device=device, resume=args.resume, progress=not args.no_progress,
        checkpoint_every=args.checkpoint_every,
        eval_split=None if args.eval_split == "none" else args.eval_split,
        eval_impressions=args.eval_impressions))  # fmt: skip
    if s.get("rank", 0) != 0:
        return 0
    msg = f"trained {s['instances']:,} instances in {s['seconds']} s ({s['instances_per_s']}/s)"
    e = s.get("eval") or {}
    if e.get("main_gauc_click") is not None:
        msg += f"; {s['eval_split']} GAUC click {e['main_gauc_click']:.4f}"
    if e.get("main_corr_watch_time") is not None:
        msg += f", watch-time correlation {e['main_corr_watch_time']:.4f}"
    print(msg)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    if not 0.0 <= args.max_missing_share <= 1.0:
        raise ConfigError(f"--max-missing-share {args.max_missing_share} must be in [0, 1]")
    failed = False
    total = files = 0
    for p in args.paths:
        path = Path(p)
        if path.is_dir():  # a dataset folder: the whole-dataset check
            report = validate.validate_dataset(path, max_missing_share=args.max_missing_share)
            problems = [str(x) for x in report.problems]
            if report.n_problems > len(problems):
                problems.append(f"... and {report.n_problems - len(problems)} more problems")
            if not problems:
                print(f"ok: {report.summary()}")
        else:  # a shard file: the per-table contract
            try:
                total += validate_log_file(path)
                files += 1
                problems = []
            except LogValidationError as e:
                problems = [str(x) for x in e.problems] or [str(e)]
        for line in problems:
            print(f"ranker validate: error: {line}", file=sys.stderr)
        failed = failed or bool(problems)
    if files and not failed:
        print(f"ok: {total:,} rows valid in {files} files")
    return 2 if failed else 0


def _cmd_info(args: argparse.Namespace) -> int:
    ds = Dataset.open(args.path)
    m = ds.meta
    out = {
        "source": m.get("source"),
        "preset": m.get("preset"),
        "code_version": m.get("code_version"),
        "counts": m.get("counts"),
        "split_shards": {k: len(v) for k, v in m["split"].items()},
        # what the log declares (README "Bring your own logs"), defaults where it does not
        "slots": m.get("slots", "contiguous"),
        "aspects": ", ".join(ds.aspects),
        "propensity": m.get("propensity", "conditional"),
        "fields": ", ".join(ds.spec.names()),
    }
    print(json.dumps(out, indent=2))
    return 0


def _report_kwargs(args: argparse.Namespace) -> dict:
    """What both report commands take alike: folders, world overrides, folder flags."""
    return {"runs_dir": args.runs, "data_root": args.datasets,
            "world_overrides": parse_overrides(args.set or []), "resume": args.resume,
            "overwrite": args.overwrite, "progress": not args.no_progress,
            "command": _command_line()}  # fmt: skip


def _data_report(kind: str, args: argparse.Namespace) -> int:
    """``--data DIR``: the offline parts on a logged dataset (training.eval.data_report)."""
    from training.eval.data_report import run_data_report

    given = [flag for flag, v in (("--set", args.set), ("--datasets", args.datasets),
             ("--only", getattr(args, "only", None)), ("--scale", getattr(args, "scale", None)))
             if v]  # fmt: skip
    if given:
        raise ConfigError(f"--data DIR reports on a logged dataset; {', '.join(given)} "
                          "apply to simulated worlds only")  # fmt: skip
    run_data_report(kind, args.data, args.seeds, args.out, runs_dir=args.runs,
                    budget_overrides=parse_overrides(args.budget or []), resume=args.resume,
                    overwrite=args.overwrite, progress=not args.no_progress,
                    command=_command_line())  # fmt: skip
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    if args.data:
        return _data_report("baselines", args)
    from training.eval.report import run_report

    budget = parse_overrides(args.budget or [])
    run_report(args.preset, args.seeds, args.out, budget_overrides=budget, **_report_kwargs(args))
    return 0


def _cmd_drl_report(args: argparse.Namespace) -> int:
    if args.data:
        return _data_report("drl", args)
    from training.drl.report import run_drl_report

    budget = parse_overrides(args.budget or [])
    run_drl_report(args.preset, args.seeds, args.out, scale=args.scale, only=args.only,
                   overrides=budget, **_report_kwargs(args))  # fmt: skip
    return 0


def _cmd_mmrf_report(args: argparse.Namespace) -> int:
    from training.mmrf.report import run_mmrf_report

    budget = parse_overrides(args.budget or [])
    run_mmrf_report(args.preset, args.seeds, args.out, budget_overrides=budget,
                    **_report_kwargs(args))  # fmt: skip
    return 0


def _command_line() -> str | None:
    return "ranker " + " ".join(sys.argv[1:]) if sys.argv[1:] else None


def _cmd_export(args: argparse.Namespace) -> int:
    from training.bundles import export_runs

    m = export_runs(args.drl, args.baseline, args.data, args.out, mmrf=args.mmrf, name=args.name,
                    overwrite=args.overwrite)  # fmt: skip
    _print_bundle(args.out, m)
    return 0


def _cmd_default_bundle(args: argparse.Namespace) -> int:
    m = default_bundle(args.out, args.data, args.work, overwrite=args.overwrite,
                       progress=not args.no_progress)  # fmt: skip
    _print_bundle(args.out, m)
    return 0


def default_bundle(
    out: str | Path,
    data: str | Path | None = None,
    work: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    cfg: Any = None,
) -> dict:
    """``ranker default-bundle``: :func:`training.bundles.build_default_bundle` into ``out``,
    with the dataset in ``data`` and the training runs in ``work`` when they are named (reused
    by a rerun), otherwise in a temporary folder removed at the end, so that the command
    writes nothing outside ``out`` and the folders it is given. ``cfg``: the recipe
    (:class:`training.bundles.DefaultBundleConfig`; default: the committed bundle's)."""
    import tempfile

    from training.bundles import DefaultBundleConfig, build_default_bundle

    with tempfile.TemporaryDirectory(prefix="ranker-default-bundle-") as tmp:
        return build_default_bundle(
            out, data=data or Path(tmp) / "data", work=work or Path(tmp) / "work",
            overwrite=overwrite, progress=progress, cfg=cfg or DefaultBundleConfig(),
        )  # fmt: skip


def _print_bundle(out: str, m: dict) -> None:
    print(f"wrote {out}: bundle {m['bundle_version']}")
    for name, e in m["models"].items():
        worst = max(e["parity_max_abs_err"].values())
        print(f"  {name:20s} {e['model_version']}  {e['params']:,} params  "
              f"{e['bytes'] / 1e6:.2f} MB  max |onnx - torch| {worst:.1e}")  # fmt: skip


#: ``--only`` groups of ``drl-report`` (training.drl.report.plan.GROUPS; a test keeps them equal,
#: listed here so that ``--help`` does not import torch).
DRL_REPORT_GROUPS = ("main", "ablations", "sweeps", "hrl", "pointwise", "control", "online", "cost",
                     "tau", "horizon", "ceiling")  # fmt: skip
PRESETS_HELP = "tiny | default | large (default: tiny)"
#: ``mmrf-train --variant`` values (training.mmrf.train.VARIANTS; a test keeps them equal,
#: listed here so that ``--help`` does not import torch).
MMRF_VARIANTS = ("mmrf", "mmrf-co", "mmrf-da", "mmrf-ns", "pareto", "tscac", "massa")


def _add_folder_flags(p: argparse.ArgumentParser, what: str, resume: str) -> None:
    p.add_argument("--resume", action="store_true", help=f"an existing {what}: {resume}")
    p.add_argument("--overwrite", action="store_true",
                   help=f"an existing {what}: replace it (without --resume or --overwrite an "
                   "existing one is refused)")  # fmt: skip


def _add_report_args(p: argparse.ArgumentParser, budget: str) -> None:
    p.add_argument("--preset", default="tiny", help=PRESETS_HELP)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="world and training seeds (default: 0 1 2)")  # fmt: skip
    p.add_argument("--out", required=True,
                   help="report folder to create (report.md, PNGs, summary.json; runs and "
                   "datasets under it unless --runs / --datasets say otherwise)")  # fmt: skip
    p.add_argument(
        "--runs",
        default=None,
        help="folder of the training runs, reused across reports (default: <out>/runs)",
    )
    p.add_argument("--datasets", default=None,
                   help="folder of the generated world datasets, reused across reports "
                   "(default: <out>/datasets)")  # fmt: skip
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="world config override, as for simulate, e.g. n_users=500")  # fmt: skip
    p.add_argument("--budget", action="append", metavar="KEY=VALUE", help=budget)
    _add_folder_flags(p, "report folder", "reuse its finished runs and rewrite the report")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ranker", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="simulate a world and write its impression log")
    s.add_argument("--preset", default="tiny", help=PRESETS_HELP)
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a world config value, e.g. n_days=14 or mechanisms.drift=false",
    )
    s.add_argument("--out", required=True, help="dataset folder to create")
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    s.add_argument("--shard-rows", type=int, default=2_000_000,
                   help="rows per Parquet shard at most (default: 2,000,000)")  # fmt: skip
    s.add_argument("--valid-days", type=int, default=1, help="days of the valid split (default: 1)")
    s.add_argument("--test-days", type=int, default=1,
                   help="last days held out as the test split (default: 1)")  # fmt: skip
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    _COMMANDS["simulate"] = _cmd_simulate

    k = sub.add_parser("kuairand", help="convert KuaiRand log files into an impression log")
    k.add_argument("--logs", nargs="+", required=True, help="log_standard_*.csv / log_random_*.csv")
    k.add_argument("--users", required=True, help="user_features_*.csv")
    k.add_argument("--videos", required=True, help="video_features_basic_*.csv")
    k.add_argument("--out", required=True, help="dataset folder to create")
    k.add_argument("--session-gap-minutes", type=float, default=30.0,
                   help="a pause longer than this starts a new session (default: 30)")  # fmt: skip
    k.add_argument(
        "--list-size",
        type=int,
        default=10,
        help="consecutive rows of a session grouped into one request",
    )
    k.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    k.add_argument("--valid-days", type=int, default=1, help="days of the valid split (default: 1)")
    k.add_argument("--test-days", type=int, default=1,
                   help="last days held out as the test split (default: 1)")  # fmt: skip
    k.add_argument("--no-progress", action="store_true", help="no progress bar")
    _COMMANDS["kuairand"] = _cmd_kuairand

    im = sub.add_parser("import", help="import an impression log of any layout (CSV/Parquet) "
                        "through a column mapping file")  # fmt: skip
    im.add_argument("--mapping", required=True,
                    help="mapping file (TOML or JSON): the log's files and columns, slots, "
                    "propensity kind, aspects, user and item fields (README: Bring your own "
                    "logs)")  # fmt: skip
    im.add_argument("--out", required=True, help="dataset folder to create")
    im.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    im.add_argument("--shard-rows", type=int, default=2_000_000,
                    help="rows per Parquet shard at most (default: 2,000,000)")  # fmt: skip
    im.add_argument("--no-progress", action="store_true", help="no progress output")
    _COMMANDS["import"] = _cmd_import

    d = sub.add_parser("drl-train", help="train the DRL-Rec teacher and student (torchrun-ready)")
    d.add_argument("--data", required=True, help="dataset folder (from simulate or kuairand)")
    d.add_argument("--out", required=True, help="run folder to create (checkpoint.pt, train.json)")
    d.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a DRLConfig field, e.g. n_explore=100 or use_kl=false (checked: "
        "gamma in [0, 1), sizes >= 1, known enum values)",
    )
    d.add_argument("--device", default="cpu", help="cpu, cuda, cuda:<i> or mps (default: cpu)")
    d.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    _add_folder_flags(d, "run folder", "continue from its checkpoint.pt; a finished run is "
                      "reported and left unchanged")  # fmt: skip
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    _COMMANDS["drl-train"] = _cmd_drl_train

    mt = sub.add_parser("mmrf-train", help="train MMRF, an ablation, or Pareto / TSCAC / MASSA")
    mt.add_argument("--data", required=True, help="dataset folder (from simulate or kuairand)")
    mt.add_argument("--out", required=True, help="run folder to create (checkpoint.pt, "
                    "reward_scale.json, train.json)")  # fmt: skip
    mt.add_argument("--variant", default="mmrf", choices=MMRF_VARIANTS,
                    help="mmrf; ablations mmrf-co, mmrf-da, mmrf-ns; baselines pareto, tscac, "
                    "massa (default: mmrf)")  # fmt: skip
    mt.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override an MMRFConfig field, e.g. max_instances=20000 or "
                    "tscac_stage1_steps=200 (checked before any work)")  # fmt: skip
    mt.add_argument("--device", default="cpu", help="cpu, cuda, cuda:<i> or mps (default: cpu)")
    mt.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default)")  # fmt: skip
    mt.add_argument("--checkpoint-every", type=int, default=500,
                    help="steps between checkpoints (default: 500)")  # fmt: skip
    mt.add_argument("--eval-split", default="valid", choices=("train", "valid", "test", "none"),
                    help="split of the offline figures in train.json (default: valid)")  # fmt: skip
    mt.add_argument("--eval-impressions", type=_non_negative_int, default=200_000,
                    help="impressions of those figures: whole sessions of a hashed share of the "
                    "split's users (0: the whole split; default: 200000)")  # fmt: skip
    _add_folder_flags(mt, "run folder", "continue from its checkpoint.pt; a finished run is "
                      "reported and left unchanged")  # fmt: skip
    mt.add_argument("--no-progress", action="store_true", help="no progress bar")
    _COMMANDS["mmrf-train"] = _cmd_mmrf_train

    v = sub.add_parser(
        "validate",
        help="check a whole dataset folder (what every trainer checks at start), or log shards "
        "against the schema; one line per problem, exit 2",
    )
    v.add_argument("paths", nargs="+", help="dataset folders (dataset.json), or Parquet log files")
    v.add_argument(
        "--max-missing-share", type=float, default=validate.DEFAULT_MAX_MISSING_SHARE,
        help="largest share of log rows whose user or item id may be missing from the side "
        f"tables (default: {validate.DEFAULT_MAX_MISSING_SHARE})",
    )  # fmt: skip
    _COMMANDS["validate"] = _cmd_validate

    i = sub.add_parser("info", help="summarise a dataset folder")
    i.add_argument("path", help="dataset folder")
    _COMMANDS["info"] = _cmd_info

    r = sub.add_parser("report", help="baselines: offline + online evaluation, Markdown report")
    _add_report_args(r, budget="EvalConfig override, e.g. models=fm,deepfm or online_users=200")
    r.add_argument("--data", default=None, metavar="DIR",
                   help="report on a logged dataset (from import, kuairand or simulate) instead "
                   "of simulated worlds: the offline parts only (online parts need a world); "
                   "--budget takes training.eval.data_report.DataReportConfig keys")  # fmt: skip
    _COMMANDS["report"] = _cmd_report

    dr = sub.add_parser("drl-report", help="DRL-Rec: Tables 2-4, Fig. 4, online A/B, Markdown")
    _add_report_args(dr, budget="ReportConfig override, e.g. max_instances=200000 or "
                     "online_users=4000")  # fmt: skip
    dr.add_argument("--scale", type=float, default=None, help="multiply the training budget")
    dr.add_argument(
        "--only", nargs="+", default=None, metavar="NAME",
        help="run only these runs or groups (" + ", ".join(DRL_REPORT_GROUPS) + "); the report "
        "shows every finished run it finds",
    )  # fmt: skip
    dr.add_argument("--data", default=None, metavar="DIR",
                   help="report on a logged dataset (from import, kuairand or simulate) instead "
                   "of simulated worlds: the offline parts only (online parts need a world); "
                   "--budget takes training.eval.data_report.DataReportConfig keys")  # fmt: skip
    _COMMANDS["drl-report"] = _cmd_drl_report

    mr = sub.add_parser("mmrf-report", help="MMRF: Tables 1-2 analogues, feedback model, Markdown")
    _add_report_args(mr, budget="MMRFReportConfig override (training.mmrf.report.plan), e.g. "
                     "rl_instances=100000 or online_users=800")  # fmt: skip
    _COMMANDS["mmrf-report"] = _cmd_mmrf_report

    e = sub.add_parser("export", help="export trained rankers to a verified ONNX model bundle")
    e.add_argument("--drl", required=True, help="a finished drl-train run folder")
    e.add_argument(
        "--baseline",
        default=None,
        help="a weighted Wide&Deep state dict (.pt, with its .json) for the baseline arm",
    )
    e.add_argument("--mmrf", default=None, help="an MMRF run folder: its actor as mmrf_watchtime")
    e.add_argument("--data", required=True, help="the dataset folder the runs trained on")
    e.add_argument("--out", required=True, help="bundle folder to write")
    e.add_argument("--name", default="bundle", help="bundle name (prefix of its version)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    _COMMANDS["export"] = _cmd_export

    db = sub.add_parser(
        "default-bundle",
        help="rebuild models/default: default world, DRL-Rec, weighted W&D, export",
    )
    db.add_argument("--out", default="models/default", help="bundle folder (models/default)")
    db.add_argument("--data", default=None,
                    help="dataset folder of the default world: used if it exists, simulated into "
                    "it if not (default: a temporary folder, removed at the end)")  # fmt: skip
    db.add_argument("--work", default=None,
                    help="folder of the training runs, reused by a rerun (default: a temporary "
                    "folder, removed at the end)")  # fmt: skip
    db.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    db.add_argument("--no-progress", action="store_true", help="no progress bars")
    # `ranker serve` and `ranker join-logs` are dispatched to service.cli by ranker_cli before
    # this parser runs (training never imports service); listed here so --help shows them.
    sub.add_parser("serve", help="run the ranking service (see `ranker serve --help`)")
    sub.add_parser("join-logs", help="join the service's feedback onto its exposure log "
                   "(see `ranker join-logs --help`)")  # fmt: skip
    _COMMANDS["default-bundle"] = _cmd_default_bundle
    return p


#: Exit status of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT, the shell's convention).
EXIT_INTERRUPTED = 130


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the command unwinds through its cleanup (a run folder it created
    and holds no finished work is removed) instead of dying where it stands."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    from training.divergence import EXIT_DIVERGED, DivergenceError
    from training.harness.claims import SanityError

    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"ranker {args.command}: interrupted (finished checkpoints are kept: --resume "
              "continues a run)", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    except SanityError as e:
        print(f"ranker {args.command}: {e}", file=sys.stderr)
        return 1
    except DivergenceError as e:  # a NaN/inf loss: not bad input, so not 2
        print(f"ranker {args.command}: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ConfigError, DatasetError, LogValidationError, FileNotFoundError, FileExistsError,
            BundleError) as e:  # fmt: skip
        print(f"ranker {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
