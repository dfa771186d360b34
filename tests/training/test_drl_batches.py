"""DRL-Rec batches: the history window, the next state and the exploration input, on worked
numbers and against a per-instance loop over the tiny world's requests."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from training.drl.batches import (
    exploration_candidates,
    history_index,
    make_batch,
    next_state,
    request_order,
    unplaced,
)


def test_unplaced_keeps_the_valid_columns_from_the_first_free_slot():
    cand_mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=bool)
    got = unplaced(cand_mask, np.array([2, 0]))
    assert got.astype(int).tolist() == [[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]]


def test_history_window_is_the_m_impressions_strictly_before_g_in_its_session():
    # Session A holds impressions 0..3, session B 4..8.
    req = SimpleNamespace(imp_sess_start=np.array([0, 0, 0, 0, 4, 4, 4, 4, 4]))
    idx, mask = history_index(req, np.array([6, 4, 2]), 3)
    # g = 6: 3 is session A's (masked), then 4, 5; never 6 itself.
    # g = 4: a session's first impression has an empty window.
    # g = 2: -1 does not exist; 0, 1.  Masked slots point at g.
    assert mask.astype(int).tolist() == [[0, 1, 1], [0, 0, 0], [0, 1, 1]]
    assert idx.tolist() == [[6, 4, 5], [4, 4, 4], [2, 0, 1]]


def test_next_state_is_the_next_slot_then_the_next_request_then_terminal():
    n_shown = np.array([3, 2, 1])
    next_req = np.array([1, -1, -1])
    cand_mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=bool)
    r = np.array([0, 0, 1, 1, 2])
    t = np.array([0, 2, 0, 1, 0])
    nxt = next_state(r, t, n_shown, next_req, cand_mask)
    assert nxt.request.tolist() == [0, 1, 1, 1, 2]
    assert nxt.slot.tolist() == [1, 0, 1, 0, 0]
    assert nxt.same_request.tolist() == [True, False, True, False, False]
    assert nxt.done.tolist() == [False, False, False, True, True]
    # (0, 0) -> slot 1 of request 0: the item placed at slot 0 is no longer a candidate.
    # (0, 2) -> slot 0 of request 1: all its candidates.  (1, 0) -> slot 1 of request 1.
    assert nxt.mask.astype(int).tolist() == [
        [0, 1, 1, 1],
        [1, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]


@pytest.fixture(scope="module")
def instances(tiny_data):
    _, side, req = tiny_data
    g = request_order(req, np.random.default_rng(4))[:200]
    return side, req, g


def _expected_next(req, r, t):
    """The next state of one instance, written as a plain loop over the rules."""
    c = req.cand_item.shape[1]
    if t + 1 < req.n_shown[r]:
        nr, nt = r, t + 1
    elif req.next_req[r] >= 0:
        nr, nt = req.next_req[r], 0
    else:
        return [False] * c
    return [bool(req.cand_mask[nr, j]) and j >= nt for j in range(c)]


def test_batch_next_mask_holds_only_the_next_states_unplaced_candidates(instances):
    side, req, g = instances
    b = make_batch(req, side, g, memory=4)
    expect = [_expected_next(req, req.imp_req[i], req.imp_slot[i]) for i in g]
    np.testing.assert_array_equal(b.next_mask.numpy(), np.array(expect))
    assert b.done.any() and b.same_request.any() and (~b.same_request & ~b.done).any()


@pytest.mark.parametrize("n_explore", [5, 80])
def test_exploration_input_never_holds_the_real_item_or_an_earlier_slots_item(instances, n_explore):
    side, req, g = instances
    r, t = req.imp_req[g], req.imp_slot[g]
    n_cols = req.cand_item.shape[1]
    subset = n_explore <= n_cols  # else all logged candidates, topped up from the catalogue
    assert subset == (n_explore == 5)
    ids, mask = exploration_candidates(req, side, r, t, n_explore, np.random.default_rng(0))
    assert ids.shape == (len(g), n_explore, 12) and mask.shape == (len(g), n_explore)
    for i in range(len(g)):
        free = [bool(req.cand_mask[r[i], j]) and j > t[i] for j in range(n_cols)]
        if subset:
            placed = {tuple(row) for row in req.cand_f[r[i], : t[i] + 1]}  # slots 0..t
            picked = {tuple(row) for row in ids[i, mask[i], :6]}  # item fields
            assert not placed & picked and mask[i].sum() == min(n_explore, sum(free)), i
        else:
            assert mask[i, :n_cols].tolist() == free, i
            assert mask[i, n_cols:].all()
