"""The offline report on a logged dataset: ``ranker report --data DIR``, ``ranker drl-report
--data DIR``.

A dataset from ``ranker import`` (or ``kuairand``, or a simulated one given as a folder) has no
world to run policies in, so only the offline parts run, per seed:

- ``report``: the point-wise baselines (:data:`DataReportConfig.models`, FM first), trained on
  the declared click aspect of the train split;
- ``drl-report``: DRL-Rec's teacher and student (:func:`training.drl.train.train` with the
  config's budget) and FM as the RelaImpr base.

Then, on the whole test split: AUC and GAUC of every model against each declared binary aspect
(absent aspects are skipped, and the report says which), RelaImpr over FM (click AUC), and NCIS
per declared aspect as the dataset's ``propensity`` allows (:func:`check_propensity`):

- ``conditional``: slate NCIS (a list's probability is the product of its rows'); the target
  is each point-wise model as a softmax policy over the logged candidates, slot by slot;
- ``marginal``: item-position NCIS (:func:`item_position_ncis`): per slot, the target's
  probability of the logged item at that slot (a softmax over the items table at that slot,
  the earlier slots as logged) over the logged marginal propensity, self-normalised per slot
  and summed over the slots; a product of marginals is never taken;
- ``unknown``: nothing propensity-weighted runs (a line says so).

The temperature of a target is the grid value whose importance weights have the largest
effective sample size; the cap is the :attr:`DataReportConfig.cap_quantile` quantile of the
weights. The online parts (simulated A/B tests, the click ceiling, serving cost on a world)
need a world and are skipped with a line saying so. Writes ``report.md`` and ``summary.json``
into ``--out`` (the run folders under ``<out>/runs`` unless ``--runs``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.schema import FEEDBACK
from training.eval.propensities import (
    check_propensity,
    dataset_propensity,
    ess,
    item_position_ncis,
    softmax,
)
from training.sim.config import ConfigError

ONLINE_SKIPPED = (
    "Online parts skipped: the simulated A/B tests, the click-AUC ceiling and the other "
    "measurements in a world need a world (--preset); --data is a logged dataset, so this "
    "report holds the offline parts only."
)


@dataclass(frozen=True)
class DataReportConfig:
    """Budget of a report on a dataset (``--budget KEY=VALUE``)."""

    models: tuple[str, ...] = ("fm", "wide_deep", "deepfm")
    """Point-wise baselines of ``ranker report --data`` (FM is always trained: the base)."""
    train_impressions: int = 0
    """Training impressions per model (a hashed share of sessions; 0: all)."""
    epochs: int = 3
    batch_size: int = 512
    lr: float = 2e-3
    drl_epochs: int = 4
    """DRL-Rec passes over the train split (``drl-report --data``)."""
    drl_instances: int = 0
    """DRL-Rec training instances at most (0: the epochs decide)."""
    n_explore: int = 100
    """DRL-Rec exploration candidates per state."""
    temperatures: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    cap_quantile: float = 0.99
    """NCIS cap: this quantile of the importance weights."""


# --------------------------------------------------------------------------------------------
# scores of the models


#: ``score(r, t, cand)``: ``(B, M)`` scores of candidates with ids ``cand (B, M, C)`` (item +
#: list fields) at slot ``t`` of requests ``r (B,)``.
Scorer = Callable[[np.ndarray, int, np.ndarray], np.ndarray]


def pointwise_scorer(model: Any, req: Any) -> Scorer:
    """A point-wise model's logits: its user and context ids with each candidate's."""
    import torch

    def score(r: np.ndarray, t: int, cand: np.ndarray) -> np.ndarray:
        b, m, _ = cand.shape
        uc = req.user_ctx[r]
        ids = np.concatenate([np.broadcast_to(uc[:, None], (b, m, uc.shape[1])), cand], axis=-1)
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(ids.reshape(b * m, -1))))
        return out.reshape(b, m).float().numpy()

    return score


def q_scorer(net: Any, req: Any, memory: int) -> Scorer:
    """A DRL-Rec network's ``Q(s_t, a)``: the state from the session's logged history before
    slot ``t`` of the request (the impressions before it, as :func:`impression_q` reads)."""
    import torch

    from training.drl.batches import history

    dev = next(net.parameters()).device

    def score(r: np.ndarray, t: int, cand: np.ndarray) -> np.ndarray:
        hist, mask = history(req, req.imp_start[r] + t, memory)
        with torch.no_grad():
            q, _ = net.score(net.encode_history(torch.from_numpy(hist).to(dev)),
                             torch.from_numpy(mask).to(dev),
                             torch.from_numpy(req.user_ctx[r]).to(dev),
                             torch.from_numpy(np.ascontiguousarray(cand)).to(dev))  # fmt: skip
        return q.float().cpu().numpy()

    return score


def _slot_targets(score: Scorer, req: Any, side: Any, temperatures: Sequence[float],
                  batch: int = 256) -> dict[float, np.ndarray]:  # fmt: skip
    """Per temperature, ``(R, K)`` probability of the logged item at each logged slot under a
    softmax over the items table at that slot (the logged earlier slots as the prefix)."""
    from training.data.features import catalogue_ids

    k = req.list_size
    n = side.n_items
    rows = np.arange(n)
    item_row = side.item_rows(req.cand_item[:, :k])  # (R, K) row of each logged item
    out = {t: np.zeros((req.n_requests, k)) for t in temperatures}
    for lo in range(0, req.n_requests, batch):
        r = np.arange(lo, min(lo + batch, req.n_requests))
        for slot in range(k):
            rr = r[req.n_shown[r] > slot]
            if rr.size == 0:
                continue
            cand = catalogue_ids(req, side, rr, np.full(rr.size, slot),
                                 np.broadcast_to(rows, (rr.size, n)))  # fmt: skip
            s = score(rr, slot, cand)
            hit = item_row[rr, slot]
            for t in temperatures:
                p = softmax(s, t)
                out[t][rr, slot] = np.where(hit >= 0, p[np.arange(rr.size), np.maximum(hit, 0)], 0)
    return out


class _LoggedScores:
    """A :data:`Scorer` in the shape :func:`training.eval.slates.logged_slot_scores` reads."""

    def __init__(self, score: Scorer) -> None:
        self.score = score

    def logged_scores(self, req: Any, r: np.ndarray, t: np.ndarray) -> np.ndarray:
        from training.data.features import candidate_ids

        return self.score(r, int(t[0]), candidate_ids(req, r, t))


def ncis_of(score: Scorer, req: Any, side: Any, kind: str, aspects: Sequence[str],
            cfg: DataReportConfig) -> dict[str, Any]:  # fmt: skip
    """NCIS per declared aspect of a model as a softmax policy over its scores, by ``kind``."""
    j = {a: FEEDBACK.index(a) for a in aspects}
    k = req.list_size
    live = np.arange(k)[None, :] < req.n_shown[:, None]
    if kind == "marginal":
        check_propensity(kind, "position")
        targets = _slot_targets(score, req, side, cfg.temperatures)
        ratio = {t: np.where(live, p / req.propensity, 0.0) for t, p in targets.items()}
        best = max(cfg.temperatures, key=lambda t: ess(ratio[t][live]))
        cap = float(np.quantile(ratio[best][live], cfg.cap_quantile))
        cap = cap if cap > 0 else np.inf
        res = {a: item_position_ncis(targets[best], req.propensity, req.feedback[:, :, j[a]],
                                     live, cap) for a in aspects}  # fmt: skip
        return {"estimator": "item-position", "temperature": best, "aspects": res}
    check_propensity(kind, "slate")
    from training.eval.slates import behaviour_log_prob, logged_slot_scores
    from training.eval.slates import slate_log_prob_from_scores as slate_lp

    scores = logged_slot_scores(_LoggedScores(score), req)  # type: ignore[arg-type]
    lb = behaviour_log_prob(req, kind)
    lr = {t: slate_lp(scores, req, t) - lb for t in cfg.temperatures}
    best = max(cfg.temperatures, key=lambda t: ess(np.exp(lr[t] - lr[t].max())))
    w = np.exp(lr[best] - lr[best].max())
    cap = float(np.quantile(w, cfg.cap_quantile))
    w = np.minimum(w, cap) if cap > 0 else w
    res = {}
    for a in aspects:
        rew = req.feedback[:, :, j[a]].sum(axis=1)
        res[a] = {"value": float(np.dot(w, rew) / w.sum()), "ess": ess(w),
                  "logged": float(rew.mean())}  # fmt: skip
    return {"estimator": "slate", "temperature": best, "aspects": res}


# --------------------------------------------------------------------------------------------
# one seed


def offline_metrics(score: np.ndarray, labels: Mapping[str, np.ndarray], users: np.ndarray
                    ) -> dict[str, Any]:  # fmt: skip
    """AUC and GAUC of ``score`` against each aspect's labels; an aspect with one class in the
    test split gets a note instead."""
    from training.eval.metrics import auc, gauc

    out: dict[str, Any] = {}
    for a, y in labels.items():
        try:
            g, n_users = gauc(users, y, score)
            out[a] = {"auc": auc(y, score), "gauc": g, "gauc_users": n_users}
        except ValueError as e:
            out[a] = {"note": str(e)}
    return out


def run_seed(kind: str, data: Path, seed: int, cfg: DataReportConfig, run_dir: Path,
             progress: bool, log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Train this seed's models on ``data`` and evaluate them offline; returns the numbers."""

    from training.baselines.pointwise import predict, seeded_build_model, train_pointwise
    from training.data.features import SideTables, build_requests
    from training.data.pipeline import Dataset
    from training.eval.samples import read_sample

    ds = Dataset.open(data)
    aspects = [a for a in ds.meta.get("aspects", FEEDBACK) if a in FEEDBACK]
    if "click" not in aspects:
        raise ConfigError(f"{data}: the models learn clicks, and the dataset declares no click "
                          f"aspect (aspects: {aspects})")  # fmt: skip
    binary = [a for a in aspects if a != "watch_time"]
    prop = dataset_propensity(ds.meta)
    spec = ds.spec
    side = SideTables.from_tables(ds.users(), ds.items(), spec)
    train = read_sample(ds, "train", side, cfg.train_impressions, seed, "session_id")
    test = build_requests(ds.read("test"), side)
    labels = {a: test.label(a) for a in binary}
    users = test.user_id[test.imp_req]
    log(f"seed {seed}: {train.n:,} training impressions, {test.n_impressions:,} test")
    run_dir.mkdir(parents=True, exist_ok=True)
    scores: dict[str, np.ndarray] = {}
    scorers: dict[str, Scorer] = {}
    names = ["fm", *[m for m in cfg.models if m != "fm"]] if kind == "baselines" else ["fm"]
    for i, name in enumerate(names):
        model = seeded_build_model(name, spec.sizes(), seed * 100 + i)
        train_pointwise(model, train.x, train.click, epochs=cfg.epochs, batch_size=cfg.batch_size,
                        lr=cfg.lr, seed=seed, progress=False)  # fmt: skip
        model.eval()
        scores[name] = predict(model, test.imp_ids)
        scorers[name] = pointwise_scorer(model, test)
        log(f"seed {seed}: {name} trained")
    if kind == "drl":
        from training.drl.train import DRLConfig, DRLTrainer, impression_q
        from training.drl.train import train as drl_train

        dcfg = DRLConfig(seed=seed, epochs=cfg.drl_epochs, max_instances=cfg.drl_instances,
                         n_explore=cfg.n_explore)  # fmt: skip
        trainer = DRLTrainer(dcfg, side)
        done = drl_train(trainer, ds, out=run_dir / "drl", progress=progress)
        for name, net in (("teacher", trainer.model.teacher), ("student", trainer.model.student)):
            net.eval()
            scores[name] = impression_q(net, test, dcfg.memory)
            scorers[name] = q_scorer(net, test, dcfg.memory)
        log(f"seed {seed}: DRL-Rec trained ({done['instances']:,} instances)")
        drl_instances = int(done["instances"])
    out: dict[str, Any] = {"seed": seed, "train_impressions": train.n,
                           "test_impressions": test.n_impressions, "models": {}}  # fmt: skip
    if kind == "drl":
        out["drl_instances"] = drl_instances
    for name, s in scores.items():
        out["models"][name] = {"offline": offline_metrics(s, labels, users)}
    if prop != "unknown":
        for name, scorer in scorers.items():
            out["models"][name]["ncis"] = ncis_of(scorer, test, side, prop, aspects, cfg)
    (run_dir / "seed.json").write_text(json.dumps(out, indent=1))
    return out


