"""The DRL-Rec report: the paper's Tables 2-4, Fig. 4 and a negative control, on simulated worlds.

    ranker drl-report --preset default --seeds 0 1 2 --out results/drl
    ranker drl-report --preset tiny --seeds 0 1 2                # a smoke run -> results/drl-tiny

What it runs (:func:`build_plan`), per seed ``s`` (world seed ``s``, ``DRLConfig(seed=s)``):

- ``drl``: the full DRL-Rec; its teacher and its student are Table 2's "teacher" and "DRL-Rec".
- the seven Table 4 ablations (``no_explore_filter``, ``no_confidence``, ``no_kl``,
  ``no_hint``, ``no_gru``, ``no_self_attention``, ``gamma0``);
- the Fig. 4 sweeps: compression 0.875..0.25, filtered items 1/3/5/10 and input exploration
  candidates 100/500/1000 (the point equal to the base config is ``drl`` itself). They cost as
  much as everything else together, so by default they run on the first seed only
  (``sweep_seeds``) and the report says so;
- ``hrl``: HRL-Rec's item recommender trained by DDPG (:func:`training.drl.hrl.run_hrl`);
- the point-wise baselines of Table 2 (FM, Wide&Deep, NFM, AFM, DeepFM, AutoInt, AFN), one epoch
  over the same training budget: the same number of impressions, from the same stream
  (:func:`train_prefix`);
- the negative control: the full DRL-Rec with gamma 0.4 and with gamma 0, trained on the world
  with its long-term mechanisms switched off (:func:`training.sim.config.long_term_off`) and
  compared *online* (clicks per user, paired interval) on that world's test days;
- online (Table 3): the student, the teacher, the gamma-0 student and the logging policy as arms
  of a simulated A/B test on the test days (:func:`training.eval.online.run_online`, common
  random numbers, a random user subset);
- serving cost (once, first seed's nets): ``benchmarks/drl_cost.py``'s ``measure`` (parameters,
  bytes, multiply-adds, measured ms per request for a list of 10 from 200 candidates).

Every run has a fixed training budget (``max_instances`` real instances, times ``--scale``) and
its own folder ``runs/drl-report/<preset>/seed<s>/<name>/`` (``checkpoint.pt``, ``train.json``
with the test evaluation added, ``scores.npz``). A folder whose ``train.json`` holds an
evaluation of the same config is finished and skipped; a run cut short resumes from its
checkpoint. ``--only`` restricts what is *run*; the report shows every finished run it finds.

Offline evaluation: click AUC of each model's score on the same user sample of the test split
(whole sessions of a hashed random share of users, ``test_impressions`` impressions): the Q value
of the logged impression for DRL-Rec's nets, the actor's ranking score for HRL-Rec, the predicted
click logit for point-wise models. Nothing is chosen on the test split: every config is fixed
before the run; no early stopping.

Aggregation: a cell is the mean over seeds, ``± std`` the sample standard deviation. A paired
difference of two models' AUCs on a seed comes with a user-cluster bootstrap 95% interval on
that seed's test sample; over seeds the half-widths pool as ``h = sqrt(sum_s h_s^2) / S``.
Claims (:func:`direction_status` etc.) are marked *reproduced* when the mean over seeds lies in
the paper's direction **and** every seed agrees; otherwise *not reproduced*. Cost ratios are
reproduced within :data:`RATIO_TOLERANCE` (relative) of the paper's.

``<out>/analysis.md``, when present, is copied into the report under "Analysis": the place for
hand-written findings about claims that did not reproduce (the builder never overwrites it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from contract.features import DEFAULT_SPEC
from training.data.features import Requests, SideTables, build_requests
from training.data.pipeline import Dataset, code_version, iter_session_batches
from training.drl.train import DRLConfig
from training.eval.metrics import auc, bootstrap_ci, rela_impr
from training.sim.config import ConfigError, WorldConfig, long_term_off, preset

__all__ = [
    "ABLATIONS",
    "PAPER",
    "POINTWISE",
    "REPORT_PRESETS",
    "ReportConfig",
    "RunSpec",
    "build_plan",
    "build_report",
    "compression_shape",
    "direction_status",
    "pooled",
    "ratio_status",
    "relaimpr_columns",
    "same_config",
    "run_drl_report",
    "train_prefix",
]

# --------------------------------------------------------------------------------------------
# the paper's numbers (DRL-Rec, CIKM 2021: Tables 2-4, Sec. 5.7)
# --------------------------------------------------------------------------------------------

PAPER: dict[str, Any] = {
    "table2": {  # model -> (AUC, RelaImpr %)
        "fm": (0.7321, 0.00),
        "wide_deep": (0.7413, 3.96),
        "nfm": (0.7384, 2.71),
        "afm": (0.7382, 2.63),
        "deepfm": (0.7426, 4.52),
        "autoint": (0.7463, 6.12),
        "afn": (0.7459, 5.95),
        "teacher": (0.7619, 12.84),
        "hrl": (0.7625, 13.10),
        "student": (0.7653, 14.30),
    },
    "table4": {
        "drl": (0.7653, 14.30),
        "no_explore_filter": (0.7622, 12.97),
        "no_confidence": (0.7611, 12.49),
        "no_kl": (0.7614, 12.62),
        "no_hint": (0.7629, 13.27),
        "no_gru": (0.7525, 8.79),
        "no_self_attention": (0.7598, 11.93),
        "gamma0": (0.7600, 12.02),
    },
    "table3": {"acn_pct": 1.38, "computation": 0.767, "memory": 0.497},
}
#: Relative tolerance of a cost ratio against the paper's: |ours / paper - 1| <= 0.15.
RATIO_TOLERANCE = 0.15

#: Point-wise baselines of Table 2 (architectures of training.baselines.pointwise).
POINTWISE: tuple[str, ...] = ("fm", "wide_deep", "nfm", "afm", "deepfm", "autoint", "afn")
POINTWISE_TITLES = {
    "fm": "FM", "wide_deep": "Wide&Deep", "nfm": "NFM", "afm": "AFM", "deepfm": "DeepFM",
    "autoint": "AutoInt", "afn": "AFN",
}  # fmt: skip
#: Table 4 ablations: name -> (DRLConfig overrides, the paper's row title).
ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "no_explore_filter": ({"explore_filter": False}, "- Exploring and filtering"),
    "no_confidence": ({"use_confidence": False}, "- Confidence in KD"),
    "no_kl": ({"use_kl": False}, "- KL loss"),
    "no_hint": ({"use_hint": False}, "- Hint loss"),
    "no_gru": ({"gru": False}, "- GRU (average pooling)"),
    "no_self_attention": ({"self_attention": False}, "- self-attention (average pooling)"),
    "gamma0": ({"gamma": 0.0}, "- future rewards (gamma = 0)"),
}
#: Fig. 4 sweeps: DRLConfig field -> values (paper Sec. 5.7).
SWEEPS: dict[str, tuple[float | int, ...]] = {
    "compression": (0.875, 0.75, 0.625, 0.5, 0.375, 0.25),
    "n_filtered": (1, 3, 5, 10),
    "n_explore": (100, 500, 1000),
}
#: Groups accepted by ``--only`` besides run names.
GROUPS = (
    "main",
    "ablations",
    "sweeps",
    "hrl",
    "pointwise",
    "control",
    "online",
    "cost",
    "tau",
    "horizon",
    "ceiling",
)
#: The KL-temperature variant (the smallest tau of the paper's grid {1, 2, 3, 5, 10, 20}): a
#: diagnostic of the KL ablation, not a choice of the headline config (that stays tau = 10).
TAU_VARIANT = 1.0
#: Discounts of the per-request variant (DRLConfig.discount = "request"), base and control world.
HORIZON_GAMMAS = (0.4, 0.0)

_TEST_STREAM = 7101  # hashed user draw of the test sample (training.sim.rng streams)
_ONLINE_STREAM = 11
VERSION = 1


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportConfig:
    """Budgets of the DRL-Rec report (one value per preset; ``key=value`` overridable)."""

    world_preset: str = "default"
    """World preset of :mod:`training.sim.config`."""
    max_instances: int = 100_000
    """Training budget of every run (DRL-Rec, HRL-Rec, point-wise), in real instances
    (logged impressions), before ``scale``; 0 = one pass over the training split. 100k on the
    default world: 4.6 min of DRL-Rec training (n_explore 100) and 1 min of evaluation, on 2
    shared CPU cores with torch on one thread."""
    scale: float = 1.0
    """Multiplies ``max_instances`` (the ``--scale`` knob)."""
    n_explore: int = 100
    """Input exploration candidates of every run but the n_explore sweep. The paper's (and
    DRLConfig's) default is 1000; 100 keeps CPU runs 2.3x faster. The sweep covers 100/500/1000."""
    drl_overrides: tuple[tuple[str, Any], ...] = ()
    """Further DRLConfig overrides for every DRL-Rec run (pairs)."""
    sweep_seeds: int = 1
    """The Fig. 4 sweeps run on the first ``sweep_seeds`` seeds (0 = all)."""
    test_impressions: int = 100_000
    """Offline test sample, whole users drawn at random (0 = the whole test split)."""
    online_users: int = 10_000
    """Online population: users drawn at random (0 = every user). On the default world 2,000
    users (1,357 active on the test day) gave a +-4.3% interval on student vs teacher, 39 s for
    three arms; 10,000 narrows it about 2.2x."""
    online_seed_offset: int = 1
    """Seed offset of the online env: fresh sessions on the test days, not the logged ones."""
    pointwise_batch_size: int = 1024
    pointwise_lr: float = 2e-3
    pointwise_embed_dim: int = 16
    """Field embedding width of the point-wise models (= the teacher's d_r, as in the paper)."""
    n_boot: int = 100
    """Bootstrap resamples of a paired AUC difference (user clusters)."""
    cost_requests: int = 200
    """Requests timed per network and round by ``measure``."""
    cost_rounds: int = 3
    """Alternating teacher/student timing rounds; the fastest round of each is kept."""
    cost_candidates: int = 200
    cost_k: int = 10
    device: str = "cpu"
    """Training device (online policies and cost timing run on the CPU)."""
    threads: int = 1
    """torch intra-op threads."""

    def __post_init__(self) -> None:
        for key in ("max_instances", "test_impressions", "online_users", "sweep_seeds"):
            if getattr(self, key) < 0:
                raise ConfigError(f"drl report {key}={getattr(self, key)}: must be >= 0")
        for key in ("n_explore", "n_boot", "cost_requests", "cost_rounds", "threads",
                    "pointwise_batch_size", "pointwise_embed_dim"):  # fmt: skip
            if getattr(self, key) < 1:
                raise ConfigError(f"drl report {key}={getattr(self, key)}: must be >= 1")
        if not self.scale > 0:
            raise ConfigError(f"drl report scale={self.scale}: must be > 0")
        preset(self.world_preset)

    @property
    def budget(self) -> int:
        """Training instances per run (0: the whole training split)."""
        return int(round(self.max_instances * self.scale)) if self.max_instances else 0

    def drl_config(self, seed: int, **overrides: Any) -> DRLConfig:
        base = DRLConfig(seed=int(seed), n_explore=self.n_explore, max_instances=self.budget)
        return base.with_overrides(**dict(self.drl_overrides)).with_overrides(**overrides)

    def hrl_config(self, seed: int) -> Any:
        from training.drl.hrl import HRLConfig

        d = self.drl_config(seed)
        return HRLConfig(seed=int(seed), max_instances=self.budget, gamma=d.gamma, d_r=d.d_r,
                         gru_hidden=d.gru_hidden, mlp=d.mlp, memory=d.memory,
                         sessions_per_chunk=d.sessions_per_chunk)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["drl_overrides"] = dict(self.drl_overrides)
        d["budget"] = self.budget
        return d

    def with_overrides(self, overrides: Mapping[str, Any]) -> ReportConfig:
        """A copy with ``key=value`` strings applied."""
        known = {f.name: f for f in fields(self)}
        out: dict[str, Any] = {}
        for key, raw in overrides.items():
            if key not in known or key == "drl_overrides":
                raise ConfigError(
                    f"drl report config: unknown key {key!r} (known: {sorted(known)})"
                )
            cur = getattr(self, key)
            try:
                if not isinstance(raw, str):
                    out[key] = raw
                elif isinstance(cur, bool):
                    out[key] = raw.lower() in ("1", "true", "yes", "on")
                elif isinstance(cur, int):
                    out[key] = int(raw)
                elif isinstance(cur, float):
                    out[key] = float(raw)
                else:
                    out[key] = raw
            except ValueError:
                raise ConfigError(
                    f"drl report config {key}={raw!r}: expected {type(cur).__name__}"
                ) from None
        return dataclasses.replace(self, **out)


