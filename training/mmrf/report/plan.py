"""The MMRF report's plan: its config (presets, budgets, ``--budget`` overrides) and what runs.

Per world seed (:func:`training.mmrf.report.runs.run_seed` does it, resumably):

- **MMRF and its ablations, the multi-agent baselines** (``ranker mmrf-train`` runs,
  :data:`RL_ROWS`): MMRF once per ``lambdas`` value, the one with the highest served-score
  correlation with watch time on the *valid* split kept (Eq. 6's lambda, chosen on valid);
  MMRF-CO with the chosen lambda; MMRF-DA, MMRF-NS, Pareto, TSCAC, MASSA. Every run keeps its
  last checkpoint (the loop saves no other; no checkpoint is chosen on test) and the default
  learning rates of :class:`training.mmrf.train.MMRFConfig` (not tuned).
- **point-wise rows** (the baselines report's stages, :mod:`training.eval.baselines_stages`):
  BC (a DeepFM imitating the logging policy), Wide&Deep and DeepFM trained on impressions
  weighted by a weighted sum of feedback (METHODS.md: the paper's Table 1 rows), each keeping
  the epoch with the best loss on the valid sample.
- **the online control and arms**: the LightGBM lambdarank LTR on watch time (early stopping
  on valid NDCG), the DRL-Rec student (the DRL report's preset config), the logging policy,
  and ``mmrf_bundle``: the chosen MMRF actor exported (``ranker export --mmrf``'s path) and
  ranked by the runtime's list builder, as the service serves ``mmrf_watchtime``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from training.harness.config import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_OPEN_BOTTOM,
    Rule,
    apply_overrides,
    pick,
    validate,
    world_pairs,
)
from training.sim.config import ConfigError, WorldConfig, preset

#: Table 1 rows in the paper's order: row name -> (kind, run or model name).
TABLE1_ROWS: dict[str, tuple[str, str]] = {
    "BC": ("pointwise", "bc"),
    "Wide&Deep": ("pointwise", "wide_deep_weighted"),
    "DeepFM": ("pointwise", "deepfm_weighted"),
    "Pareto": ("rl", "pareto"),
    "TSCAC": ("rl", "tscac"),
    "MASSA": ("rl", "massa"),
    "MMRF-CO": ("rl", "mmrf-co"),
    "MMRF-DA": ("rl", "mmrf-da"),
    "MMRF-NS": ("rl", "mmrf-ns"),
    "MMRF": ("rl", "mmrf"),
    "LTR": ("ltr", "ltr"),
}
#: The rows that are baselines of the paper's Table 1 (the "strongest baseline" of a claim).
BASELINE_ROWS = ("BC", "Wide&Deep", "DeepFM", "Pareto", "TSCAC", "MASSA")
#: ``ranker mmrf-train`` variants the plan trains (MMRF itself once per lambda).
RL_ROWS = ("mmrf", "mmrf-co", "mmrf-da", "mmrf-ns", "pareto", "tscac", "massa")
#: Point-wise models of the baselines report's stages (``fm`` is that config's required base).
POINTWISE_MODELS = ("fm", "wide_deep_weighted", "deepfm_weighted", "bc")
#: Online arms (Table 2): the control first.
ONLINE_ARMS = ("ltr", "mmrf", "logging", "drl_student", "wide_deep_weighted", "mmrf_bundle")
CONTROL = "ltr"

REPORT_RULES: dict[str, Rule] = {
    **dict.fromkeys(("rl_instances", "tscac_stage1_steps", "model_warmup", "drl_instances",
                     "eval_requests",
                     "online_users", "probe_users", "probe_candidates"), NON_NEGATIVE),
    **dict.fromkeys(("n_boot", "threads", "ltr_rounds"), AT_LEAST_1),
    "lambdas": NON_NEGATIVE,
    "temperatures": POSITIVE,
    "cap_min_ess_share": UNIT_OPEN_BOTTOM,
    "exposure_edges": NON_NEGATIVE,
}  # fmt: skip


@dataclass(frozen=True)
class MMRFReportConfig:
    """Budgets and choices of the MMRF report (one value per preset, ``--budget`` overrides)."""

    world_preset: str = "default"
    world_overrides: tuple[tuple[str, str], ...] = ()
    rl_instances: int = 50_000
    """Real training instances of every multi-agent run (``max_instances``; 0: one epoch)."""
    tscac_stage1_steps: int = 100
    """TSCAC's stage-1 steps (its main policy trains after them)."""
    model_warmup: int = 50
    """Steps M trains before its simulated non-impressions enter D^M (MMRFConfig's)."""
    lambdas: tuple[float, ...] = (0.0, 1.0)
    """Eq. 6's uncertainty weight: MMRF is trained once per value, the best on valid kept."""
    pointwise_preset: str = "default"
    """The baselines report preset (``training.eval.baselines_run.EVAL_PRESETS``) whose budgets
    train the point-wise rows."""
    drl_preset: str = "default"
    """The DRL report preset (``training.drl.report.plan.REPORT_PRESETS``) whose config trains
    the DRL-Rec student."""
    drl_instances: int = 0
    """DRL-Rec training instances (0: the DRL preset's budget)."""
    ltr_rounds: int = 200
    """LightGBM boosting rounds at most (early stopping on valid NDCG)."""
    eval_requests: int = 3000
    """Logged requests (users drawn at random) of the test split for GAUC and NCIS, and as many
    of the valid split for the NCIS temperatures."""
    temperatures: tuple[float, ...] = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
    """Softmax temperatures of the NCIS target policies; the one with the largest valid ESS."""
    cap_min_ess_share: float = 0.05
    online_users: int = 400
    online_seed_offset: int = 1
    probe_users: int = 200
    """Users of the feedback-model probe (logging-policy sessions of the test days)."""
    probe_candidates: int = 200_000
    """Candidates the probe records at most."""
    exposure_edges: tuple[int, ...] = (1, 10, 100, 1000)
    """Item exposure-count buckets (training-split impressions): ``[0, 1)``, ``[1, 10)``, ..."""
    n_boot: int = 200
    expected_findings: tuple[str, ...] = ()
    """Sanity checks whose failure is a known finding (the command does not fail on them)."""
    threads: int = 1

    def __post_init__(self) -> None:
        validate(self, "mmrf report config", REPORT_RULES)
        if not self.lambdas:
            raise ConfigError("mmrf report config lambdas=(): need at least one")
        if list(self.exposure_edges) != sorted(set(self.exposure_edges)):
            raise ConfigError("mmrf report config exposure_edges: must increase strictly")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["world_overrides"] = dict(self.world_overrides)
        return d

    def with_overrides(self, overrides: Mapping[str, str]) -> MMRFReportConfig:
        return apply_overrides(self, overrides, "mmrf report config", REPORT_RULES,
                               fixed=("world_overrides",))  # fmt: skip

    def with_world(self, overrides: Mapping[str, str]) -> MMRFReportConfig:
        return dataclasses.replace(self, world_overrides=world_pairs(self.world_preset, overrides))

    def world(self, seed: int) -> WorldConfig:
        wc = preset(self.world_preset).with_overrides(dict(self.world_overrides))
        return wc.with_overrides({"seed": int(seed)})

    def rl_overrides(self, seed: int, lam: float | None = None) -> dict[str, Any]:
        """``MMRFConfig`` overrides shared by every multi-agent run of ``seed``."""
        d: dict[str, Any] = {"seed": int(seed), "max_instances": self.rl_instances,
                             "tscac_stage1_steps": self.tscac_stage1_steps,
                             "model_warmup": self.model_warmup}  # fmt: skip
        if lam is not None:
            d["uncertainty_lambda"] = float(lam)
        return d


REPORT_PRESETS: dict[str, MMRFReportConfig] = {
    # Minutes on 2 CPU cores: every row on the tiny world, barely trained (32 steps per
    # multi-agent run; M's simulations enter D^M after 8).
    "tiny": MMRFReportConfig(
        world_preset="tiny",
        rl_instances=8192,
        tscac_stage1_steps=8,
        model_warmup=8,
        pointwise_preset="tiny",
        drl_preset="tiny",
        ltr_rounds=50,
        eval_requests=400,
        online_users=100,
        probe_users=60,
        probe_candidates=50_000,
        exposure_edges=(1, 5, 20, 80),
        n_boot=100,
    ),  # fmt: skip
    # The benchmark world.
    "default": MMRFReportConfig(),
    # The large world (27,285 users, 28 days) with the default budgets.
    "large": MMRFReportConfig(world_preset="large"),
}


def report_preset(name: str) -> MMRFReportConfig:
    return pick(REPORT_PRESETS, name, "mmrf report preset")


def lambda_run(lam: float) -> str:
    """Run folder name of MMRF trained with ``uncertainty_lambda=lam``."""
    return f"mmrf-lambda{lam:g}"
