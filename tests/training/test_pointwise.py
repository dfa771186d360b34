"""Tests for training.baselines.pointwise: the maths of the shared pieces, that every model
trains, the weighted loss, determinism and input checks."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from contract.features import DEFAULT_SPEC
from training.baselines.pointwise import (
    AFN,
    FM,
    MODELS,
    FieldEmbedding,
    FieldLinear,
    TrainResult,
    bi_interaction,
    build_model,
    epoch_batches,
    fm_pairwise,
    has_batch_norm,
    predict,
    seeded_build_model,
    train_pointwise,
    uses_batch_norm,
    weighted_bce,
)

SYNTH_SIZES = [8, 12, 6, 10, 5, 7]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny; on a shared 2-core box intra-op threads mostly spin and wait.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _random_ids(sizes, n, rng):
    return np.stack([rng.integers(0, s, n) for s in sizes], axis=1).astype(np.int64)


# --- shared pieces -------------------------------------------------------------------------


def test_field_embedding_routes_each_field_to_its_own_rows():
    emb = FieldEmbedding([3, 5, 2], dim=4)
    assert emb.table.weight.shape == (10, 4)
    x = torch.tensor([[0, 0, 0], [2, 4, 1]])
    out = emb(x)
    assert out.shape == (2, 3, 4)
    w = emb.table.weight
    # Field offsets are 0, 3, 8: the same id in different fields reads different rows.
    torch.testing.assert_close(out[0], w[[0, 3, 8]])
    torch.testing.assert_close(out[1], w[[2, 7, 9]])


def test_field_linear_is_bias_plus_sum_of_per_field_weights():
    lin = FieldLinear([3, 5, 2])
    with torch.no_grad():
        lin.weight.weight.copy_(torch.arange(10, dtype=torch.float32).unsqueeze(1))
        lin.bias.fill_(0.5)
    out = lin(torch.tensor([[0, 0, 0], [2, 4, 1]]))
    torch.testing.assert_close(out, torch.tensor([0 + 3 + 8 + 0.5, 2 + 7 + 9 + 0.5]))


def test_fm_pairwise_on_hand_example():
    e = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    # Pairs: <e0,e1> = 3+8 = 11, <e0,e2> = 5+12 = 17, <e1,e2> = 15+24 = 39.
    torch.testing.assert_close(fm_pairwise(e), torch.tensor([67.0]))
    # Per dimension: 1*3+1*5+3*5 = 23 and 2*4+2*6+4*6 = 44.
    torch.testing.assert_close(bi_interaction(e), torch.tensor([[23.0, 44.0]]))


def test_fm_pairwise_matches_double_loop_over_field_pairs():
    e = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    brute = torch.zeros(4, dtype=torch.float64)
    for i, j in itertools.combinations(range(5), 2):
        brute += (e[:, i] * e[:, j]).sum(-1)
    torch.testing.assert_close(fm_pairwise(e), brute)


def test_fm_forward_is_bias_plus_linear_plus_pairwise():
    sizes = [4, 3, 5, 2]
    model = seeded_build_model("fm", sizes, seed=3, embed_dim=3)
    assert isinstance(model, FM)
    with torch.no_grad():
        model.linear.weight.weight.normal_()
        model.linear.bias.fill_(-0.25)
    x = torch.from_numpy(_random_ids(sizes, 7, np.random.default_rng(0)))
    offsets = [0, 4, 7, 12]
    expected = torch.full((7,), -0.25)
    for b in range(7):
        rows = [offsets[j] + int(x[b, j]) for j in range(4)]
        expected[b] += model.linear.weight.weight[rows, 0].sum().detach()
        v = model.embedding.table.weight.detach()
        for i, j in itertools.combinations(range(4), 2):
            expected[b] += v[rows[i]] @ v[rows[j]]
    torch.testing.assert_close(model(x).detach(), expected)


# --- every model ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_gives_finite_logits_and_gradients_reach_embedding(name):
    sizes = DEFAULT_SPEC.sizes()
    rng = np.random.default_rng(0)
    x = _random_ids(sizes, 32, rng)
    x[0] = 0  # all-unknown row
    x[1] = np.asarray(sizes) - 1  # largest id of every field
    model = seeded_build_model(name, sizes, seed=0)
    model.train()
    out = model(torch.from_numpy(x))
    assert out.shape == (32,)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.sum().backward()
    grad = model.embedding.table.weight.grad
    assert grad is not None
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    used = np.unique(x + offsets)
    assert (grad[used].abs().sum(-1) > 0).all(), "some looked-up rows got no gradient"
    unused = np.setdiff1d(np.arange(sum(sizes)), used)
    assert grad[unused].abs().sum() == 0


def test_build_model_passes_options_to_the_constructor():
    model = build_model("afm", SYNTH_SIZES, embed_dim=4, attention_dim=5)
    assert model.attention[0].out_features == 5
    model = build_model("autoint", SYNTH_SIZES, n_layers=2)
    assert len(model.layers) == 2


def test_build_model_unknown_name_raises_naming_it_and_the_valid_ones():
    with pytest.raises(ValueError, match="'xgboost'") as info:
        build_model("xgboost", SYNTH_SIZES)
    for name in MODELS:
        assert name in str(info.value)


def test_afn_stays_finite_when_log_neurons_would_overflow():
    model = AFN(SYNTH_SIZES, embed_dim=4).eval()
    with torch.no_grad():
        model.embedding.table.weight.fill_(1e30)  # ln|e| ~ 69 in every field
        model.log_weights.weight.fill_(1.0)  # sum over 6 fields ~ 414 >> 88, exp overflows
    x = torch.ones(3, len(SYNTH_SIZES), dtype=torch.long)
    assert torch.isfinite(model(x)).all()


# --- learning a synthetic task -------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic():
    """Label ~ Bernoulli(sigmoid(b + sum_j w_j[x_j] + a[x_0] * c[x_1]))."""
    rng = np.random.default_rng(0)
    w = [rng.normal(0, 0.6, s) for s in SYNTH_SIZES]
    a, c = rng.normal(0, 1.2, SYNTH_SIZES[0]), rng.normal(0, 1.2, SYNTH_SIZES[1])

    def draw(n):
        x = np.stack([rng.integers(1, s, n) for s in SYNTH_SIZES], axis=1)
        first = -0.3 + sum(w[j][x[:, j]] for j in range(len(SYNTH_SIZES)))
        logit = first + a[x[:, 0]] * c[x[:, 1]]
        y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        return x, y, logit, first

    x_tr, y_tr, _, _ = draw(20_000)
    x_te, y_te, logit_te, first_te = draw(10_000)
    return {
        "x_train": x_tr,
        "y_train": y_tr,
        "x_test": x_te,
        "y_test": y_te,
        "oracle_auc": roc_auc_score(y_te, logit_te),
        "first_order_auc": roc_auc_score(y_te, first_te),
    }


def test_synthetic_task_needs_the_pairwise_interaction(synthetic):
    # Otherwise "FM reaches the oracle" below would not show that it learns interactions.
    assert synthetic["oracle_auc"] > synthetic["first_order_auc"] + 0.03


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_learns_synthetic_task(name, synthetic):
    model = seeded_build_model(name, SYNTH_SIZES, seed=0, embed_dim=8)
    result = train_pointwise(
        model,
        synthetic["x_train"],
        synthetic["y_train"],
        epochs=3,
        batch_size=512,
        lr=1e-2,
        progress=False,
    )
    auc = roc_auc_score(synthetic["y_test"], predict(model, synthetic["x_test"]))
    assert auc > 0.75, f"{name}: AUC {auc:.3f}"
    if name in ("fm", "deepfm"):
        assert auc > synthetic["oracle_auc"] - 0.02, (name, auc, synthetic["oracle_auc"])
    assert result.train_loss_history[-1] < result.train_loss_history[0]


# --- the loss and the loop -----------------------------------------------------------------


def test_weighted_bce_matches_hand_computation():
    logits = torch.tensor([0.0, 2.0, -1.0])
    y = torch.tensor([1.0, 0.0, 1.0])
    w = torch.tensor([1.0, 0.5, 0.0])
    # -log sigmoid(0) = ln 2; -log(1 - sigmoid(2)) = ln(1 + e^2); the third has weight 0.
    expected = (math.log(2) + 0.5 * math.log(1 + math.e**2) + 0.0) / 3
    assert weighted_bce(logits, y, w).item() == pytest.approx(expected, rel=1e-6)
    unweighted = (math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.e)) / 3
    assert weighted_bce(logits, y).item() == pytest.approx(unweighted, rel=1e-6)


def _fit_fm(x, y, weights, seed=0):
    model = seeded_build_model("fm", SYNTH_SIZES, seed=seed, embed_dim=4)
    train_pointwise(
        model, x, y, weights=weights, epochs=2, batch_size=256, lr=1e-2, seed=seed, progress=False
    )
    return predict(model, x[:500])


def test_zero_weight_samples_do_not_affect_training(synthetic):
    x, y = synthetic["x_train"][:4000], synthetic["y_train"][:4000]
    zero = np.arange(len(y)) % 2 == 1
    weights = np.where(zero, 0.0, 1.0)
    y_flipped = np.where(zero, 1.0 - y, y).astype(np.float32)
    p = _fit_fm(x, y, weights)
    np.testing.assert_array_equal(p, _fit_fm(x, y_flipped, weights))
    # Control: with unit weights the same label flip does change the model.
    assert not np.allclose(_fit_fm(x, y, None), _fit_fm(x, y_flipped, None), atol=1e-3)


def test_same_seed_gives_identical_predictions_and_another_seed_does_not(synthetic):
    x, y = synthetic["x_train"][:3000], synthetic["y_train"][:3000]

    def fit(seed):
        # Dropout makes the forward pass itself random, so it checks the loop's RNG too.
        model = seeded_build_model("deepfm", SYNTH_SIZES, seed=seed, embed_dim=4, dropout=0.3)
        train_pointwise(model, x, y, epochs=1, batch_size=256, seed=seed, progress=False)
        return predict(model, x[:300])

    torch.manual_seed(1)
    first = fit(0)
    torch.manual_seed(2)  # the global RNG must play no part
    np.testing.assert_array_equal(first, fit(0))
    assert not np.allclose(first, fit(1))


def test_seeded_build_and_training_leave_global_rng_untouched(synthetic):
    x, y = synthetic["x_train"][:1000], synthetic["y_train"][:1000]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    model = seeded_build_model("wide_deep", SYNTH_SIZES, seed=0, dropout=0.2)
    train_pointwise(model, x, y, batch_size=256, progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_train_result_reports_history_valid_loss_and_size(synthetic):
    x, y = synthetic["x_train"][:2000], synthetic["y_train"][:2000]
    xv, yv = synthetic["x_test"][:500], synthetic["y_test"][:500]
    model = seeded_build_model("nfm", SYNTH_SIZES, seed=0, embed_dim=4)
    result = train_pointwise(
        model, x, y, x_valid=xv, y_valid=yv, epochs=2, batch_size=300, log_every=5, progress=True
    )
    assert isinstance(result, TrainResult)
    # ceil(2000 / 300) = 7 steps per epoch, 14 in all: windows of 5, 5 and 4.
    assert len(result.train_loss_history) == 3
    assert result.n_samples == 2000
    assert result.seconds > 0
    assert not model.training
    p = torch.from_numpy(predict(model, xv)).double()
    t = torch.from_numpy(yv).double()
    expected = -(t * p.log() + (1 - t) * (1 - p).log()).mean().item()
    assert result.valid_loss == pytest.approx(expected, rel=1e-4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.n_samples = 1


def test_predict_gives_probabilities_and_keeps_the_train_flag(synthetic):
    model = seeded_build_model("afn", SYNTH_SIZES, seed=0, embed_dim=4)
    model.train()
    p = predict(model, synthetic["x_test"][:1000], batch_size=64)
    assert p.shape == (1000,) and p.dtype == np.float32
    assert ((p > 0) & (p < 1)).all()
    assert model.training
    # Eval mode: the batch size (batch norm statistics) does not change the answer.
    np.testing.assert_allclose(p, predict(model, synthetic["x_test"][:1000]), rtol=1e-5)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.array([[1, 1, 1, 1, 1, 7]]).repeat(4, 0), "field 5 has id 7 outside"),
        (np.array([[1, -1, 1, 1, 1, 1]]).repeat(4, 0), "field 1 has id -1 outside"),
        (np.ones((4, 5), dtype=np.int64), "5 fields"),
        (np.ones((4, 6)), "integer"),
    ],
)
def test_bad_ids_are_refused_before_training(x, message):
    model = build_model("fm", SYNTH_SIZES)
    with pytest.raises(ValueError, match=message):
        train_pointwise(model, x, np.zeros(4), progress=False)
    with pytest.raises(ValueError, match=message):
        predict(model, x)


def test_bad_labels_weights_and_valid_pairs_are_refused():
    x = np.ones((4, len(SYNTH_SIZES)), dtype=np.int64)
    model = build_model("fm", SYNTH_SIZES)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_pointwise(model, x, np.array([0, 1, 2, 0.0]), progress=False)
    with pytest.raises(ValueError, match=">= 0"):
        train_pointwise(model, x, np.zeros(4), weights=np.array([1, -1, 1, 1.0]), progress=False)
    with pytest.raises(ValueError, match="shape"):
        train_pointwise(model, x, np.zeros(3), progress=False)
    with pytest.raises(ValueError, match="both"):
        train_pointwise(model, x, np.zeros(4), x_valid=x, progress=False)


# ------------------------------------------------------------------------------------------
# Batch norm never sees a one-row batch in training
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "batch_size", "min_rows", "want"),
    [
        (3, 2, 1, 2),  # 2 + 1: fine without batch norm
        (3, 2, 2, 1),  # 3, not 2 + 1
        (5, 2, 2, 2),  # 3 + 2, not 2 + 2 + 1
        (4, 2, 2, 2),  # 2 + 2: unchanged
        (7, 3, 2, 3),  # 3 + 2 + 2: ceil(7/3) = 3 parts, none short
        (2, 4096, 2, 1),
        (10, 1, 1, 10),
    ],
)
def test_epoch_batches_by_hand(n, batch_size, min_rows, want):
    k = epoch_batches(n, batch_size, min_rows)
    assert k == want
    sizes = [len(p) for p in torch.arange(n).tensor_split(k)]
    assert min(sizes) >= min_rows and sum(sizes) == n


def test_epoch_batches_refuses_impossible_sizes():
    with pytest.raises(ValueError, match="min_rows"):
        epoch_batches(1, 2, 2)
    with pytest.raises(ValueError, match="min_rows"):
        epoch_batches(5, 1, 2)


def test_batch_norm_models_are_known():
    assert {m for m in MODELS if uses_batch_norm(m)} == {"nfm", "afn"}
    assert not has_batch_norm(build_model("nfm", SYNTH_SIZES, batch_norm=False))
    with pytest.raises(ValueError, match="unknown point-wise model"):
        uses_batch_norm("xgboost")


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("n", "batch_size"), [(3, 2), (5, 2), (2, 2), (3, 4096)])
def test_every_model_trains_on_odd_row_counts(name, n, batch_size):
    # The fault: NFM and AFN with batch_size 2 on 3 or 5 rows reached batch norm with a
    # one-row batch and failed inside torch.
    rng = np.random.default_rng(0)
    x = _random_ids(SYNTH_SIZES, n, rng)
    y = (rng.random(n) < 0.5).astype(np.float32)
    model = seeded_build_model(name, SYNTH_SIZES, seed=0, embed_dim=4)
    res = train_pointwise(model, x, y, batch_size=batch_size, epochs=2, log_every=1,
                          progress=False)  # fmt: skip
    min_rows = 2 if uses_batch_norm(name) else 1
    steps = 2 * epoch_batches(n, batch_size, min_rows)
    assert len(res.train_loss_history) == steps and all(np.isfinite(res.train_loss_history))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batch_size_one_is_refused_only_with_batch_norm(name):
    rng = np.random.default_rng(1)
    x, y = _random_ids(SYNTH_SIZES, 4, rng), np.array([0, 1, 0, 1], dtype=np.float32)
    model = seeded_build_model(name, SYNTH_SIZES, seed=0, embed_dim=4)
    if uses_batch_norm(name):
        with pytest.raises(ValueError, match="batch_size=1: a model with batch norm"):
            train_pointwise(model, x, y, batch_size=1, progress=False)
    else:
        res = train_pointwise(model, x, y, batch_size=1, log_every=1, progress=False)
        assert len(res.train_loss_history) == 4


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_rows_are_refused(name, n):
    x = np.ones((n, len(SYNTH_SIZES)), dtype=np.int64)
    model = seeded_build_model(name, SYNTH_SIZES, seed=0, embed_dim=4)
    with pytest.raises(ValueError, match=f"need at least 2 training rows, got {n}"):
        train_pointwise(model, x, np.zeros(n), progress=False)


# ------------------------------------------------------------------------------------------
# A diverging fit stops at once
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_non_finite_loss_stops_training_at_its_step(name):
    from training.divergence import DivergenceError

    rng = np.random.default_rng(2)
    x = _random_ids(SYNTH_SIZES, 64, rng)
    y = (rng.random(64) < 0.5).astype(np.float32)
    model = seeded_build_model(name, SYNTH_SIZES, seed=0, embed_dim=4)
    forwards = []
    model.register_forward_hook(lambda m, i, o: forwards.append(m.training))
    with pytest.raises(DivergenceError) as e:
        train_pointwise(model, x, y, batch_size=8, epochs=50, lr=1e30, progress=False)
    step = e.value.step
    # the loop stopped at the step whose loss was not finite: one training forward per step
    assert forwards.count(True) == step < 50 * 8
    assert list(e.value.values) == ["weighted_bce"]
    assert f"{type(model).__name__} diverged at step {step}: non-finite weighted_bce=" in str(
        e.value
    )


def test_report_configs_refuse_batch_size_one_for_batch_norm_models(tmp_path, capsys):
    from training.cli import main
    from training.drl.report.plan import ReportConfig
    from training.eval.baselines_run import EVAL_PRESETS
    from training.sim.config import ConfigError

    tiny = EVAL_PRESETS["tiny"]
    with pytest.raises(ConfigError, match="batch_size=1: nfm, afn use batch norm"):
        tiny.with_overrides({"batch_size": "1"})
    # without a batch-norm model, one row per step is allowed
    assert tiny.with_overrides({"batch_size": "1", "models": "fm,deepfm"}).batch_size == 1
    assert tiny.with_overrides({"batch_size": "2"}).batch_size == 2
    with pytest.raises(ConfigError, match="pointwise_batch_size=1: nfm, afn use batch norm"):
        dataclasses.replace(ReportConfig(), pointwise_batch_size=1)
    for argv in (["report", "--budget", "batch_size=1"],
                 ["drl-report", "--budget", "pointwise_batch_size=1"]):  # fmt: skip
        out = tmp_path / argv[0]
        assert main([*argv, "--preset", "tiny", "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "use batch norm" in err
        assert not out.exists()
