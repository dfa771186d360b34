"""One featurisation: ids from live observations equal ids rebuilt from the written log."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from contract.features import DEFAULT_SPEC, prefix_counts
from tests.training.log_rows import Req, log_rows, side_tables
from training.data.features import SideTables, build_requests, candidate_ids, slot_position
from training.eval.policies import OnlineFeatures
from training.sim.config import preset
from training.sim.env import Env
from training.sim.generate import request_rows
from training.sim.logging_policy import LoggingPolicy
from training.sim.world import build_world


@pytest.fixture(scope="module")
def logged():
    world = build_world(preset("tiny"))
    env, pol = Env(world), LoggingPolicy(world)
    side = SideTables.from_tables(world.users_table(), world.items_table())
    feats = OnlineFeatures(side)
    k = world.cfg.list_size
    online: dict[tuple[int, int], np.ndarray] = {}
    tables = []
    obs = env.begin_day(0)
    while obs is not None:
        slate, prop = pol.sample(obs, k)
        x = feats.request(obs)
        rows = np.arange(obs.batch_size)[:, None]
        for t in range(k):
            ids = OnlineFeatures.cand_ids(
                x, t, x.tags[rows, slate[:, :t]], x.authors[rows, slate[:, :t]]
            )
            for i, rid in enumerate(obs.request_id.tolist()):
                online[(rid, t)] = np.concatenate([x.user_ctx[i], ids[i, slate[i, t]]])
        fb = env.step(slate)
        tables.append(request_rows(obs, slate, prop, fb))
        obs = env.observe()
    table = pa.concat_tables(tables)
    idx = np.lexsort((table["request_index"].to_numpy(), table["session_id"].to_numpy()))
    return build_requests(table.take(idx), side, k), online


def test_logged_impression_ids_equal_online_ids(logged):
    req, online = logged
    assert req.n_impressions == len(online)
    for g in range(0, req.n_impressions, 7):
        r, t = req.imp_req[g], req.imp_slot[g]
        np.testing.assert_array_equal(req.imp_ids[g], online[(int(req.request_id[r]), int(t))])


def test_impression_ids_are_in_range_and_list_fields_follow_the_prefix(logged):
    req, _ = logged
    DEFAULT_SPEC.check_ids(req.imp_ids)
    same_tag = 1 + np.clip(prefix_counts(req.cand_tag[:, : req.list_size]), 0, 4)
    col = DEFAULT_SPEC.names().index("same_tag_in_list")
    np.testing.assert_array_equal(req.imp_ids[:, col], same_tag[req.imp_req, req.imp_slot])
    pos = req.imp_ids[:, DEFAULT_SPEC.names().index("position")]
    np.testing.assert_array_equal(pos, 1 + req.imp_slot)


def test_session_counters_accumulate_over_requests(logged):
    req, _ = logged
    nxt = req.next_req[req.next_req >= 0]
    prev = np.flatnonzero(req.next_req >= 0)
    np.testing.assert_array_equal(req.depth[nxt], req.depth[prev] + req.n_shown[prev])
    clicks = req.feedback[:, :, 0].sum(1)
    np.testing.assert_array_equal(req.clicks[nxt], req.clicks[prev] + clicks[prev])
    first = np.setdiff1d(np.arange(req.n_requests), nxt)
    assert (req.depth[first] == 0).all() and (req.recent_tags[first] == 0).all()


def test_candidate_ids_of_shown_item_equal_its_impression_ids(logged):
    req, _ = logged
    g = np.arange(0, req.n_impressions, 5)
    c = candidate_ids(req, req.imp_req[g], req.imp_slot[g], cols=req.imp_slot[g][:, None])[:, 0]
    np.testing.assert_array_equal(c, req.imp_ids[g, 10:])


T0 = 1_649_376_000_000
N_ITEM = len(DEFAULT_SPEC.group("item"))  # candidate ids: the item fields, then the list fields


def test_an_impression_logged_at_position_2_is_featurised_at_position_2() -> None:
    # The worked example: a request whose only impression is logged at position 2 (an
    # imported bandit log) was featurised as position 0.
    users, items = side_tables([1], [10, 11, 12])
    table = log_rows([Req(1, 0, T0, [(10, 2, 1)], others=(11, 12))])
    req = build_requests(table, SideTables.from_tables(users, items))
    position = DEFAULT_SPEC.names().index("position")
    assert req.imp_ids[0, position] == 3  # a count field: 1 + position 2 (it was 1)
    assert req.shown_pos.tolist() == [[2]]
    # an unshown candidate scored for that slot, and for the slot after it (position 3)
    ids = candidate_ids(req, np.array([0, 0]), np.array([0, 1]), cols=np.array([[1], [1]]))
    assert ids[:, 0, N_ITEM].tolist() == [3, 4]


def test_sparse_slots_follow_the_logged_positions_not_the_row_order() -> None:
    # Items 10 and 11 share tag 5; the rows list position 3 before position 1.
    users, items = side_tables([1], [10, 11, 12], tags=[5, 5, 6])
    table = log_rows([Req(1, 0, T0, [(11, 3, 0), (10, 1, 1)], others=(12,))])
    req = build_requests(table, SideTables.from_tables(users, items))
    assert req.cand_item[0, :2].tolist() == [10, 11]  # the shown items in position order
    assert req.shown_pos.tolist() == [[1, 3]]
    names = DEFAULT_SPEC.names()
    assert req.imp_ids[:, names.index("position")].tolist() == [2, 4]
    # item 11 (position 3) has one earlier item of its tag: item 10 at position 1
    assert req.imp_ids[:, names.index("same_tag_in_list")].tolist() == [1, 2]
    assert req.label("click").tolist() == [1, 0]


def test_slot_position_past_the_shown_items_continues_after_the_last() -> None:
    users, items = side_tables([1, 2], [10, 11, 12, 13])
    table = log_rows([Req(1, 0, T0, [(10, 0, 0), (11, 1, 0)]), Req(2, 0, T0, [(12, 4, 0)])])
    req = build_requests(table, SideTables.from_tables(users, items))
    r = np.array([0, 0, 0, 1, 1])
    t = np.array([0, 1, 2, 0, 1])
    # contiguous slots: the column itself; sparse: 4, then 5
    assert slot_position(req, r, t).tolist() == [0, 1, 2, 4, 5]