# --------------------------------------------------------------------------------------------
# the command


def aggregate(seeds: Sequence[Mapping[str, Any]], aspects: Sequence[str]) -> dict[str, Any]:
    """Mean and sample std over seeds of each model's AUC/GAUC per aspect, RelaImpr over FM
    (click AUC) and NCIS value per aspect."""
    from training.eval.metrics import rela_impr

    def ms(v: list[float]) -> dict[str, float]:
        a = np.asarray([x for x in v if np.isfinite(x)], dtype=np.float64)
        if not a.size:
            return {"mean": float("nan"), "std": float("nan"), "n": 0}
        return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
                "n": int(a.size)}  # fmt: skip

    names = list(seeds[0]["models"])
    out: dict[str, Any] = {}
    for name in names:
        row: dict[str, Any] = {}
        for a in aspects:
            for metric in ("auc", "gauc"):
                row[f"{metric}_{a}"] = ms([s["models"][name]["offline"].get(a, {}).get(metric,
                                           np.nan) for s in seeds])  # fmt: skip
        row["relaimpr"] = ms([rela_impr(s["models"][name]["offline"]["click"]["auc"],
                                        s["models"]["fm"]["offline"]["click"]["auc"])
                              for s in seeds if "auc" in s["models"][name]["offline"]["click"]
                              and "auc" in s["models"]["fm"]["offline"]["click"]])  # fmt: skip
        if "ncis" in seeds[0]["models"][name]:
            for a in seeds[0]["models"][name]["ncis"]["aspects"]:
                row[f"ncis_{a}"] = ms([s["models"][name]["ncis"]["aspects"][a]["value"]
                                       for s in seeds])  # fmt: skip
                row[f"logged_{a}"] = ms([s["models"][name]["ncis"]["aspects"][a]["logged"]
                                         for s in seeds])  # fmt: skip
        out[name] = row
    return out


