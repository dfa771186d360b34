"""The experiment harness: statistics against numbers worked by hand, run folders, overrides."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from training.drl.train import DRLConfig
from training.harness import claims, render, stats
from training.harness.config import DRL_RULES, apply_overrides, check_device
from training.harness.data import online_population, world_fingerprint
from training.harness.runfolder import cached, output_folder, read_json
from training.sim.config import ConfigError, preset

Z = 1.959963984540054

# ---- statistics ----


def test_mean_std_has_no_spread_for_one_value():
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    m, sd = stats.mean_std([5.0])
    assert m == 5.0 and math.isnan(sd)
    assert all(math.isnan(x) for x in stats.mean_std([None, float("nan")]))


def test_pooled_half_width_is_root_sum_of_squares_over_seeds():
    p = stats.pooled([1.0, 3.0], [0.0, 2.0], [2.0, 4.0])
    assert p["mean"] == 2.0
    assert p["low"] == pytest.approx(2.0 - math.sqrt(2) / 2)
    assert p["high"] == pytest.approx(2.0 + math.sqrt(2) / 2)
    assert math.isnan(stats.pooled([1.0], [0.0], [2.0])["std"])


def test_relative_change_is_a_log_ratio_interval_by_hand():
    # mean a = 3, mean b = 2: +50%; u = a/3 - b/2 = (+1/6, -1/6): sd sqrt(2)/6, se 1/6
    pct, lo, hi = stats.relative_change(np.array([2.0, 4.0]), np.array([1.0, 3.0]))
    assert pct == pytest.approx(50.0)
    assert lo == pytest.approx(100 * (1.5 * math.exp(-Z / 6) - 1))
    assert hi == pytest.approx(100 * (1.5 * math.exp(Z / 6) - 1))


def test_relative_change_never_below_minus_100_percent():
    # The linear delta method gave -75% +- 49% -> -124% here; on the log scale: u = 4a - b =
    # (-1, -1, -1, 3), se = 1 -> 0.25 * exp(-1.96) - 1 = -96.5%
    a, b = np.array([0.0, 0.0, 0.0, 1.0]), np.ones(4)
    pct, lo, hi = stats.relative_change(a, b)
    assert pct == pytest.approx(-75.0)
    assert lo == pytest.approx(100 * (0.25 * math.exp(-Z) - 1)) and lo > -100.0
    assert hi == pytest.approx(100 * (0.25 * math.exp(Z) - 1))


def test_online_summary_relative_interval_respects_its_bound():
    from training.eval.online import OnlineResult

    s = np.arange(4)
    fields = ("click", "like", "follow", "comment", "hate", "long_view", "watch_time", "depth",
              "requests")  # fmt: skip
    base = {f: np.ones(4, dtype=np.float64 if f == "watch_time" else np.int64) for f in fields}
    arm = dict(base)
    arm["click"] = np.array([0, 0, 0, 1])
    arm["like"] = np.array([0, 0, 0, 1])
    res = OnlineResult(users=s, session_user=s, session_day=np.zeros(4, dtype=np.int64),
                       sessions={"a": arm, "b": base})  # fmt: skip
    rows = res.summary("b", ["clicks_per_user", "like_per_session"])
    for r in rows:
        assert r["rel_low"] > -100.0, r
        assert r["low"] >= 0.0, r


def test_nonneg_mean_interval_stays_above_zero():
    m, lo, hi = stats.nonneg_mean_ci(np.array([0.0, 0.0, 0.0, 1.0]))
    # sd 0.5, se_log = 0.5 / (2 * 0.25) = 1
    assert (m, lo, hi) == pytest.approx((0.25, 0.25 * math.exp(-Z), 0.25 * math.exp(Z)))
    assert stats.nonneg_mean_ci(np.zeros(3)) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        stats.nonneg_mean_ci(np.array([-1.0, 1.0]))


def test_pooled_relative_pools_on_the_log_scale():
    one = stats.pooled_relative([50.0], [10.0], [120.0])
    assert one["mean"] == pytest.approx(50.0)
    assert one["low"] == pytest.approx(100 * (1.5 / math.sqrt(2.2 / 1.1) - 1))
    two = stats.pooled_relative([-90.0, -90.0], [-99.0, -99.0], [0.0, 0.0])
    assert two["low"] > -100.0 and two["mean"] == pytest.approx(-90.0)


def test_pooled_positive_is_the_arithmetic_mean_and_a_seed_at_zero_does_not_zero_it():
    """It was a geometric mean: one seed with no follows (0, 0, 0) made the pooled mean 0 and
    the relative change -100% in the regenerated default baselines report."""
    p = stats.pooled_positive([0.2, 0.0], [0.1, 0.0], [0.4, 0.0])
    # seed 0: se = 0.2 log(4) / (2 z); seed 1: se 0; se of the mean = se_0 / 2;
    # m = 0.1, z se / m = log(4) / 2 = log 2: the interval is [0.1 / 2, 0.1 * 2]
    assert p["mean"] == pytest.approx(0.1)
    assert (p["low"], p["high"]) == pytest.approx((0.05, 0.2))
    assert stats.pooled_positive([0.0, 0.0], [0.0, 0.0], [0.0, 0.0])["high"] == 0.0
    assert math.isnan(stats.pooled_positive([0.2, 0.1], [0.1, math.nan], [0.4, 0.3])["low"])
    rel = stats.pooled_relative([-88.9, -85.7, -100.0], [-98.0, -97.0, math.nan],
                                [-20.0, -10.0, math.nan])  # fmt: skip
    assert rel["mean"] == pytest.approx(-91.5333333)  # the mean of the changes, not -100
    assert math.isnan(rel["low"])  # a seed at -100% has no ratio interval


def test_pool_rows_reads_each_rows_point_and_bounds_by_key():
    rows = [{"value": 1.0, "low": 0.0, "high": 2.0}, {"value": 3.0, "low": 2.0, "high": 4.0}]
    p = stats.pool_rows(rows, stats.pooled, "value")
    assert p["mean"] == pytest.approx(2.0)  # half-widths 1 and 1: sqrt(2) / 2 around the mean
    assert p["low"] == pytest.approx(2.0 - math.sqrt(2) / 2)
    rel = [{"rel_pct": 50.0, "rel_low": 10.0, "rel_high": 120.0}]
    assert stats.pool_rows(rel, stats.pooled_relative, "rel_pct", "rel_low", "rel_high") == (
        stats.pooled_relative([50.0], [10.0], [120.0])
    )


def test_paired_auc_diff_sign_is_first_minus_second():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    users = np.repeat(np.arange(40), 10)
    good, bad = y + rng.normal(0, 0.3, 400), rng.normal(0, 1, 400)
    d, lo, hi = stats.paired_auc_diff(y, users, good, bad, n_boot=30, seed=0)
    assert d > 0.3 and lo > 0
    d2, _, _ = stats.paired_auc_diff(y, users, bad, good, n_boot=30, seed=0)
    assert d2 == pytest.approx(-d)


def test_relaimpr_is_against_the_base_not_the_model_itself():
    aucs = {"fm": {0: 0.70, 1: 0.60}, "m": {0: 0.75, 1: 0.65}}
    t = stats.relaimpr_columns(aucs)
    # seed 0: (0.25 / 0.20 - 1) * 100 = 25; seed 1: (0.15 / 0.10 - 1) * 100 = 50
    assert t["m"]["relaimpr_per_seed"] == pytest.approx({0: 25.0, 1: 50.0})
    assert t["m"]["relaimpr"][0] == pytest.approx(37.5)
    assert t["fm"]["relaimpr"][0] == 0.0


# ---- claims and formatting ----


def test_direction_status_in_both_directions():
    assert claims.direction_status([0.1, 0.2], 1)["status"] == "reproduced"
    assert claims.direction_status([0.1, 0.2], -1)["status"] == "not reproduced"
    assert claims.direction_status([-0.1, -0.2], -1)["status"] == "reproduced"
    assert claims.direction_status([0.3, -0.1], 1)["status"] == "not reproduced"  # a seed
    assert claims.direction_status([], 1)["status"] == "not run"


def test_interval_status_needs_the_whole_interval_on_the_claimed_side():
    assert claims.interval_status(0.1, 2.0, 1) == "reproduced"
    assert claims.interval_status(-0.1, 2.0, 1) == "not reproduced"
    assert claims.interval_status(-2.0, -0.1, -1) == "reproduced"
    assert claims.interval_status(-2.0, -0.1, 1) == "not reproduced"


def test_failed_checks_leave_out_expected_findings():
    cs = [claims.check(i, i.upper(), ok) for i, ok in (("a", False), ("b", False), ("c", True))]
    assert [c["id"] for c in claims.failed_checks(cs, expected=["b"])] == ["a"]
    assert "a" in str(claims.SanityError(claims.failed_checks(cs), "out"))


def test_one_seed_prints_no_zero_spread():
    assert render.pm((0.5, math.nan)) == "0.5000"
    assert render.pm((0.5, 0.01)) == "0.5000 ± 0.0100"
    assert render.ci({"mean": 1.0, "low": math.nan, "high": math.nan}) == "+1.0000"


# ---- config overrides ----


@pytest.mark.parametrize(
    "key,value",
    [("n_explore", "-1"), ("discount", "week"), ("compression", "0"), ("batch_size", "0"),
     ("gamma", "2"), ("gamma", "1"), ("use_kl", "maybe"), ("lr", "nan"), ("mlp", "64,-1"),
     ("reward", "clicks"), ("unknown_key", "1")],
)  # fmt: skip
def test_bad_drl_values_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        apply_overrides(DRLConfig(), {key: value}, "drl config", DRL_RULES)


def test_good_drl_values_are_coerced():
    c = apply_overrides(DRLConfig(), {"gamma": "0", "mlp": "64,32", "use_kl": "false",
                                      "discount": "request"}, "drl config", DRL_RULES)  # fmt: skip
    assert (c.gamma, c.mlp, c.use_kl, c.discount) == (0.0, (64, 32), False, "request")


def test_device_without_cuda_is_a_config_error():
    import torch

    assert check_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            check_device("cuda")
    with pytest.raises(ConfigError, match="expected cpu"):
        check_device("tpu")


# ---- run folders ----


def test_output_folder_refuses_an_existing_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("old")
    with pytest.raises(FileExistsError, match="--resume"):
        with output_folder(out):
            pass
    with output_folder(out, resume=True):
        pass
    assert (out / "report.md").read_text() == "old"


def test_overwrite_keeps_hand_written_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("old")
    (out / "analysis.md").write_text("mine")
    with output_folder(out, overwrite=True, keep=("analysis.md",)):
        pass
    assert sorted(p.name for p in out.iterdir()) == ["analysis.md"]


def test_a_failure_leaves_no_folder_it_created(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError):
        with output_folder(out):
            (out / "partial.json").write_text("{}")
            raise RuntimeError("boom")
    assert not out.exists()


def test_holds_work_counts_finished_work_inside_the_folder_only(tmp_path):
    from training.harness.command import holds_work

    out, named = tmp_path / "out", tmp_path / "named"
    (out / "runs" / "seed0").mkdir(parents=True)
    (out / "runs" / "seed0" / "config.json").write_text("{}")  # bookkeeping, not work
    (named / "d").mkdir(parents=True)
    (named / "d" / "dataset.json").write_text("{}")  # work, but outside out
    test = holds_work((named, "*/dataset.json"), (out / "runs", "seed*/models/*.pt"))
    assert not test(out)
    (out / "runs" / "seed0" / "models").mkdir()
    (out / "runs" / "seed0" / "models" / "fm.pt").write_bytes(b"")
    assert test(out)


def test_para_writes_its_lines_then_one_blank_line():
    from training.harness.render import para

    lines: list[str] = []
    para(lines.append, "## Title")
    para(lines.append, "a", "b")
    assert lines == ["## Title", "", "a", "b", ""]


def test_cached_computes_once_per_inputs(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    p = tmp_path / "stage.json"
    assert cached(p, {"n": 1}, compute)["value"] == 1
    assert cached(p, {"n": 1}, compute)["value"] == 1
    assert cached(p, {"n": 2}, compute)["value"] == 2
    assert read_json(p)["want"] == {"n": 2}


# ---- data ----


def test_world_fingerprint_is_the_tables_content_not_their_path(tmp_path):
    wc = preset("tiny")
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(wc.kuairand_dir, a)
    shutil.copytree(wc.kuairand_dir, b)
    fa = world_fingerprint(wc.with_overrides({"kuairand_dir": str(a)}))
    fb = world_fingerprint(wc.with_overrides({"kuairand_dir": str(b)}))
    assert fa == fb and "kuairand_dir" not in fa and fa["kuairand_tables"]
    f = next(b.glob("*.csv"))
    f.write_text(f.read_text() + "\n")
    assert world_fingerprint(wc.with_overrides({"kuairand_dir": str(b)})) != fa


def test_online_population_is_seeded_and_sorted():
    a = online_population(3, 100, 10)
    assert a.tolist() == sorted(a.tolist()) and len(set(a.tolist())) == 10
    assert np.array_equal(a, online_population(3, 100, 10))
    assert np.array_equal(online_population(3, 5, 0), np.arange(5))


def test_a_dataset_is_recognised_from_a_checkout_in_another_folder(tiny_data, tmp_path):
    from training.harness.data import same_world

    ds, _, _ = tiny_data
    wc = preset("tiny")
    moved = tmp_path / "elsewhere" / "kuairand-pure"
    shutil.copytree(wc.kuairand_dir, moved)
    assert same_world(ds, wc.with_overrides({"kuairand_dir": str(moved)}))
    assert not same_world(ds, wc.with_overrides({"n_users": 301}))


def test_reference_arms_by_name_and_renamed():
    from training.eval.online import OraclePolicy
    from training.harness.arms import ORACLE_LT_REWARD, reference_arms

    arms = reference_arms(object(), 0, ["random", "oracle", "oracle_lt"], {"oracle": "click"})
    assert list(arms) == ["random", "click", "oracle_lt"]
    assert isinstance(arms["oracle_lt"], OraclePolicy)
    assert ORACLE_LT_REWARD == {"click": 1.0, "satisfaction": 0.1}
    with pytest.raises(KeyError, match="unknown reference arms"):
        reference_arms(object(), 0, ["nope"])
