"""The list builder against a brute-force torch reference, and its documented edges."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from contract.features import (
    DEFAULT_SPEC,
    FeatureSpec,
    Field,
    candidate_prefix_counts,
    group_ids,
    list_fields,
)
from runtime.bundle import load_bundle
from runtime.lists import Exploration, RankingInputError, SessionState, build_lists
from tests.conftest import crowded_items, small_models

TS = 1_700_000_000_000 + 13 * 3_600_000  # an afternoon, epoch ms


def _columns(table) -> dict[str, np.ndarray]:
    return {n: table.column(n).to_numpy() for n in table.column_names}


def _memory(net) -> int:
    cfg = net.cfg
    return int(getattr(cfg, "encoder", cfg).memory)  # an MMRF network's encoder, or Q's own


def _scores(net, buf, mask, uc, cand):
    """A Q network's ``Q`` or MMRF's main-actor score ``<a^N(s), v>`` of candidates."""
    if hasattr(net, "scores"):
        return net.scores(net.state(buf, mask, uc), cand)
    return net.score(buf, mask, uc, cand)[0]


def brute_force(net, spec, users, items, user_id, cands, k, history, request_index, ts=TS):
    """Greedy list by re-encoding the whole state for every candidate at every position.

    ``history``: the session's earlier impressions (lists of ``n`` ids, oldest first); it is
    extended with the placed items. Every id comes from the contract's featurisation of the
    raw side-table columns; nothing is cached between positions.
    """
    u, it = _columns(users), _columns(items)
    urow = np.flatnonzero(u["user_id"] == user_id)
    user_f = group_ids(spec, "user", {c: v[urow] for c, v in u.items()})[0]
    ctx = group_ids(spec, "context", {"timestamp": np.array([ts]),
                                      "request_index": np.array([request_index])})[0]  # fmt: skip
    uc = np.concatenate([user_f, ctx])
    rows = np.array([np.flatnonzero(it["item_id"] == c)[0] for c in cands])
    item_f = group_ids(spec, "item", {c: v[rows] for c, v in it.items()})
    tags, authors = it["tag"][rows], it["author_raw"][rows]
    w, m = spec.recent_window, _memory(net)
    past_tags = [h_tag for _, h_tag in history][-w:]
    recent_tags = np.array([0] * (w - len(past_tags)) + past_tags)
    recent = (tags[:, None] == recent_tags[None, :]).sum(-1)
    depth = len(history)
    placed: list[int] = []
    for t in range(k):
        same_tag = candidate_prefix_counts(tags, tags[placed], t) if placed else np.zeros_like(tags)
        same_auth = (candidate_prefix_counts(authors, authors[placed], t) if placed
                     else np.zeros_like(tags))  # fmt: skip
        lf = list_fields(t, same_tag, same_auth, recent, depth, 0, spec=spec)
        cand = np.concatenate([item_f, lf], axis=1)
        ids = [h for h, _ in history][-m:]
        buf_ids = np.zeros((1, m, spec.n_fields), dtype=np.int64)
        mask = np.zeros((1, m), dtype=bool)
        if ids:
            buf_ids[0, m - len(ids) :] = np.stack(ids)
            mask[0, m - len(ids) :] = True
        with torch.no_grad():
            buf = net.encode(torch.from_numpy(buf_ids))
            q = _scores(net, buf, torch.from_numpy(mask), torch.from_numpy(uc[None]),
                        torch.from_numpy(cand[None]))  # fmt: skip
        q = q[0].numpy().copy()
        q[placed] = -np.inf
        j = int(np.argmax(q))
        placed.append(j)
        history.append((np.concatenate([uc, cand[j]]), int(tags[j])))
    return np.array(placed)


def _other_spec() -> FeatureSpec:
    """DEFAULT_SPEC with other sizes, caps, edges and recent window: a bundle trained on it
    must serve by its own rules."""
    swap = {
        "position": Field("position", "list", 6, "count"),
        "session_depth": Field("session_depth", "list", 5, "bucket", (0, 5, 50)),
        "duration": Field("duration", "item", 4, "bucket", (20.0, 90.0), source="duration_s"),
        "same_tag_in_list": Field("same_tag_in_list", "list", 3, "count"),
    }
    fields = tuple(swap.get(f.name, f) for f in DEFAULT_SPEC.fields)
    return FeatureSpec(fields, version="other", recent_window=6)


@pytest.fixture(scope="module")
def other_bundle(tiny_data, tmp_path_factory):
    from training.export import export_bundle, q_export

    ds, _, _ = tiny_data
    spec = _other_spec()
    q, _ = small_models(spec, seed=3)
    out = tmp_path_factory.mktemp("bundles") / "other"
    export_bundle(out, [q_export("q", q, spec)], spec, ds.users(), crowded_items(ds.items()),
                  name="other")  # fmt: skip
    return out, q, spec


@pytest.mark.parametrize("which", ["default_spec", "other_spec", "mmrf_actor"])
def test_greedy_lists_equal_brute_force_reencoding_across_two_requests(
    which, tiny_bundle, other_bundle, mmrf_bundle, tiny_data
):
    import pyarrow.parquet as pq

    path, net, spec = {
        "default_spec": (*tiny_bundle[:2], DEFAULT_SPEC),
        "other_spec": other_bundle,
        "mmrf_actor": (*mmrf_bundle[:2], DEFAULT_SPEC),  # kind actor: same builder, unchanged
    }[which]
    bundle = load_bundle(path)
    users, items_t = pq.read_table(path / "users.parquet"), pq.read_table(path / "items.parquet")
    assert bundle.spec == spec
    model = bundle.model("mmrf_watchtime" if which == "mmrf_actor" else "q")
    rng = np.random.default_rng(1)
    items = bundle.tables.item_ids
    user = int(bundle.tables.user_ids[7])
    state = SessionState.new(model, spec.recent_window)
    history: list = []
    # Candidates of a few prolific authors, so the same-author and same-tag list fields vary.
    for request in range(2):  # the second request starts from the first one's cached state
        cands = rng.choice(items, size=40, replace=False)
        got = build_lists(bundle, model, [state], np.array([user]), np.array([TS]), cands[None], 6)
        want = brute_force(net, spec, users, items_t, user, cands, 6, history, request)
        np.testing.assert_array_equal(got.index[0], want)
        np.testing.assert_array_equal(got.propensity, 1.0)
        assert not got.explored.any()
        state = got.states[0]
        assert (state.request_index, state.depth) == (request + 1, 6 * (request + 1))
        # The cached window holds the encodings of the session's last `memory` impressions.
        m = _memory(net)
        with torch.no_grad():
            enc = net.encode(torch.from_numpy(np.stack([h for h, _ in history][-m:]))).numpy()
        np.testing.assert_allclose(state.buffer[state.mask], enc, atol=1e-5)
        assert state.mask.all()
        np.testing.assert_array_equal(state.recent_tags[-6:], [t for _, t in history][-6:])


def test_exploration_propensities_match_empirical_frequencies(tiny_bundle):
    bundle = load_bundle(tiny_bundle[0])
    model = bundle.model("q")
    n = 6000
    cands = np.broadcast_to(bundle.tables.item_ids[:20], (n, 20))
    states = [SessionState.new(model, bundle.spec.recent_window)] * n
    ex = Exploration(epsilon=0.4, top_k=3)
    out = build_lists(bundle, model, states, np.full(n, 5), np.full(n, TS), cands, 2, ex,
                      np.random.default_rng(0))  # fmt: skip
    greedy = build_lists(bundle, model, states[:1], np.array([5]), np.array([TS]), cands[:1], 1)
    best = greedy.index[0, 0]
    # Position 0: the best item with 0.6 + 0.4 / 3, each other top-3 item with 0.4 / 3.
    first = out.index[:, 0]
    for j in np.unique(first):
        p = out.propensity[first == j, 0]
        assert np.ptp(p) == 0
        want = 0.6 + 0.4 / 3 if j == best else 0.4 / 3
        assert p[0] == pytest.approx(want)
        freq = (first == j).mean()
        assert abs(freq - want) < 4 * np.sqrt(want * (1 - want) / n), (j, freq, want)
    assert len(np.unique(first)) == 3
    assert out.explored[:, 0].mean() == pytest.approx(0.4 * 2 / 3, abs=0.03)
    # Position 1, given the best item at position 0: the same rule over what remains.
    rows = first == best
    second = out.index[rows, 1]
    for j in np.unique(second):
        p = out.propensity[rows][second == j, 1][0]
        freq = (second == j).mean()
        assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / rows.sum()), (j, freq, p)
    np.testing.assert_allclose(
        np.unique(out.propensity[rows, 1]), sorted({0.4 / 3, 0.6 + 0.4 / 3}), rtol=1e-12
    )


def test_k_larger_than_the_candidates_returns_every_candidate(tiny_bundle):
    bundle = load_bundle(tiny_bundle[0])
    for name in ("q", "wd"):
        out = build_lists(bundle, bundle.model(name), [SessionState.new(
            bundle.model(name), bundle.spec.recent_window)], np.array([5]), np.array([TS]),
            bundle.tables.item_ids[:4][None], 10)  # fmt: skip
        assert out.index.shape == (1, 4)
        assert sorted(out.index[0]) == [0, 1, 2, 3]
        assert out.states[0].depth == 4


def test_duplicate_candidates_are_refused_naming_the_id(tiny_bundle):
    bundle = load_bundle(tiny_bundle[0])
    model = bundle.model("q")
    items = bundle.tables.item_ids
    cands = np.array([[items[0], items[1], items[0]]])
    with pytest.raises(RankingInputError, match=f"item id {items[0]} appears more than once"):
        build_lists(bundle, model, [SessionState.new(model, 20)], np.array([5]), np.array([TS]),
                    cands, 2)  # fmt: skip


def test_bad_k_and_exploration_are_refused(tiny_bundle):
    bundle = load_bundle(tiny_bundle[0])
    model = bundle.model("q")
    args = ([SessionState.new(model, 20)], np.array([5]), np.array([TS]),
            bundle.tables.item_ids[:5][None])  # fmt: skip
    with pytest.raises(RankingInputError, match="k=0"):
        build_lists(bundle, model, *args, 0)
    with pytest.raises(RankingInputError, match="epsilon=1.5"):
        Exploration(1.5, 3)
    with pytest.raises(RankingInputError, match="needs a numpy Generator"):
        build_lists(bundle, model, *args, 2, Exploration(0.1, 2))


def test_unknown_items_are_ranked_like_training_featurises_them_and_flagged(tiny_bundle, tiny_data):
    from training.data.features import SideTables as TrainTables

    bundle = load_bundle(tiny_bundle[0])
    ds = tiny_data[0]
    side = TrainTables.from_tables(ds.users(), crowded_items(ds.items()))
    ids = np.array([[bundle.tables.item_ids[3], 10**12 + 7, bundle.tables.item_ids[9], -5]])
    f, tag, author, known = bundle.tables.items(ids)
    tf, ttag, tauthor = side.item_attrs(side.item_rows(ids), ids)
    np.testing.assert_array_equal(f, tf)
    np.testing.assert_array_equal(tag, ttag)
    np.testing.assert_array_equal(author, tauthor)
    np.testing.assert_array_equal(known, [[True, False, True, False]])
    users = np.array([bundle.tables.user_ids[2], 987654321])
    np.testing.assert_array_equal(bundle.tables.users(users)[0], side.user_f(users))
    model = bundle.model("q")
    out = build_lists(bundle, model, [SessionState.new(model, 20)], np.array([5]),
                      np.array([TS]), ids, 4)  # fmt: skip
    np.testing.assert_array_equal(out.unknown, ~known)
    assert sorted(out.item_ids[0]) == sorted(ids[0])


def test_session_state_round_trips_through_bytes(tiny_bundle):
    bundle = load_bundle(tiny_bundle[0])
    model = bundle.model("q")
    out = build_lists(bundle, model, [SessionState.new(model, 20)], np.array([5]),
                      np.array([TS]), bundle.tables.item_ids[:12][None], 3)  # fmt: skip
    st = replace(out.states[0], clicks=2)
    back = SessionState.from_bytes(st.to_bytes())
    np.testing.assert_array_equal(back.buffer, st.buffer)
    np.testing.assert_array_equal(back.mask, st.mask)
    np.testing.assert_array_equal(back.recent_tags, st.recent_tags)
    assert (back.request_index, back.depth, back.clicks) == (1, 3, 2)
    with pytest.raises(ValueError, match="not an encoded session state"):
        SessionState.from_bytes(b"junk")
    with pytest.raises(ValueError, match="bytes, expected"):
        SessionState.from_bytes(st.to_bytes()[:-1])