REPORT_PRESETS: dict[str, ReportConfig] = {
    # Minutes: every run of the plan on the tiny world, small budgets (sweeps on seed 0 only).
    "tiny": ReportConfig(
        world_preset="tiny",
        max_instances=4096,
        drl_overrides=(("log_every", 4),),
        test_impressions=0,
        online_users=150,
        pointwise_batch_size=512,
        pointwise_lr=3e-3,
        n_boot=60,
        cost_requests=50,
        cost_rounds=2,
    ),
    # The benchmark world, sized for 2 shared CPU cores (see the report's timing section).
    "default": ReportConfig(world_preset="default"),
}


def report_preset(name: str) -> ReportConfig:
    try:
        return REPORT_PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown drl report preset {name!r} (known: {sorted(REPORT_PRESETS)})"
        ) from None


def world_config(cfg: ReportConfig, seed: int, variant: str) -> WorldConfig:
    """World ``variant`` ("base" or "long_term_off") of the preset with ``seed``."""
    wc = preset(cfg.world_preset).with_overrides({"seed": int(seed)})
    if variant == "long_term_off":
        return long_term_off(wc)
    if variant != "base":
        raise ConfigError(f"world variant {variant!r}: expected base or long_term_off")
    return wc


_LONG_TERM_OFF_KEYS = ("mechanisms.drift", "mechanisms.fatigue_cross", "mechanisms.leave_hazard")


def _world_overrides(variant: str) -> tuple[tuple[str, str], ...]:
    """The variant as ``world_overrides`` pairs (the baselines harness's dataset naming)."""
    return tuple((k, "false") for k in _LONG_TERM_OFF_KEYS) if variant == "long_term_off" else ()


# --------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One training run of the plan."""

    name: str
    """Folder name and key in the report."""
    group: str
    """One of :data:`GROUPS`."""
    kind: str = "drl"
    """``drl``, ``hrl`` or ``pointwise``."""
    drl: tuple[tuple[str, Any], ...] = ()
    """DRLConfig overrides (pairs)."""
    world: str = "base"
    """World variant: ``base`` or ``long_term_off``."""
    arch: str = ""
    """Point-wise architecture."""


def _sweep_name(key: str, value: float | int) -> str:
    return f"{key}{value:g}"


def build_plan(cfg: ReportConfig, seeds: Sequence[int]) -> dict[int, list[RunSpec]]:
    """Runs per seed: main, ablations, sweeps (first ``sweep_seeds`` seeds), HRL-Rec, point-wise
    baselines, the negative control, and two variants beyond the paper: the KL at tau = 1 and
    the per-request discount (on both worlds). A sweep point equal to the base config is
    ``drl``."""
    base = cfg.drl_config(0)
    plan: dict[int, list[RunSpec]] = {}
    n_sweep = len(seeds) if cfg.sweep_seeds == 0 else cfg.sweep_seeds
    for i, s in enumerate(seeds):
        runs = [RunSpec("drl", "main")]
        runs += [RunSpec(n, "ablations", drl=tuple(o.items())) for n, (o, _) in ABLATIONS.items()]
        if i < n_sweep:
            for key, values in SWEEPS.items():
                for v in values:
                    if v != getattr(base, key):
                        runs.append(RunSpec(_sweep_name(key, v), "sweeps", drl=((key, v),)))
        runs.append(RunSpec("hrl", "hrl", kind="hrl"))
        runs += [RunSpec(m, "pointwise", kind="pointwise", arch=m) for m in POINTWISE]
        runs.append(RunSpec("control_gamma0.4", "control", drl=(("gamma", 0.4),),
                            world="long_term_off"))  # fmt: skip
        runs.append(RunSpec("control_gamma0", "control", drl=(("gamma", 0.0),),
                            world="long_term_off"))  # fmt: skip
        runs.append(RunSpec(f"tau{TAU_VARIANT:g}", "tau", drl=(("temperature", TAU_VARIANT),)))
        for world, prefix in (("base", ""), ("long_term_off", "control_")):
            for g in HORIZON_GAMMAS:
                runs.append(RunSpec(f"{prefix}request_gamma{g:g}", "horizon", world=world,
                                    drl=(("discount", "request"), ("gamma", g))))  # fmt: skip
        plan[int(s)] = runs
    return plan


def sweep_run_name(cfg: ReportConfig, key: str, value: float | int) -> str:
    """The run holding sweep point ``key = value`` (``drl`` at the base config's value)."""
    return "drl" if value == getattr(cfg.drl_config(0), key) else _sweep_name(key, value)


def _selected(only: Sequence[str] | None, *names: str) -> bool:
    return not only or any(n in only for n in names)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def _split_impressions(ds: Dataset, split: str) -> int:
    files = set(ds.meta["split"][split])
    return int(sum(s["impressions"] for s in ds.meta["shards"] if s["file"] in files))


def read_test_sample(ds: Dataset, side: SideTables, budget: int, seed: int) -> Requests:
    """Whole sessions of a hashed random share ``budget / impressions`` of the test split's
    users (all of it for ``budget`` 0), as :class:`Requests`."""
    from training.sim.rng import uniform

    total = _split_impressions(ds, "test")
    frac = 1.0 if budget <= 0 or total <= 0 else min(1.0, budget / total)
    tables = []
    for path in ds.paths("test"):
        t = pq.read_table(path)
        if frac < 1.0:
            keep = uniform(seed, _TEST_STREAM, t.column("user_id").to_numpy()) < frac
            t = t.filter(pa.array(keep))
        if t.num_rows:
            tables.append(t)
    if not tables:
        raise ConfigError(f"test sample of {ds.root} is empty (budget {budget})")
    return build_requests(pa.concat_tables(tables), side)


def train_prefix(
    ds: Dataset, side: SideTables, n: int, sessions_per_chunk: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(x (N, 22), click (N,))``: the impressions DRL-Rec's stream would train on.

    DRL-Rec reads the training split in chunks of ``sessions_per_chunk`` whole sessions, in log
    order, and shuffles each chunk's instances; a budget of ``n`` instances ends inside some
    chunk. Here: whole chunks while the budget lasts, then a random subset (``seed``) of the
    last chunk; ``n`` 0 takes the whole split.
    """
    rng = np.random.default_rng([seed, 5])
    xs, ys = [], []
    have = 0
    for table in iter_session_batches(ds.paths("train"), sessions_per_batch=sessions_per_chunk):
        req = build_requests(table, side)
        x, y = req.imp_ids, req.label("click").astype(np.float32)
        need = n - have if n else x.shape[0]
        if need < x.shape[0]:
            keep = np.sort(rng.choice(x.shape[0], size=need, replace=False))
            x, y = x[keep], y[keep]
        xs.append(x)
        ys.append(y)
        have += x.shape[0]
        if n and have >= n:
            break
    return np.concatenate(xs), np.concatenate(ys)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _jsonable(o: Any) -> Any:
    return json.loads(json.dumps(o, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def _load_cost_module() -> Any:
    """``benchmarks/drl_cost.py`` (a script folder, not a package): loaded from its path."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "drl_cost.py"
    spec = importlib.util.spec_from_file_location("drl_cost", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path}: cost benchmark not found")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------
# one seed
# --------------------------------------------------------------------------------------------


@dataclass
class _Seed:
    """What the runs of one seed share: datasets, side tables, test samples."""

    cfg: ReportConfig
    seed: int
    root: Path
    data_root: Path
    progress: bool
    log: Callable[[str], None]
    _data: dict[str, tuple[Dataset, SideTables, dict[str, Any]]] = field(default_factory=dict)
    _test: dict[str, Requests] = field(default_factory=dict)

    @property
    def eval_key(self) -> dict[str, Any]:
        """What a run's evaluation depends on besides its training (a change re-evaluates)."""
        return {"test_impressions": self.cfg.test_impressions, "stream": _TEST_STREAM}

    def dataset(self, variant: str) -> tuple[Dataset, SideTables, dict[str, Any]]:
        if variant not in self._data:
            from training.eval.baselines_run import EvalConfig, dataset_dir, ensure_dataset

            naming = EvalConfig(world_preset=self.cfg.world_preset,
                                world_overrides=_world_overrides(variant))  # fmt: skip
            wcfg = world_config(self.cfg, self.seed, variant)
            path = dataset_dir(self.data_root, naming, self.seed)
            ds, gen = ensure_dataset(path, wcfg, self.cfg.world_preset, self.progress, self.log)
            side = SideTables.from_tables(ds.users(), ds.items())
            self._data[variant] = (ds, side, gen)
        return self._data[variant]

    def test(self, variant: str) -> Requests:
        """The test sample of a world variant; its labels and users are saved once."""
        if variant not in self._test:
            ds, side, _ = self.dataset(variant)
            t0 = time.perf_counter()
            req = read_test_sample(ds, side, self.cfg.test_impressions, self.seed)
            self._test[variant] = req
            _save_npz(self.root / f"test_{variant}.npz", click=req.label("click").astype(np.int8),
                      user=req.user_id[req.imp_req])  # fmt: skip
            self.log(f"test sample ({variant}): {req.n_impressions:,} impressions "
                     f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
        return self._test[variant]


def same_config(
    have: Mapping[str, Any] | None, want: Mapping[str, Any], defaults: Mapping[str, Any]
) -> bool:
    """Whether a saved config ``have`` is ``want``. A key that ``have`` lacks (a field added to
    the config class after the run) matches when ``want`` holds its default ``defaults[key]``."""
    if have is None:
        return False
    h, w, d = _jsonable(dict(have)), _jsonable(dict(want)), _jsonable(dict(defaults))
    return all(h[k] == v if k in h else (k in d and d[k] == v) for k, v in w.items())


def _defaults(cfg: Any) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cfg)} if dataclasses.is_dataclass(cfg) else {}