def render(kind: str, data: Path, meta: Mapping[str, Any], seeds: Sequence[Mapping[str, Any]],
           table: Mapping[str, Any], command: str | None) -> str:  # fmt: skip
    """report.md of a report on a dataset."""
    aspects = [a for a in meta.get("aspects", FEEDBACK) if a in FEEDBACK]
    binary = [a for a in aspects if a != "watch_time"]
    absent = [a for a in FEEDBACK if a not in aspects]
    prop = dataset_propensity(meta)

    def cell(v: Mapping[str, float]) -> str:
        if not v["n"]:
            return "n/a"
        return f"{v['mean']:.4f}" + (f" ± {v['std']:.4f}" if v["n"] > 1 else "")

    title = "Baselines" if kind == "baselines" else "DRL-Rec"
    lines = [f"# {title} on a logged dataset: {data}", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += [
        f"Seeds {', '.join(str(s['seed']) for s in seeds)}; {seeds[0]['train_impressions']:,} "
        f"training and {seeds[0]['test_impressions']:,} test impressions per seed; slots "
        f"{meta.get('slots', 'contiguous')}; propensity {prop}.", "",
        f"- Aspects declared: {', '.join(aspects)}."
        + (f" Absent (skipped in every metric): {', '.join(absent)}." if absent else ""),
        f"- {ONLINE_SKIPPED}",
    ]  # fmt: skip
    if kind == "drl":
        lines.append(f"- DRL-Rec (teacher and student) trained on {seeds[0]['drl_instances']:,} "
                     "instances per seed; FM is the RelaImpr base.")  # fmt: skip
    if prop == "unknown":
        lines.append("- NCIS skipped: the dataset's propensities are unknown.")
    elif prop == "marginal":
        lines.append("- NCIS is item-position NCIS (marginal propensities: a product of them is "
                     "not a list's probability), per slot, summed over the slots.")  # fmt: skip
    else:
        lines.append("- NCIS is slate NCIS (conditional propensities: a list's probability is "
                     "the product of its rows').")  # fmt: skip
    if prop != "unknown":
        lines.append("- The target of NCIS is each model as a softmax policy over its scores "
                     "(logits, or Q values), at the temperature whose weights have the largest "
                     "effective sample size.")  # fmt: skip
    lines += ["", "## Offline metrics (test split)", ""]
    cols = [f"AUC {a}" for a in binary] + [f"GAUC {a}" for a in binary] + ["RelaImpr over FM (%)"]
    lines += ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in table.items():
        vals = [cell(row[f"auc_{a}"]) for a in binary] + [cell(row[f"gauc_{a}"]) for a in binary]
        r = row["relaimpr"]
        vals.append("n/a" if not r["n"] else f"{r['mean']:+.2f}"
                    + (f" ± {r['std']:.2f}" if r["n"] > 1 else ""))  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    ncis_rows = [(n, r) for n, r in table.items() if any(k.startswith("ncis_") for k in r)]
    if ncis_rows:
        lines += ["", "## NCIS per declared aspect (expected value per request)", "",
                  "| model | " + " | ".join(f"{a} NCIS | {a} logged" for a in aspects) + " |",
                  "|---" * (2 * len(aspects) + 1) + "|"]  # fmt: skip
        for name, row in ncis_rows:
            vals = [f"{cell(row[f'ncis_{a}'])} | {cell(row[f'logged_{a}'])}" for a in aspects]
            lines.append(f"| {name} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def run_data_report(
    kind: str,
    data: str | Path,
    seeds: Sequence[int],
    out: str | Path,
    *,
    runs_dir: str | Path | None = None,
    budget_overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
    command: str | None = None,
) -> Path:
    """``ranker report --data`` (``kind="baselines"``) or ``ranker drl-report --data``
    (``kind="drl"``): validate the dataset, train and evaluate every seed, write
    ``report.md`` and ``summary.json`` into ``out``; returns report.md's path.

    Raises DatasetError (a dataset that does not validate, before any work), ConfigError (bad
    budget; no click aspect), FileExistsError (an existing ``out`` without ``resume`` /
    ``overwrite``). ``resume`` retrains (nothing of a run on a dataset is cached)."""
    from training.data.pipeline import Dataset
    from training.data.validate import check_dataset
    from training.harness.command import report_folders, run_report_command
    from training.harness.config import apply_overrides, check_seeds

    if kind not in ("baselines", "drl"):
        raise ValueError(f"kind {kind!r}: expected baselines or drl")
    cfg = apply_overrides(DataReportConfig(), dict(budget_overrides or {}), "data report budget")
    seeds = check_seeds(seeds)
    data = Path(data)
    check_dataset(data)  # a bad dataset fails here, in seconds, before --out is claimed
    meta = Dataset.open(data).meta
    dataset_propensity(meta)
    f = report_folders(out, runs_dir, None)

    def run(say: Callable[[str], None]) -> list[dict[str, Any]]:
        say(ONLINE_SKIPPED)
        return [run_seed(kind, data, s, cfg, f.runs / f"seed{s}", progress, say) for s in seeds]

    def build(results: list[dict[str, Any]], wall: float) -> tuple[Path, list]:
        aspects = [a for a in meta.get("aspects", FEEDBACK) if a in FEEDBACK and a != "watch_time"]
        table = aggregate(results, aspects)
        (f.out / "summary.json").write_text(json.dumps(
            {"kind": kind, "data": str(data), "seeds": list(seeds), "wall_seconds": wall,
             "config": dataclasses.asdict(cfg), "table": table, "per_seed": results,
             "online": ONLINE_SKIPPED}, indent=1, default=float))  # fmt: skip
        path = f.out / "report.md"
        path.write_text(render(kind, data, meta, results, table, command))
        return path, []

    return run_report_command(f.out, run, build, resume=resume, overwrite=overwrite, log=log,
                              resumable=lambda _: False)  # fmt: skip
