"""MMRF samples and rewards: non-impression sampling, random-action picks, D^M, reward scale."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from training.data.features import candidate_ids
from training.mmrf.rewards import RewardScale, aspect_rewards, fit_reward_scale, model_scale
from training.mmrf.samples import (
    SimulatedBuffer,
    Transitions,
    non_impression_pool,
    random_action_picks,
    sample_non_impressions,
)


def test_non_impression_sampler_keeps_about_a_quarter_and_never_an_impression():
    rows, cols = 200, 400
    cand_mask = np.ones((rows, cols), dtype=bool)
    cand_mask[:, 350:] = np.arange(rows)[:, None] % 2 == 0  # odd rows: 350 candidates
    n_shown = np.full(rows, 6)
    keep = sample_non_impressions(cand_mask, n_shown, 0.25, np.random.default_rng(0))
    assert not keep[:, :6].any()
    assert not (keep & ~cand_mask).any()
    non_imp = cand_mask[:, 6:].sum()
    # 74,400 Bernoulli(0.25) draws: the standard error of the share is 0.0016.
    assert abs(keep.sum() / non_imp - 0.25) < 0.01
    assert not sample_non_impressions(cand_mask, n_shown, 0.0, np.random.default_rng(0)).any()
    full = sample_non_impressions(cand_mask, n_shown, 1.0, np.random.default_rng(0))
    assert (full == (cand_mask & (np.arange(cols) >= 6))).all()
    with pytest.raises(ValueError, match="rate"):
        sample_non_impressions(cand_mask, n_shown, 1.5, np.random.default_rng(0))


def test_pool_holds_the_sampled_candidates_ids_at_the_instance_slot(tiny_data):
    _, _, req = tiny_data
    g = np.arange(40, 60)
    r, t = req.imp_req[g], req.imp_slot[g]
    ids, mask = non_impression_pool(req, r, t, 0.25, np.random.default_rng(1))
    keep = sample_non_impressions(req.cand_mask[r], req.n_shown[r], 0.25,
                                  np.random.default_rng(1))  # fmt: skip
    assert (mask.sum(1) == keep.sum(1)).all() and ids.shape[1] == keep.sum(1).max()
    for b in range(len(g)):
        cols = np.flatnonzero(keep[b])
        expect = candidate_ids(req, r[b : b + 1], t[b : b + 1], cols=cols[None])[0]
        assert (ids[b, : len(cols)] == expect).all()


def test_random_action_picks_the_top_k_valid_entries():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.8, 0.1]])
    mask = torch.tensor([[True, False, True, True], [False, True, False, False]])
    idx, valid = random_action_picks(scores, mask, 2)
    assert idx[0].tolist() == [3, 2] and valid[0].tolist() == [True, True]
    assert idx[1, 0] == 1 and valid[1].tolist() == [True, False]
    idx, _ = random_action_picks(scores, mask, 10)
    assert idx.shape == (2, 4)


def _transitions(n: int, start: float) -> Transitions:
    return Transitions(
        hist_ids=torch.zeros(n, 2, 3, dtype=torch.long),
        hist_mask=torch.ones(n, 2, dtype=torch.bool),
        user_ctx=torch.zeros(n, 2, dtype=torch.long),
        action=torch.zeros(n, 2, dtype=torch.long),
        feedback=torch.zeros(n, 7),
        reward=(start + torch.arange(n, dtype=torch.float32))[:, None].expand(n, 7).clone(),
        done=torch.zeros(n, dtype=torch.bool),
        next_user_ctx=torch.zeros(n, 2, dtype=torch.long),
        simulated=torch.ones(n, dtype=torch.bool),
    )


def test_simulated_buffer_is_a_ring_that_survives_a_checkpoint():
    buf = SimulatedBuffer(3)
    assert buf.sample(2, np.random.default_rng(0)) is None
    buf.add(_transitions(2, 0.0))  # 0, 1
    buf.add(_transitions(2, 10.0))  # 10 overwrites nothing, 11 overwrites 0
    assert len(buf) == 3
    assert sorted(buf.data.reward[:, 0].tolist()) == [1.0, 10.0, 11.0]
    drawn = buf.sample(5, np.random.default_rng(0))
    assert len(drawn) == 3 and set(drawn.reward[:, 0].tolist()) <= {1.0, 10.0, 11.0}
    other = SimulatedBuffer(1)
    other.load_state_dict(buf.state_dict())
    a = buf.sample(8, np.random.default_rng(4))
    b = other.sample(8, np.random.default_rng(4))
    assert torch.equal(a.reward, b.reward) and other.pos == buf.pos == 1


def test_reward_scale_is_fitted_on_impressions_only(tmp_path):
    t = pa.table({
        "position": pa.array([0, 1, 2, -1, 3], pa.int32()),
        "watch_time": pa.array([10.0, 20.0, 30.0, None, 40.0]),
    })  # fmt: skip
    pq.write_table(t, tmp_path / "a.parquet")
    s = fit_reward_scale([tmp_path / "a.parquet"], quantile=0.5)
    assert s.cap == 25.0 and s.mean == 25.0 and s.count == 4
    assert s.std == pytest.approx(np.std([10, 20, 30, 40]))
    assert RewardScale.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="cap"):
        RewardScale(cap=0.0, quantile=0.99, mean=0.0, std=0.0, count=1)


def test_model_scale_caps_watch_time_and_rewards_negate_hate():
    scale = RewardScale(cap=30.0, quantile=0.99, mean=10.0, std=5.0, count=3)
    fb = torch.tensor([[1, 0, 0, 0, 1, 0, 15.0], [0, 1, 1, 1, 0, 1, 45.0]])
    m = model_scale(fb, scale)
    assert m[:, 6].tolist() == [0.5, 1.0] and m[:, :6].equal(fb[:, :6])
    r = aspect_rewards(m)
    assert r[0].tolist() == [1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.5]