def _finished(run_dir: Path, want: Any) -> dict[str, Any] | None:
    """The run's ``train.json`` when its training of config ``want`` (a config dataclass or a
    dict) finished (None when not); raises on a folder of another config."""
    defaults = _defaults(want)
    want_d = dataclasses.asdict(want) if dataclasses.is_dataclass(want) else dict(want)
    path = run_dir / "train.json"
    if not path.exists():
        ck = run_dir / "checkpoint.pt"
        if ck.exists():
            have = torch.load(ck, map_location="cpu", weights_only=False).get("cfg")
            if not same_config(have, want_d, defaults):
                raise ConfigError(f"{ck} is a checkpoint of another config; remove {run_dir}")
        return None
    info = _read_json(path)
    if not same_config(info.get("config"), want_d, defaults):
        raise ConfigError(f"{run_dir} holds a run of another config; remove it or choose --runs")
    return info


def drl_config_from(d: Mapping[str, Any]) -> DRLConfig:
    """A :class:`DRLConfig` from its JSON form (lists back to tuples)."""
    known = {f.name for f in fields(DRLConfig)}
    return DRLConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
                        if k in known})  # fmt: skip


def _drl_nets(run_dir: Path, cfg: Any, side: SideTables, device: str) -> Any:
    from training.drl.train import DRLTrainer

    tr = DRLTrainer(cfg, side, device=device)
    tr.load(run_dir / "checkpoint.pt")
    return tr


def _record_eval(
    ctx: _Seed,
    spec: RunSpec,
    run_dir: Path,
    info: dict[str, Any],
    req: Requests,
    scores: Mapping[str, np.ndarray],
    t0: float,
) -> dict[str, Any]:
    """Add the test-sample evaluation to a run's ``info`` (click AUC of each score:
    ``auc_<name>``, or ``auc`` for a single ``score``), save the scores beside it and write
    ``train.json``; returns ``info["eval"]``."""
    y = req.label("click")
    aucs = {("auc" if k == "score" else f"auc_{k}"): auc(y, v) for k, v in scores.items()}
    info["eval"] = {"impressions": req.n_impressions, **aucs}
    info["eval_split"] = "test-sample"
    info["eval_sample"] = ctx.eval_key
    info["eval_seconds"] = round(time.perf_counter() - t0, 2)
    info["spec"] = dataclasses.asdict(spec)
    _save_npz(run_dir / "scores.npz", **scores)
    _write_json(run_dir / "train.json", info)
    return info["eval"]


def _run_drl(ctx: _Seed, spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    from training.drl.train import impression_q, run

    cfg = ctx.cfg.drl_config(ctx.seed, **dict(spec.drl))
    info = _finished(run_dir, cfg)
    if info is not None and info.get("eval_sample") == ctx.eval_key:
        return {**info, "skipped": True}
    ds, side, _ = ctx.dataset(spec.world)
    if info is None:
        ctx.log(f"{spec.name}: train ({cfg.max_instances:,} instances)")
        run(ds.root, run_dir, cfg, device=ctx.cfg.device, resume=True, progress=ctx.progress,
            eval_split=None)  # fmt: skip
        info = _read_json(run_dir / "train.json")
    req = ctx.test(spec.world)
    t0 = time.perf_counter()
    tr = _drl_nets(run_dir, cfg, side, ctx.cfg.device)
    scores = {"teacher": impression_q(tr.model.teacher, req, cfg.memory),
              "student": impression_q(tr.model.student, req, cfg.memory)}  # fmt: skip
    e = _record_eval(ctx, spec, run_dir, info, req, scores, t0)
    ctx.log(f"{spec.name}: AUC teacher {e['auc_teacher']:.4f} student {e['auc_student']:.4f} "
            f"(train {info['seconds']:.0f} s, eval {info['eval_seconds']:.0f} s)")  # fmt: skip
    return {**info, "skipped": False}


def _run_hrl(ctx: _Seed, spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    from training.drl.hrl import HRLTrainer, impression_scores, run_hrl

    cfg = ctx.cfg.hrl_config(ctx.seed)
    info = _finished(run_dir, cfg)
    if info is not None and info.get("eval_sample") == ctx.eval_key:
        return {**info, "skipped": True}
    ds, side, _ = ctx.dataset(spec.world)
    if info is None:
        ctx.log(f"{spec.name}: train ({cfg.max_instances:,} instances)")
        run_hrl(ds.root, run_dir, cfg, device=ctx.cfg.device, resume=True,
                progress=ctx.progress, eval_split=None)  # fmt: skip
        info = _read_json(run_dir / "train.json")
    req = ctx.test(spec.world)
    t0 = time.perf_counter()
    tr = HRLTrainer(cfg, side, device=ctx.cfg.device)
    tr.load(run_dir / "checkpoint.pt")
    actor, critic = impression_scores(tr.net, req, cfg.memory)
    e = _record_eval(ctx, spec, run_dir, info, req, {"actor": actor, "critic": critic}, t0)
    ctx.log(f"{spec.name}: AUC actor {e['auc_actor']:.4f} critic {e['auc_critic']:.4f} "
            f"(train {info['seconds']:.0f} s)")  # fmt: skip
    return {**info, "skipped": False}


def _pointwise_config(ctx: _Seed, arch: str) -> dict[str, Any]:
    c = ctx.cfg
    d = c.drl_config(ctx.seed)
    return {"arch": arch, "instances": c.budget, "epochs": 1, "batch_size": c.pointwise_batch_size,
            "lr": c.pointwise_lr, "embed_dim": c.pointwise_embed_dim, "seed": ctx.seed,
            "sessions_per_chunk": d.sessions_per_chunk}  # fmt: skip


def _run_pointwise(ctx: _Seed, spec: RunSpec, run_dir: Path, cache: dict[str, Any]) -> dict:
    from training.baselines.pointwise import predict, seeded_build_model, train_pointwise

    want = _pointwise_config(ctx, spec.arch)
    info = _finished(run_dir, want)
    if info is not None and info.get("eval_sample") == ctx.eval_key:
        return {**info, "skipped": True}
    ds, side, _ = ctx.dataset(spec.world)
    if "train" not in cache:
        cache["train"] = train_prefix(ds, side, ctx.cfg.budget, want["sessions_per_chunk"],
                                      ctx.seed)  # fmt: skip
    x, y = cache["train"]
    run_dir.mkdir(parents=True, exist_ok=True)
    model = seeded_build_model(spec.arch, DEFAULT_SPEC.sizes(), seed=ctx.seed,
                               embed_dim=want["embed_dim"])  # fmt: skip
    res = train_pointwise(model, x, y, epochs=1, batch_size=want["batch_size"], lr=want["lr"],
                          seed=ctx.seed, device=ctx.cfg.device, progress=ctx.progress)  # fmt: skip
    model = model.cpu().eval()
    torch.save(model.state_dict(), run_dir / "model.pt")
    req = ctx.test(spec.world)
    t0 = time.perf_counter()
    score = predict(model, req.imp_ids)
    info = {
        "kind": "pointwise",
        "config": want,
        "instances": int(x.shape[0]),
        "seconds": round(res.seconds, 2),
        "instances_per_s": round(x.shape[0] / max(res.seconds, 1e-9), 1),
        "train_loss_history": res.train_loss_history,
        "n_params": int(sum(p.numel() for p in model.parameters())),
    }
    e = _record_eval(ctx, spec, run_dir, info, req, {"score": score}, t0)
    ctx.log(f"{spec.name}: AUC {e['auc']:.4f} ({res.seconds:.0f} s, "
            f"{x.shape[0]:,} impressions)")  # fmt: skip
    return {**info, "skipped": False}


def online_population(seed: int, n_users: int, k: int) -> np.ndarray:
    """The online tests' users: ``k`` drawn at random per seed (all for ``k`` 0), sorted."""
    if not 0 < k < n_users:
        return np.arange(n_users)
    rng = np.random.default_rng([seed, _ONLINE_STREAM])
    return np.sort(rng.choice(n_users, size=k, replace=False))


def _online(
    ctx: _Seed,
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
    from training.eval.baselines_run import split_days
    from training.eval.online import OnlineResult, run_online
    from training.eval.policies import QPolicy
    from training.sim.logging_policy import LoggingPolicy
    from training.sim.world import build_world

    runs = ctx.root

    def ready(run_name: str) -> bool:
        p = runs / run_name / "train.json"
        return p.exists() and "eval" in _read_json(p)

    present = {a: v for a, v in arms.items() if ready(v[0])}
    missing = sorted(set(arms) - set(present) - set(optional))
    if missing:
        ctx.log(f"online ({variant}): runs missing for arms {missing}; skipped")
        return None
    want = {"arms": {k: list(v) for k, v in present.items()},
            "online_users": ctx.cfg.online_users, "seed_offset": ctx.cfg.online_seed_offset,
            "variant": variant}  # fmt: skip
    if path.exists():
        have = _read_json(path)
        if have.get("want") == want:
            return have
    ds, side, _ = ctx.dataset(variant)
    wcfg = world_config(ctx.cfg, ctx.seed, variant)
    world = build_world(wcfg)
    days = split_days(ds, "test")
    users = online_population(ctx.seed, world.n_users, ctx.cfg.online_users)
    policies: dict[str, Any] = {"logging": LoggingPolicy(world)}
    for arm, (run_name, which) in present.items():
        info = _read_json(runs / run_name / "train.json")
        cfg = drl_config_from(info["config"])
        tr = _drl_nets(runs / run_name, cfg, side, "cpu")
        net = tr.model.teacher if which == "teacher" else tr.model.student
        policies[arm] = QPolicy(net, side)
    t0 = time.perf_counter()
    ctx.log(f"online ({variant}): arms {list(policies)}, {len(users)} users, days {days}")
    result: OnlineResult = run_online(world, policies, users=users, days=days,
                                      seed_offset=ctx.cfg.online_seed_offset,
                                      progress=ctx.progress)  # fmt: skip
    metrics = ["clicks_per_user", "clicks_per_session", "depth_per_session",
               "watch_time_per_session"]  # fmt: skip
    rows = {b: result.summary(b, metrics) for b in policies}
    out = {
        "want": want,
        "days": days,
        "n_users": int(len(users)),
        "n_sessions": result.n_sessions,
        "active_users": int(result.active_users().shape[0]),
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 2),
        "arm_seconds": result.meta.get("seconds", {}),
    }
    _write_json(path.with_name(path.stem + "_sessions.json"), result.to_dict())
    _write_json(path, out)
    for arm in policies:
        r = _row(out, arm, "logging", "clicks_per_user")
        ctx.log(f"online ({variant}) {arm}: ACN {r['mean']:.3f} ({_pct(r['rel_pct'])} vs logging)")
    return out


def _ceiling(ctx: _Seed, path: Path) -> dict[str, Any]:
    """Click-AUC ceiling of the base world's test sample (training/eval/ceiling.py): the
    logging policy replayed for the sample's users, the world's click probabilities scored."""
    from training.eval.baselines_run import split_days
    from training.eval.ceiling import click_ceiling

    req = ctx.test("base")
    users = np.unique(req.user_id)
    want = {"eval_sample": ctx.eval_key, "users": int(users.size)}
    if path.exists():
        have = _read_json(path)
        if have.get("want") == want:
            return have
    ds, _, _ = ctx.dataset("base")
    t0 = time.perf_counter()
    c = click_ceiling(world_config(ctx.cfg, ctx.seed, "base"), users, split_days(ds, "test"))
    y = req.label("click")
    out = {"want": want, "auc": c.auc, "impressions": c.n_impressions,
           "clicks": int(c.click.sum()), "mean_p_click": float(c.p_click.mean()),
           "sample_impressions": int(req.n_impressions), "sample_clicks": int(y.sum()),
           "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    out["replay_matches_log"] = bool(
        out["impressions"] == out["sample_impressions"] and out["clicks"] == out["sample_clicks"]
    )
    _write_json(path, out)
    ctx.log(f"click-AUC ceiling {c.auc:.4f} on {c.n_impressions:,} impressions (replay matches "
            f"the log: {out['replay_matches_log']}, {out['seconds']:.0f} s)")  # fmt: skip
    return out


#: Policies of the slate-truth diagnostic: name -> (run, network) for Q networks.
TRUTH_Q_ARMS = {"teacher": ("drl", "teacher"), "student": ("drl", "student"),
                "student_gamma0": ("gamma0", "student"),
                "student_request0.4": ("request_gamma0.4", "student")}  # fmt: skip
#: Users (of the online population) whose first list of the test day the diagnostic scores.
TRUTH_USERS = 3000


def _slate_truth(ctx: _Seed, path: Path) -> dict[str, Any] | None:
    """What each policy puts in the first list of a session, by the world's truth (click
    probability, satisfaction logit, clickbait share): why greedy Q policies lose online."""
    from training.eval.baselines_run import ORACLE_LT_REWARD, split_days
    from training.eval.ceiling import first_slates
    from training.eval.online import OraclePolicy, RandomPolicy
    from training.eval.policies import QPolicy
    from training.sim.logging_policy import LoggingPolicy
    from training.sim.world import build_world

    present = {a: v for a, v in TRUTH_Q_ARMS.items()
               if (ctx.root / v[0] / "train.json").exists()}  # fmt: skip
    if "student" not in present:
        return None
    want = {"arms": sorted(present), "users": TRUTH_USERS, "online_users": ctx.cfg.online_users}
    if path.exists():
        have = _read_json(path)
        if have.get("want") == want:
            return have
    ds, side, _ = ctx.dataset("base")
    world = build_world(world_config(ctx.cfg, ctx.seed, "base"))
    users = online_population(ctx.seed, world.n_users, ctx.cfg.online_users)[:TRUTH_USERS]
    pols: dict[str, Any] = {"logging": LoggingPolicy(world), "random": RandomPolicy(ctx.seed),
                            "click_oracle": OraclePolicy(reward="click"),
                            "long_term_oracle": OraclePolicy(reward=ORACLE_LT_REWARD)}  # fmt: skip
    for arm, (run_name, which) in present.items():
        cfg = drl_config_from(_read_json(ctx.root / run_name / "train.json")["config"])
        tr = _drl_nets(ctx.root / run_name, cfg, side, "cpu")
        pols[arm] = QPolicy(tr.model.teacher if which == "teacher" else tr.model.student, side)
    t0 = time.perf_counter()
    day = split_days(ds, "test")[0]
    rows = first_slates(world, pols, users, day, world.cfg.list_size)
    out = {"want": want, "day": day, "rows": rows, "seconds": round(time.perf_counter() - t0, 2)}
    _write_json(path, out)
    ctx.log(f"slate truth: {len(rows)} policies, {rows['logging']['requests']} requests "
            f"({out['seconds']:.0f} s)")  # fmt: skip
    return out


def _row(online: Mapping[str, Any], arm: str, baseline: str, metric: str) -> dict[str, Any]:
    return next(r for r in online["rows"][baseline] if r["arm"] == arm and r["metric"] == metric)


def _cost(cfg: ReportConfig, run_dir: Path, path: Path, log: Callable[[str], None]) -> dict | None:
    """Serving cost of the first seed's student against its teacher (Table 3's cost side)."""
    want = {"candidates": cfg.cost_candidates, "k": cfg.cost_k, "requests": cfg.cost_requests,
            "rounds": cfg.cost_rounds, "run": str(run_dir)}  # fmt: skip
    if path.exists() and _read_json(path).get("want") == want:
        return _read_json(path)
    if not (run_dir / "train.json").exists():
        log("cost: the first seed's drl run is missing; skipped")
        return None
    mod = _load_cost_module()
    info = _read_json(run_dir / "train.json")
    dcfg = drl_config_from(info["config"])
    ck = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    from training.drl.train import DRLRec

    model = DRLRec(dcfg)
    model.load_state_dict(ck["model"])
    nets = {"teacher": model.teacher.eval(), "student": model.student.eval()}
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
        "want": want,
        "teacher": t,
        "student": s,
        "student_over_teacher": {k: s[k] / t[k] for k in keys},
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    _write_json(path, out)
    r = out["student_over_teacher"]
    log(
        f"cost: student/teacher bytes {r['bytes_in_memory']:.3f}, MACs {r['macs_per_request']:.3f}"
        f", ms {r['ms_per_request']:.3f} ({t['ms_per_request']:.1f} vs {s['ms_per_request']:.1f})"
    )
    return out


def run_seed(
    cfg: ReportConfig,
    seed: int,
    runs: list[RunSpec],
    root: Path,
    data_root: Path,
    only: Sequence[str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or skip, when finished) the seed's runs and online tests; returns what ran."""
    root.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        log(f"[seed {seed}] {msg}")

    ctx = _Seed(cfg, seed, root, data_root, progress, say)
    done: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    for spec in runs:
        if not _selected(only, spec.name, spec.group):
            continue
        run_dir = root / spec.name
        if spec.kind == "drl":
            info = _run_drl(ctx, spec, run_dir)
        elif spec.kind == "hrl":
            info = _run_hrl(ctx, spec, run_dir)
        else:
            info = _run_pointwise(ctx, spec, run_dir, cache)
        if info["skipped"]:
            say(f"{spec.name}: finished earlier, skipped")
        done[spec.name] = info["skipped"]
    if _selected(only, "online"):
        arms = {"teacher": ("drl", "teacher"), "student": ("drl", "student"),
                "student_gamma0": ("gamma0", "student")}  # fmt: skip
        _online(ctx, "base", arms, root / "online.json", optional=["student_gamma0"])
    if _selected(only, "control"):
        arms = {"student_gamma0.4": ("control_gamma0.4", "student"),
                "student_gamma0": ("control_gamma0", "student"),
                "teacher_gamma0.4": ("control_gamma0.4", "teacher"),
                "teacher_gamma0": ("control_gamma0", "teacher")}  # fmt: skip
        _online(ctx, "long_term_off", arms, root / "control_online.json")
    if _selected(only, "main", "ceiling"):
        _ceiling(ctx, root / "ceiling.json")
    if _selected(only, "online"):
        _slate_truth(ctx, root / "slate_truth.json")
    if _selected(only, "horizon"):
        req = {f"{who}_request{g:g}": (f"request_gamma{g:g}", who)
               for who in ("student", "teacher") for g in HORIZON_GAMMAS}  # fmt: skip
        arms = {"student_slot": ("drl", "student"), "student_slot_gamma0": ("gamma0", "student"),
                **req}  # fmt: skip
        _online(ctx, "base", arms, root / "horizon_online.json",
                optional=["student_slot", "student_slot_gamma0"])  # fmt: skip
        arms = {a: (f"control_{run}", who) for a, (run, who) in req.items()}
        _online(ctx, "long_term_off", arms, root / "horizon_control_online.json")
    meta = {}
    for variant, (ds, _, gen) in ctx._data.items():
        meta[variant] = {"path": str(ds.root), "counts": ds.meta.get("counts"),
                         "generated_now": gen.get("generated"),
                         "generate_seconds": gen.get("seconds")}  # fmt: skip
    if meta:
        path = root / "datasets.json"
        old = _read_json(path) if path.exists() else {}
        _write_json(path, {**old, **meta})
    return done


# --------------------------------------------------------------------------------------------
# collecting and aggregating (pure functions first)
# --------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for one value; NaN for none) of the finite values."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def pooled(points: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> dict:
    """Mean over seeds of per-seed estimates, with the interval of that mean from the per-seed
    95% intervals (seeds independent): ``h = sqrt(sum_s h_s^2) / S``, ``h_s = (hi - lo) / 2``.
    """
    p = np.asarray(points, dtype=np.float64)
    h = (np.asarray(highs, dtype=np.float64) - np.asarray(lows, dtype=np.float64)) / 2.0
    m = float(p.mean())
    half = float(np.sqrt(np.sum(h**2)) / p.size)
    return {"mean": m, "std": float(p.std(ddof=1)) if p.size > 1 else 0.0, "low": m - half,
            "high": m + half, "per_seed": p.tolist()}  # fmt: skip


def relaimpr_columns(
    aucs: Mapping[str, Mapping[int, float]], base: str = "fm"
) -> dict[str, dict[str, Any]]:
    """RelaImpr (%) of every model over ``base``, per seed then mean ± std over seeds.

    ``aucs``: model -> seed -> AUC. A model's RelaImpr on seed ``s`` uses the base's AUC on
    ``s`` (seeds where the base is missing are left out):
    ``RelaImpr = ((AUC - 0.5) / (AUC_base - 0.5) - 1) * 100``.
    """
    out: dict[str, dict[str, Any]] = {}
    b = aucs.get(base, {})
    for name, per in aucs.items():
        ri = {s: rela_impr(a, b[s]) for s, a in per.items() if s in b}
        m, sd = mean_std(list(ri.values()))
        am, asd = mean_std(list(per.values()))
        out[name] = {"auc": (am, asd), "relaimpr": (m, sd), "auc_per_seed": dict(per),
                     "relaimpr_per_seed": ri, "seeds": sorted(per)}  # fmt: skip
    return out


def direction_status(per_seed: Sequence[float], direction: int = 1) -> dict[str, Any]:
    """A sign claim ("A > B" for ``direction`` +1, "A < B" for -1) on per-seed differences.

    Reproduced when the mean difference has the claimed sign and every seed agrees.
    """
    d = np.asarray(per_seed, dtype=np.float64)
    if d.size == 0:
        return {"status": "not run", "agree": 0, "seeds": 0, "mean": math.nan}
    agree = int(np.sum(d * direction > 0))
    ok = bool(float(d.mean()) * direction > 0 and agree == d.size)
    return {"status": "reproduced" if ok else "not reproduced", "agree": agree,
            "seeds": int(d.size), "mean": float(d.mean())}  # fmt: skip


def ratio_status(ours: float, paper: float, tol: float = RATIO_TOLERANCE) -> str:
    """Reproduced when ``|ours / paper - 1| <= tol``."""
    if ours is None or not np.isfinite(ours):
        return "not run"
    return "reproduced" if abs(ours / paper - 1.0) <= tol else "not reproduced"


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


def paired_auc_diff(
    y: np.ndarray, users: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int, seed: int
) -> tuple[float, float, float]:
    """``AUC(a) - AUC(b)`` on the same impressions, user-cluster bootstrap 95% interval."""

    def stat(y_: np.ndarray, a_: np.ndarray, b_: np.ndarray) -> float:
        return auc(y_, a_) - auc(y_, b_)

    return bootstrap_ci(stat, y, a, b, n_boot=n_boot, rng=np.random.default_rng([seed, 41]),
                        groups=users)  # fmt: skip


def _collect(root: Path, seeds: Sequence[int], plan: Mapping[int, list[RunSpec]]) -> dict:
    """Per seed: run name -> train.json (finished runs only), online, control, datasets."""
    out: dict[int, dict[str, Any]] = {}
    for s in seeds:
        d = root / f"seed{s}"
        runs = {}
        for spec in plan[s]:
            p = d / spec.name / "train.json"
            if p.exists():
                info = _read_json(p)
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
            entry[key] = _read_json(p) if p.exists() else None
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


def _table2_keys() -> list[tuple[str, str, str, str]]:
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
    cache: dict[str, list[float]] = _read_json(cache_path) if cache_path.exists() else {}

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
    for key, run, which, _ in _table2_keys():
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
    # ---- claims ----
    claims: list[dict[str, Any]] = []

    def sign_claim(
        cid: str, text: str, paper: str, a: tuple[str, str], b: tuple[str, str], direction: int = 1
    ) -> None:
        d = diff(a, b)
        per = d["per_seed"] if d else []
        st = direction_status(per, direction)
        claims.append({"id": cid, "claim": text, "paper": paper, "diff": d, **st})

    pw = {m: table2[m]["auc"][0] for m in POINTWISE if table2[m]["seeds"]}
    best_pw = max(pw, key=lambda m: pw[m]) if pw else None
    sign_claim("student>teacher", "DRL-Rec (50% student) beats its teacher on AUC",
               "0.7653 vs 0.7619", ("drl", "student"), ("drl", "teacher"))  # fmt: skip
    sign_claim("student>hrl", "DRL-Rec beats HRL-Rec (DDPG) on AUC", "0.7653 vs 0.7625",
               ("drl", "student"), ("hrl", "actor"))  # fmt: skip
    if best_pw:
        sign_claim("student>pointwise", f"DRL-Rec beats the best point-wise model ({best_pw})",
                   f"0.7653 vs {PAPER['table2']['autoint'][0]} (AutoInt)", ("drl", "student"),
                   (best_pw, "score"))  # fmt: skip
        sign_claim("teacher>pointwise", f"The RL teacher beats the best point-wise model "
                   f"({best_pw})", "0.7619 vs 0.7463", ("drl", "teacher"),
                   (best_pw, "score"))  # fmt: skip
    for n, (_, title) in ABLATIONS.items():
        d = ablation_diffs[n]
        st = direction_status(d["per_seed"] if d else [], -1)
        pa_ = PAPER["table4"][n][0]
        claims.append({"id": f"ablation:{n}", "claim": f"Ablation {title} lowers the AUC",
                       "paper": f"{pa_:.4f} vs 0.7653", "diff": d, **st})  # fmt: skip
    cm = sweep_means("compression")
    claims.append({"id": "fig4a", "claim": "Fig. 4a: AUC stable from 87.5% to 50%, then drops "
                   "sharply to 25%", "paper": "stable, then a sharp drop",
                   **compression_shape(cm)})  # fmt: skip
    fm_ = sweep_means("n_filtered")
    claims.append({"id": "fig4b", "claim": "Fig. 4b: top-3 filtered items is the best of 1/3/5/10",
                   "paper": "best at 3", **best_at(fm_, 3)})  # fmt: skip
    em = sweep_means("n_explore")
    ex = {"status": "not run"}
    if 100 in em and 1000 in em:
        ex = direction_status([em[1000] - em[100]], 1)
    claims.append({"id": "n_explore", "claim": "More input exploration candidates help "
                   "(AUC at 1000 above AUC at 100)", "paper": "1000 chosen; too few insufficient",
                   **ex})  # fmt: skip
    online = _online_table(seeds, col)
    if online:
        rel = online["student_vs_teacher"]
        ok = rel["low"] > 0
        claims.append({"id": "online_acn", "claim": "Online: the student's ACN beats the "
                       "teacher's (significant at 0.05)", "paper": "+1.38%",
                       "status": "reproduced" if ok else "not reproduced",
                       "ours": f"{_pct(rel['mean'], 2)} [{_pct(rel['low'], 2)}, "
                       f"{_pct(rel['high'], 2)}]"})  # fmt: skip
    cost = _read_json(root / "cost.json") if (root / "cost.json").exists() else None
    if cost:
        r = cost["student_over_teacher"]
        for key, paper_key, text in (
            ("bytes_in_memory", "memory", "Student memory / teacher's"),
            ("ms_per_request", "computation", "Student computation / teacher's (measured time)"),
            ("macs_per_request", "computation", "Student computation / teacher's (multiply-adds)"),
        ):
            claims.append({"id": f"cost:{key}", "claim": text,
                           "paper": f"{PAPER['table3'][paper_key]:.1%}",
                           "ours": f"{r[key]:.1%}",
                           "status": ratio_status(r[key], PAPER["table3"][paper_key])})  # fmt: skip
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
    hc = horizon.get("control")
    if hc:
        claims.append({"id": "control:request", "claim": "Negative control, per-request discount "
                       "variant: with the long-term mechanisms off, gamma 0.4 does not beat gamma "
                       "0 online (student ACN)", "paper": "(ours)",
                       "ours": _ci(hc["student"], 2, pct=True),
                       "status": "holds" if hc["student"]["holds"] else "violated"})  # fmt: skip
    # the gap student - teacher in every DRL-Rec variant that has both (what lifts the student)
    gaps = []
    for spec in plan[seeds[0]]:
        if spec.kind != "drl" or spec.world != "base":
            continue
        d = diff((spec.name, "student"), (spec.name, "teacher"))
        if d:
            gaps.append({"run": spec.name, **d})
    if root.exists():
        _write_json(cache_path, cache)
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
        rows = [_row(col[s]["online"], arm, "logging", "clicks_per_user") for s in have]
        rel_t = [_row(col[s]["online"], arm, "teacher", "clicks_per_user") for s in have]
        cps = [_row(col[s]["online"], arm, "logging", "clicks_per_session") for s in have]
        dps = [_row(col[s]["online"], arm, "logging", "depth_per_session") for s in have]
        table["arms"][arm] = {
            "acn": pooled([r["mean"] for r in rows], [r["low"] for r in rows],
                          [r["high"] for r in rows]),
            "vs_logging": pooled([r["rel_pct"] for r in rows], [r["rel_low"] for r in rows],
                                 [r["rel_high"] for r in rows]),
            "vs_teacher": pooled([r["rel_pct"] for r in rel_t], [r["rel_low"] for r in rel_t],
                                 [r["rel_high"] for r in rel_t]),
            "clicks_per_session": mean_std([r["mean"] for r in cps]),
            "depth_per_session": mean_std([r["mean"] for r in dps]),
        }  # fmt: skip
    table["student_vs_teacher"] = table["arms"]["student"]["vs_teacher"]
    if "student_gamma0" in table["arms"]:
        rows = [_row(col[s]["online"], "student", "student_gamma0", "clicks_per_user")
                for s in have]  # fmt: skip
        table["gamma_full_world"] = pooled([r["rel_pct"] for r in rows],
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
        rows = [_row(col[s]["control"], f"{who}_gamma0.4", f"{who}_gamma0", "clicks_per_user")
                for s in have]  # fmt: skip
        p = pooled([r["rel_pct"] for r in rows], [r["rel_low"] for r in rows],
                   [r["rel_high"] for r in rows])  # fmt: skip
        out[who] = {**p, "holds": bool(p["low"] <= 0.0)}
    for arm in ("logging", "student_gamma0.4", "student_gamma0", "teacher_gamma0.4",
                "teacher_gamma0"):  # fmt: skip
        rows = [_row(col[s]["control"], arm, "logging", "clicks_per_user") for s in have]
        out.setdefault("acn", {})[arm] = pooled([r["mean"] for r in rows],
                                                [r["low"] for r in rows],
                                                [r["high"] for r in rows])  # fmt: skip
    return out


def _rel(online: Mapping[int, Any], have: Sequence[int], arm: str, base: str) -> dict[str, Any]:
    """Relative ACN change ``arm`` vs ``base`` (paired per user), pooled over ``have``."""
    rows = [_row(online[s], arm, base, "clicks_per_user") for s in have]
    return pooled([r["rel_pct"] for r in rows], [r["rel_low"] for r in rows],
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
            rows = [_row(on[s], a, "logging", "clicks_per_user") for s in have]
            t["acn"][a] = pooled([r["mean"] for r in rows], [r["low"] for r in rows],
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


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def _f(x: float | None, d: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{d}f}"


def _pct(x: float | None, d: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{d}f}%"


def _pm(ms: Sequence[float], d: int = 4) -> str:
    if ms is None or ms[0] is None or math.isnan(ms[0]):
        return "n/a"
    return f"{_f(ms[0], d)} ± {_f(ms[1], d)}"


def _ci(p: Mapping[str, float] | None, d: int = 4, pct: bool = False) -> str:
    if not p:
        return "n/a"
    f = (lambda x: _pct(x, d)) if pct else (lambda x: f"{x:+.{d}f}")
    return f"{f(p['mean'])} [{f(p['low'])}, {f(p['high'])}]"


def _mmss(sec: float) -> str:
    sec = float(sec)
    if sec >= 3600:
        return f"{int(sec // 3600)}:{int(sec % 3600 // 60):02d}:{int(sec % 60):02d}"
    return f"{int(sec // 60)}:{int(round(sec % 60)):02d}" if sec >= 60 else f"{sec:.0f} s"


def _status(s: str) -> str:
    bold = ("reproduced", "not reproduced", "holds", "violated")
    return f"**{s}**" if s in bold else s


def _claim_ours(c: Mapping[str, Any]) -> str:
    if "ours" in c:
        return str(c["ours"])
    if c.get("diff"):
        d = c["diff"]
        return f"Δ AUC {_ci(d)} (seeds agreeing {c['agree']}/{c['seeds']})"
    if c["id"] == "fig4a" and "drop_50_to_25" in c:
        return (
            f"drop 50%→25%: {c['drop_50_to_25']:+.4f}; largest step 87.5%..50%: "
            f"{c['max_step_87_to_50']:.4f}"
        )
    if c["id"] == "fig4b" and "best" in c:
        return f"best at {c['best']}"
    if c["id"] == "n_explore" and "mean" in c:
        return f"AUC(1000) - AUC(100) = {c['mean']:+.4f}"
    return "n/a"


def build_report(
    cfg: ReportConfig,
    seeds: Sequence[int],
    runs_root: str | Path,
    out: str | Path,
    preset_name: str,
    wall_seconds: float | None = None,
    command: str | None = None,
) -> Path:
    """Write ``report.md``, the PNG plots and ``summary.json`` into ``out``."""
    runs_root, out = Path(runs_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = build_plan(cfg, seeds)
    agg = aggregate(cfg, seeds, runs_root, plan)
    plots = _plots(agg, cfg, out)
    lines: list[str] = []
    w = lines.append
    seeds_s = ", ".join(map(str, seeds))
    w(f"# DRL-Rec report: `{preset_name}` world, seeds {seeds_s}")
    w("")
    w(f"- Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `{command or 'ranker drl-report'}`")
    versions = sorted({i.get("code_version", "?") for s in seeds
                       for i in agg["collected"][s]["runs"].values()} - {"?"})  # fmt: skip
    w(f"- Code version: `{code_version()}`" + (f" (runs: {', '.join(versions)})" if versions
                                                 else ""))  # fmt: skip
    w(f"- Run folders: `{runs_root}` (checkpoints, per-run train.json, scores, online sessions)")
    wc = world_config(cfg, seeds[0], "base")
    w(f"- World: preset `{cfg.world_preset}`: {wc.n_users:,} users, {wc.n_items:,} items, "
      f"{wc.n_days} days (the last is the test day), {wc.n_candidates} candidates per request, "
      f"lists of {wc.list_size}")  # fmt: skip
    w(f"- Training budget per run: **{cfg.budget:,} real instances** (logged impressions; "
      f"`max_instances` {cfg.max_instances:,} x scale {cfg.scale:g}), one pass, the same stream "
      "for every model; point-wise models see the same number of impressions")  # fmt: skip
    w(f"- Input exploration candidates: **{cfg.n_explore}** in every run except the sweep. The "
      "paper's default is 1000; 100 keeps CPU training 2-3x faster. The sweep covers "
      "100/500/1000.")  # fmt: skip
    sweep_on = sorted({s for s in seeds for r in plan[s] if r.group == "sweeps"})
    w(f"- Fig. 4 sweeps run on seed(s) {', '.join(map(str, sweep_on)) or 'none'} only "
      "(time budget); Tables 2-4, online and the control on every seed.")  # fmt: skip
    n_test = sorted({i["eval"]["impressions"] for s in seeds
                     for i in agg["collected"][s]["runs"].values()
                     if i.get("spec", {}).get("world") == "base"})  # fmt: skip
    w(f"- Offline test sample: {', '.join(f'{n:,}' for n in n_test) or 'n/a'} impressions per "
      f"seed (whole users of the test day drawn at random; `test_impressions` "
      f"{cfg.test_impressions:,}, 0 = all). No choice is made on the test split.")  # fmt: skip
    w("")
    w("## Claims of the paper, as measured here")
    w("")
    w("Sign claims are **reproduced** when the mean over seeds has the paper's sign and every "
      "seed agrees; Δ is a paired AUC difference on the same test impressions, its 95% interval "
      "from a user-cluster bootstrap pooled over seeds. Cost ratios are reproduced within "
      f"{RATIO_TOLERANCE:.0%} (relative) of the paper's.")  # fmt: skip
    w("")
    w("| claim | paper | ours | status |")
    w("|---|---|---|---|")
    for c in agg["claims"]:
        w(f"| {c['claim']} | {c['paper']} | {_claim_ours(c)} | {_status(c['status'])} |")
    ctl = agg["control"]
    if ctl:
        st = "**holds**" if ctl["student"]["holds"] else "**violated**"
        w(
            f"| Negative control: with the long-term mechanisms off, gamma 0.4 does not beat "
            f"gamma 0 online (student ACN) | (ours) | {_ci(ctl['student'], 2, pct=True)} | {st} |"
        )
    w("")
    _table2_section(w, agg)
    _table4_section(w, agg, plots)
    _fig4_section(w, agg, cfg, plots)
    _table3_section(w, agg, cfg)
    _slate_truth_section(w, agg)
    _control_section(w, agg, cfg)
    _variants_section(w, agg, cfg)
    _gap_section(w, agg)
    _diagnostics_section(w, agg, seeds)
    _timing_section(w, agg, cfg, seeds, wall_seconds)
    w("## Configuration")
    w("")
    w("Report config:")
    w("")
    w("```json")
    w(json.dumps(cfg.to_dict(), indent=1, sort_keys=True))
    w("```")
    w("")
    w("DRL-Rec base config (seed 0; each run overrides one field):")
    w("")
    w("```json")
    w(json.dumps(dataclasses.asdict(cfg.drl_config(0)), sort_keys=True))
    w("```")
    w("")
    try:
        hrl = json.dumps(dataclasses.asdict(cfg.hrl_config(0)), sort_keys=True)
    except ImportError as e:  # training/drl/hrl.py is not importable: report the rest
        hrl = f"unavailable ({e})"
    w(f"HRL-Rec config: `{hrl}`")
    w("")
    w("Runs per seed: " + "; ".join(f"seed {s}: {len(plan[s])}" for s in seeds)
      + ". Negative-control world overrides: "
      + ", ".join(f"`{k}=false`" for k in _LONG_TERM_OFF_KEYS) + ".")  # fmt: skip
    w("")
    analysis = out / "analysis.md"
    if analysis.exists():
        w("## Analysis (hand-written, `analysis.md`)")
        w("")
        w(analysis.read_text().strip())
        w("")
    path = out / "report.md"
    tmp = path.with_name(f".report.md.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    small = {k: v for k, v in agg.items() if k != "collected"}
    small.update({"version": VERSION, "preset": preset_name, "config": cfg.to_dict(),
                  "drl_config": dataclasses.asdict(cfg.drl_config(0)),
                  "world": wc.to_dict(), "code_version": code_version(),
                  "run_code_versions": versions, "wall_seconds": wall_seconds,
                  "runs_root": str(runs_root), "plots": plots})  # fmt: skip
    small["compression_cost"] = {str(k): v for k, v in small["compression_cost"].items()}
    small["sweep_means"] = {k: {str(a): b for a, b in v.items()}
                            for k, v in small["sweep_means"].items()}  # fmt: skip
    _write_json(out / "summary.json", _jsonable(small))
    return path


def _table2_section(w: Callable[[str], None], agg: Mapping[str, Any]) -> None:
    w("## Table 2 analogue: offline click AUC (test sample)")
    w("")
    w("RelaImpr over FM per seed, then mean ± std over seeds. Scores: the predicted click logit "
      "(point-wise), Q(s_t, a_t) of the logged impression (teacher, student), the actor's "
      "ranking score <mu(s_t), W a_t> (HRL-Rec).")  # fmt: skip
    w("")
    w("| model | AUC (ours) | RelaImpr (ours) | AUC (paper) | RelaImpr (paper) | seeds |")
    w("|---|---:|---:|---:|---:|---:|")
    for key, _, _, title in _table2_keys():
        r = agg["table2"].get(key)
        p = PAPER["table2"][key]
        if not r or not r["seeds"]:
            w(f"| {title} | n/a | n/a | {p[0]:.4f} | {p[1]:.2f}% | 0 |")
            continue
        ri = r["relaimpr"]
        w(
            f"| {title} | {_pm(r['auc'])} | {_f(ri[0], 2)}% ± {_f(ri[1], 2)} | {p[0]:.4f} | "
            f"{p[1]:.2f}% | {len(r['seeds'])} |"
        )
    ce = agg.get("ceiling") or {}
    if ce.get("per_seed"):
        w(
            f"| *Ceiling: the world's own click probability* | {_pm(ce['auc'])} | | | | "
            f"{len(ce['per_seed'])} |"
        )
    w("")
    if ce.get("per_seed"):
        cap = ce["captured"]
        best = max(cap, key=lambda k: cap[k][0]) if cap else None
        w(
            "The ceiling row is no model: it scores each test impression by its true click "
            "probability, recomputed by replaying the logging policy for the sample's users "
            "(training/eval/ceiling.py; the replay reproduces the logged impressions and clicks "
            f"exactly: {'yes' if ce['replay_matches_log'] else '**no**'}). No model can beat it "
            "in expectation. Share of the ceiling's lift over chance, (AUC - 0.5) / (ceiling - "
            "0.5): "
            + ", ".join(f"{k} {cap[k][0]:.1%}" for k in ("fm", "wide_deep", "teacher", "student")
                        if k in cap)
            + (f"; the best is {best} ({cap[best][0]:.1%})." if best else ".")
        )  # fmt: skip
        w("")
    c = agg["hrl_critic_auc"]
    if not math.isnan(c[0]):
        w(
            f"HRL-Rec's critic Q(s, W a) scores an AUC of {_pm(c)} (its actor's ranking score is "
            "the table's number)."
        )
        w("")


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


def _variants_section(w: Callable[[str], None], agg: Mapping[str, Any], cfg: ReportConfig) -> None:
    tau, hz = agg["tau"], agg["horizon"]
    has_tau = not math.isnan(tau["student"][0])
    if not has_tau and not hz.get("base") and not hz.get("control"):
        return
    w("## Variants beyond the paper: the KL temperature and a per-request discount")
    w("")
    w(
        "Two findings of the runs above, each tested with one more run per seed. Neither changes "
        "the headline configuration (METHODS.md: tau = 10, gamma per slot), and nothing here is "
        "chosen on the test split: these rows say *why* two of the paper's effects are absent."
    )
    w("")
    base_t = cfg.drl_config(0).temperature
    if has_tau:
        w(f"### The list-wise KL at tau = {tau['tau']:g}")
        w("")
        w("| run | student AUC | KL / TD (last window, mean over seeds) | Δ AUC vs no KL |")
        w("|---|---:|---:|---:|")
        kr = tau["kl_over_td"]
        t4 = agg["table4"]
        drl_auc = t4.get("drl", {}).get("auc")
        w(f"| DRL-Rec, tau = {base_t:g} (`drl`) | {_pm(drl_auc) if drl_auc else 'n/a'} | "
          f"{_sci(kr.get('drl'))} | {_ci(tau['drl_vs_no_kl'])} |")  # fmt: skip
        tau_run = f"tau{tau['tau']:g}"
        w(f"| DRL-Rec, tau = {tau['tau']:g} (`{tau_run}`) | {_pm(tau['student'])} | "
          f"{_sci(kr.get(tau_run))} | {_ci(tau['vs_no_kl'])} |")  # fmt: skip
        w("")
        w(
            f"tau = {tau['tau']:g} minus tau = {base_t:g}: {_ci(tau['vs_drl'])} (paired, pooled "
            "over seeds). With the tau^2 factor the KL is, for small differences, about half "
            "the variance over the list of Q_teacher - Q_student whatever tau (tau only "
            "reweights the list's items), so a smaller tau does not make the term larger; the "
            "last column says whether distillation through it moves the student's AUC."
        )
        w("")
    b, c = hz.get("base"), hz.get("control")
    if b or c:
        gamma = cfg.drl_config(0).gamma
        k = world_config(cfg, agg["seeds"][0], "base").list_size
        w("### Discounting per request instead of per slot")
        w("")
        w(
            f'`DRLConfig.discount = "request"`: no discount between the slots of one request, '
            f"gamma = {gamma:g} where the next state is the session's next request (terminal at "
            "the session's end). Q(s_t, a) then values the rest of the list plus "
            f"{gamma:g} x the next request's value, instead of weighing the next request by "
            f"{gamma:g}^{k} = {gamma**k:.0e}. The leave hazard and cross-request fatigue act "
            "exactly there. `request_gamma0` keeps the list's own future and drops the next "
            "request: the pair isolates the cross-request term."
        )
        w("")
        auc = hz.get("auc", {})
        if auc:
            w("| run | discount | gamma | student AUC |")
            w("|---|---|---:|---:|")
            for run, disc, g in (("drl", "slot", gamma), ("gamma0", "slot", 0.0),
                                 ("request_gamma0.4", "request", 0.4),
                                 ("request_gamma0", "request", 0.0)):  # fmt: skip
                a = auc.get(run)
                shown = _pm(a) if a and not math.isnan(a[0]) else "n/a"
                w(f"| `{run}` | {disc} | {g:g} | {shown} |")
            if hz.get("auc_vs_drl"):
                w("")
                w(f"Offline, request_gamma0.4 minus drl (student): {_ci(hz['auc_vs_drl'])}.")
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
                      f"{_ci(t[who], 2, True)}{verdict} |")  # fmt: skip
            if "request_vs_slot" in t:
                w(f"| student: request gamma 0.4 vs slot gamma 0.4 (the paper's) | "
                  f"{_ci(t['request_vs_slot'], 2, True)} |")  # fmt: skip
            if "request0_vs_slot0" in t:
                w(f"| student: request gamma 0 vs slot gamma 0 | "
                  f"{_ci(t['request0_vs_slot0'], 2, True)} |")  # fmt: skip
            w("")
            w("| arm | ACN | vs logging |")
            w("|---|---:|---:|")
            for a, r in t["acn"].items():
                w(f"| {a} | {_ci(r, 3).replace('+', '')} | {_ci(t['vs_logging'][a], 2, True)} |")
            w("")


def _slate_truth_section(w: Callable[[str], None], agg: Mapping[str, Any]) -> None:
    t = agg.get("slate_truth")
    if not t:
        return
    w("### What the policies place: the first list of a session, by the world's truth")
    w("")
    w(
        f"The same first requests of the test day (users of the online population; "
        f"{', '.join(f'{n:,}' for n in t['requests'])} requests per seed) ranked by each policy, "
        "the placed items scored by the world: click probability at their slot, mean "
        "satisfaction logit (it drives the leave hazard after each request) and the share of "
        "clickbait items (high appeal, low satisfaction). Mean ± std over seeds "
        f"{', '.join(map(str, t['seeds']))}. Oracles are greedy on the truth: `click_oracle` on "
        "the click probability, `long_term_oracle` on click + 0.1 satisfaction."
    )
    w("")
    w("| policy | p(click) | satisfaction logit | clickbait share |")
    w("|---|---:|---:|---:|")
    for arm, r in t["rows"].items():
        w(f"| {arm} | {_pm(r['p_click'], 3)} | {_pm(r['satisfaction'], 2)} | "
          f"{_pm(r['clickbait'], 3)} |")  # fmt: skip
    w("")


def _sci(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1e}"


def _table4_section(w: Callable[[str], None], agg: Mapping[str, Any], plots: Mapping) -> None:
    w("## Table 4 analogue: ablations")
    w("")
    w(
        "Student AUC of each variant; Δ = variant - full DRL-Rec on the same impressions (paired, "
        "95% interval pooled over seeds). Each ablation changes one switch of the full run."
    )
    w("")
    w("| variant | student AUC | RelaImpr | Δ vs DRL-Rec | lower in seeds | teacher AUC | "
      "paper AUC | paper RelaImpr |")  # fmt: skip
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    t4 = agg["table4"]
    rows = [("drl", "DRL-Rec (full)")] + [(n, t) for n, (_, t) in ABLATIONS.items()]
    for n, title in rows:
        r = t4.get(n, {})
        p = PAPER["table4"][n]
        d = agg["ablation_diffs"].get(n)
        lower = f"{sum(x < 0 for x in d['per_seed'])}/{len(d['per_seed'])}" if d else ""
        if not r.get("seeds"):
            w(f"| {title} | n/a | n/a | n/a | | n/a | {p[0]:.4f} | {p[1]:.2f}% |")
            continue
        ri = r["relaimpr"]
        w(
            f"| {title} | {_pm(r['auc'])} | {_f(ri[0], 2)}% | {_ci(d) if d else '—'} | {lower} | "
            f"{_pm(r['teacher_auc'])} | {p[0]:.4f} | {p[1]:.2f}% |"
        )
    w("")
    w(
        "Without exploring and filtering a state's KL list holds the real item alone, so the KL "
        "term is 0 and distillation runs through the hint loss only (training/drl/train.py)."
    )
    w("")
    sizes = loss_sizes(agg)
    if sizes:
        w(
            f"Loss sizes in the full run (first seed, last logged window): TD (student) "
            f"{sizes['td_student']:.3g}, hint {sizes['hint']:.3g}, KL {sizes['kl']:.3g} "
            f"(KL / TD = {sizes['kl_over_td']:.1e})."
            + (
                " The KL carries Hinton's tau^2 factor, so for small differences it is about "
                "half the variance, over a state's lesson list, of Q_teacher - Q_student, "
                "whatever tau: it is small because the student's Q lists already agree with "
                "the teacher's (both fit TD targets from the same batches), and switching it "
                "off can change little. The tau = 1 variant below checks that tau is not the "
                "reason."
                if sizes["kl_over_td"] < 1e-2
                else ""
            )
        )
        w("")
    if plots.get("ablations"):
        w(f"![Ablations]({plots['ablations']})")
        w("")


def _fig4_section(w: Callable[[str], None], agg: Mapping[str, Any], cfg: ReportConfig,
                  plots: Mapping) -> None:  # fmt: skip
    w("## Fig. 4 analogues: compression rate, filtered items, input candidates")
    w("")
    w(
        "Every point on the seeds that ran the sweep; the base config's point (50%, k = 3, "
        f"{cfg.n_explore} inputs) is the full `drl` run on those seeds. Parameters and "
        "multiply-adds are the student's over the teacher's, counted from the architecture."
    )
    w("")
    cc = agg["compression_cost"]
    w("| compression | run | student AUC | teacher AUC | params (student/teacher) | "
      "MACs/request (student/teacher) | seeds |")  # fmt: skip
    w("|---:|---|---:|---:|---:|---:|---:|")
    for r in agg["sweeps"]["compression"]:
        c = cc.get(r["value"], {})
        w(
            f"| {r['value']:.1%} | {r['run']} | {_pm(r['student'])} | {_pm(r['teacher'])} | "
            f"{c.get('parameters', math.nan):.1%} | {c.get('macs', math.nan):.1%} | "
            f"{len(r['seeds'])} |"
        )
    w("")
    if plots.get("fig4a"):
        w(f"![Fig. 4a]({plots['fig4a']})")
        w("")
    for key, title in (("n_filtered", "filtered items (top-k per network)"),
                       ("n_explore", "input exploration candidates")):  # fmt: skip
        w(f"| {title} | run | student AUC | teacher AUC | seeds |")
        w("|---:|---|---:|---:|---:|")
        for r in agg["sweeps"][key]:
            w(
                f"| {r['value']} | {r['run']} | {_pm(r['student'])} | {_pm(r['teacher'])} | "
                f"{len(r['seeds'])} |"
            )
        w("")
    if plots.get("fig4b"):
        w(f"![Fig. 4b]({plots['fig4b']})")
        w("")
    w("The teacher gets no gradient from distillation, and its initialisation and batch stream "
      "do not depend on the compression rate or on k, so its AUC is the same across those "
      "sweeps (a check of the runs' determinism). The input-candidate count changes how many "
      "exploration draws the stream's generator makes, so from the stream's second chunk of "
      "sessions on the batches, and the teacher, differ.")  # fmt: skip
    w("")


def _table3_section(w: Callable[[str], None], agg: Mapping[str, Any], cfg: ReportConfig) -> None:
    w("## Table 3 analogue: online A/B test and serving cost")
    w("")
    on = agg["online"]
    if not on:
        w("Online A/B: not run.")
        w("")
    else:
        w(f"Simulated A/B test on the test day(s) {on['days']} with fresh sessions "
          f"(seed offset {cfg.online_seed_offset}), common random numbers across arms; "
          f"population {on['n_users'][0]:,} random users per seed (active: "
          f"{', '.join(map(str, on['active_users']))}; sessions: "
          f"{', '.join(map(str, on['n_sessions']))}). Greedy Q policies "
          "(training/eval/policies.py QPolicy). ACN = clicks per active user; relative changes "
          "are paired (per user), 95% intervals pooled over seeds "
          f"{', '.join(map(str, on['seeds']))}.")  # fmt: skip
        w("")
        w("| arm | ACN | vs teacher | vs logging | clicks/session | depth/session |")
        w("|---|---:|---:|---:|---:|---:|")
        for arm, r in on["arms"].items():
            w(
                f"| {arm} | {_ci(r['acn'], 3).replace('+', '')} | {_ci(r['vs_teacher'], 2, True)} "
                f"| {_ci(r['vs_logging'], 2, True)} | {_pm(r['clicks_per_session'], 2)} | "
                f"{_pm(r['depth_per_session'], 2)} |"
            )
        w("")
        w(
            f"Paper: DRL-Rec (student) vs the teacher: ACN **+1.38%**. Ours: "
            f"**{_ci(on['student_vs_teacher'], 2, True)}**."
        )
        w("")
        if on.get("arm_seconds_ratio"):
            w(
                "Time of the online arms (all requests of a day ranked in batches, the simulator's "
                f"share included): student / teacher = {on['arm_seconds_ratio'][0]:.2f} "
                f"(mean over seeds; {', '.join(f'{x:.2f}' for x in on['arm_seconds_ratio'][1])})."
            )
            w("")
    cost = agg["cost"]
    if not cost:
        w("Serving cost: not measured.")
        w("")
        return
    t, s, r = cost["teacher"], cost["student"], cost["student_over_teacher"]
    w(f"Serving cost of one list of {cost['want']['k']} from {cost['want']['candidates']} "
      "candidates (benchmarks/drl_cost.py `measure`: cached state, k scorer calls and k state "
      f"steps; torch on the CPU, {cost['threads']} thread, one request at a time, fastest of "
      f"{cost['want']['rounds']} rounds of {cost['want']['requests']} requests; load average "
      f"{cost['load_average']:.1f}):")  # fmt: skip
    w("")
    w("| | teacher | student | student / teacher | paper |")
    w("|---|---:|---:|---:|---:|")
    paper = PAPER["table3"]
    for key, title, pk in (
        ("parameters", "parameters", None),
        ("parameters_without_embeddings", "parameters without embeddings", None),
        ("bytes_in_memory", "bytes in memory", "memory"),
        ("bytes_on_disk", "bytes on disk", None),
        ("macs_per_request", "multiply-adds per request", None),
        ("ms_per_request", "ms per request (measured)", "computation"),
    ):
        pv = f"{paper[pk]:.1%}" if pk else ""
        w(f"| {title} | {t[key]:,} | {s[key]:,} | {r[key]:.1%} | {pv} |")
    w("")
    w("Multiply-adds scale with width squared (every width halves at 50%), so they fall to "
      "about a quarter; measured time falls far less, because per-call overheads of small "
      "matrices dominate at this size. The paper's 76.7% 'computation' is closer to the "
      "measured-time ratio.")  # fmt: skip
    w("")


def _control_section(w: Callable[[str], None], agg: Mapping[str, Any], cfg: ReportConfig) -> None:
    w("## Negative control: future rewards without long-term mechanisms")
    w("")
    ctl = agg["control"]
    if not ctl:
        w("Not run.")
        w("")
        return
    w(
        "World: the same preset with drift, cross-request fatigue and the satisfaction-dependent "
        "leave hazard switched off (`long_term_off`): nothing a ranking does now changes later "
        "requests, so valuing future rewards (gamma 0.4) has nothing to gain over gamma 0. Both "
        "DRL-Rec runs trained on that world's logs, compared online on its test day(s); relative "
        f"change of ACN (paired per user, pooled over seeds {', '.join(map(str, ctl['seeds']))})."
    )
    w("")
    w("| comparison | ACN change | verdict |")
    w("|---|---:|---|")
    for who in ("student", "teacher"):
        r = ctl[who]
        v = "holds (gamma 0.4 not better)" if r["holds"] else "violated (gamma 0.4 better)"
        w(f"| {who}: gamma 0.4 vs gamma 0 | {_ci(r, 2, True)} | {v} |")
    on = agg["online"]
    if on and "gamma_full_world" in on:
        w(
            f"| contrast, full world: student gamma 0.4 vs gamma 0 | "
            f"{_ci(on['gamma_full_world'], 2, True)} | (the same comparison with the mechanisms "
            "on) |"
        )
    w("")
    w("| arm (long-term-off world) | ACN |")
    w("|---|---:|")
    for arm, r in ctl["acn"].items():
        w(f"| {arm} | {_ci(r, 3).replace('+', '')} |")
    w("")
    gamma = cfg.drl_config(0).gamma
    k = world_config(cfg, agg["seeds"][0], "base").list_size
    w(
        f"Horizon: gamma discounts per slot (the last slot's next state is the next request's "
        f"first slot), so a reward one request ({k} slots) ahead weighs gamma^{k} = "
        f"{gamma**k:.1e} and the effective horizon 1 / (1 - gamma) is {1 / (1 - gamma):.2g} slots. "
        "The world's long-term mechanisms act across requests and sessions (the leave hazard "
        "after each request, cross-request fatigue, drift between sessions), mostly beyond what "
        "gamma 0.4 weighs; the contrast row shows how much it gains where they are on."
    )
    w("")


def _gap_section(w: Callable[[str], None], agg: Mapping[str, Any]) -> None:
    if not agg["gaps"]:
        return
    w("## Student minus teacher, per variant")
    w("")
    w(
        "Paired AUC difference (student - teacher of the same run) in every DRL-Rec variant: "
        "where the distilled student overtakes its teacher, and which switch moves the gap."
    )
    w("")
    w("| run | student - teacher | seeds |")
    w("|---|---:|---:|")
    for g in agg["gaps"]:
        w(f"| {g['run']} | {_ci(g)} | {len(g['seeds'])} |")
    w("")


def _diagnostics_section(w: Callable[[str], None], agg: Mapping[str, Any], seeds: Sequence[int]):
    w("## Training diagnostics (last logged window, first seed)")
    w("")
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


def _timing_section(w: Callable[[str], None], agg: Mapping[str, Any], cfg: ReportConfig,
                    seeds: Sequence[int], wall: float | None) -> None:  # fmt: skip
    w("## Timing")
    w("")
    tm = agg["timing"]
    w(f"Seconds per run as recorded when it ran (torch on {cfg.threads} thread, device "
      f"`{cfg.device}`; mean over the seeds that ran it):")  # fmt: skip
    w("")
    w("| run | train | eval | instances/s | seeds |")
    w("|---|---:|---:|---:|---:|")
    for name, r in tm["per_run"].items():
        w(
            f"| {name} | {_mmss(np.mean(r['train']))} | {_mmss(np.mean(r['eval']))} | "
            f"{np.mean(r['ips']):,.0f} | {len(r['train'])} |"
        )
    w("")
    w(
        f"Total recorded compute (runs, online tests, datasets generated here): "
        f"**{_mmss(tm['total_seconds'])}**"
        + (f"; wall clock of the command that wrote this report: {_mmss(wall)}" if wall else "")
        + "."
    )
    w("")


def _plots(agg: Mapping[str, Any], cfg: ReportConfig, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: dict[str, str] = {}
    # ---- ablations ----
    t4 = agg["table4"]
    rows = [("drl", "DRL-Rec")] + [(n, n.replace("no_", "- ")) for n in ABLATIONS]
    rows = [(n, t) for n, t in rows if t4.get(n, {}).get("seeds")]
    if rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        m = np.array([t4[n]["auc"][0] for n, _ in rows])
        sd = np.array([t4[n]["auc"][1] for n, _ in rows])
        x = np.arange(len(rows))
        ax.bar(x, m, yerr=sd, capsize=3, color=["#d62728"] + ["#7f7f7f"] * (len(rows) - 1))
        for xi, mi, si in zip(x, m, sd, strict=True):
            ax.text(xi, mi + si, f"{mi:.4f}", ha="center", va="bottom", fontsize=7)
        ax.axhline(m[0], ls="--", lw=1, color="#d62728")
        pad = max(0.004, 0.15 * float(np.max(m + sd) - np.min(m - sd)))
        ax.set_ylim(float(np.min(m - sd)) - pad, float(np.max(m + sd)) + pad)
        ax.set_xticks(x, [t for _, t in rows], rotation=25, ha="right")
        ax.set_ylabel("student test AUC (mean ± std over seeds)")
        ax.set_title("Table 4 analogue: ablations of DRL-Rec")
        fig.tight_layout()
        names["ablations"] = "ablations.png"
        fig.savefig(out / names["ablations"], dpi=110)
        plt.close(fig)

    def line(ax: Any, rows: list[dict], xs: list[float], label_x: str, title: str) -> None:
        st = np.array([r["student"][0] for r in rows], dtype=float)
        ss = np.array([r["student"][1] for r in rows], dtype=float)
        te = np.array([r["teacher"][0] for r in rows], dtype=float)
        ok = ~np.isnan(st)
        if not ok.any():
            ax.set_title(title + " (not run)")
            return
        xa = np.asarray(xs, dtype=float)
        ax.errorbar(xa[ok], st[ok], yerr=ss[ok], marker="o", color="#d62728", capsize=3,
                    label="student (DRL-Rec)")  # fmt: skip
        ax.plot(xa[ok], te[ok], ls="--", marker="x", color="#1f77b4", label="teacher")
        for xi, yi in zip(xa[ok], st[ok], strict=True):
            ax.annotate(f"{yi:.4f}", (xi, yi), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7)  # fmt: skip
        ax.set_xlabel(label_x)
        ax.set_ylabel("test AUC")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    sw = agg["sweeps"]
    fig, ax = plt.subplots(figsize=(6, 4))
    rows_c = sw["compression"]
    line(ax, rows_c, [100 * r["value"] for r in rows_c], "compression rate (student / teacher, %)",
         "Fig. 4a analogue: AUC vs compression rate")  # fmt: skip
    ax.invert_xaxis()
    fig.tight_layout()
    names["fig4a"] = "fig4a_compression.png"
    fig.savefig(out / names["fig4a"], dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    rows_k = sw["n_filtered"]
    line(a1, rows_k, [r["value"] for r in rows_k], "filtered exploration items (top-k)",
         "Fig. 4b analogue: AUC vs filtered items")  # fmt: skip
    a1.set_xticks([r["value"] for r in rows_k])
    rows_e = sw["n_explore"]
    line(a2, rows_e, [r["value"] for r in rows_e], "input exploration candidates",
         "AUC vs input candidates")  # fmt: skip
    a2.set_xscale("log")
    a2.set_xticks([r["value"] for r in rows_e], [str(r["value"]) for r in rows_e])
    fig.tight_layout()
    names["fig4b"] = "fig4b_filtered.png"
    fig.savefig(out / names["fig4b"], dpi=110)
    plt.close(fig)
    return names


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def run_drl_report(
    preset_name: str,
    seeds: Sequence[int],
    out: str | Path | None = None,
    runs_dir: str | Path = "runs/drl-report",
    data_root: str | Path = "data",
    scale: float | None = None,
    only: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
    command: str | None = None,
) -> Path:
    """Run (or resume) the plan for every seed, then write the report; returns report.md.

    ``out`` defaults to ``results/drl`` for the default preset, ``results/drl-<preset>``
    otherwise; runs go to ``<runs_dir>/<preset>/seed<s>/<name>/``. ``only`` limits what is run
    (run names or :data:`GROUPS`); the report covers every finished run found.
    """
    cfg = report_preset(preset_name).with_overrides(dict(overrides or {}))
    if scale is not None:
        cfg = dataclasses.replace(cfg, scale=float(scale))
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds}: need at least one, all distinct")
    plan = build_plan(cfg, seeds)
    known = {r.name for runs in plan.values() for r in runs} | set(GROUPS)
    only = [o for item in (only or []) for o in str(item).split(",") if o]
    bad = sorted(set(only) - known)
    if bad:
        raise ConfigError(f"--only: unknown names {bad} (runs and groups: {sorted(known)})")
    out = (
        Path(out)
        if out
        else Path("results") / ("drl" if preset_name == "default" else f"drl-{preset_name}")
    )
    root = Path(runs_dir) / preset_name
    say = log or (lambda s: None)

    def stamped(msg: str) -> None:
        say(f"{time.strftime('%H:%M:%S')} {msg}")

    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    for s in seeds:
        run_seed(cfg, s, plan[s], root / f"seed{s}", Path(data_root), only=only,
                 progress=progress, log=stamped)  # fmt: skip
    if _selected(only, "cost"):
        _cost(cfg, root / f"seed{seeds[0]}" / "drl", root / "cost.json", stamped)
    wall = time.perf_counter() - t0
    path = build_report(cfg, seeds, root, out, preset_name, wall_seconds=wall, command=command)
    stamped(f"report: {path} ({wall:.0f} s)")
    return path
