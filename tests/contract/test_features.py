"""Tests for contract.features: the one featurisation shared by training and serving."""

from __future__ import annotations

import numpy as np
import pytest

from contract.features import (
    CONTEXT_FIELDS,
    DEFAULT_SPEC,
    DEPTH_EDGES,
    DURATION_EDGES_S,
    ITEM_FIELDS,
    LIST_FIELDS,
    USER_FIELDS,
    FeatureSpec,
    Field,
    bucketise,
    candidate_prefix_counts,
    context_fields,
    hash_ids,
    hour_of_day,
    item_fields,
    list_fields,
    prefix_counts,
)

#: 2022-04-08 00:00 UTC in epoch milliseconds.
MIDNIGHT_MS = 1_649_376_000_000
HOUR_MS = 3_600_000

# ------------------------------------------------------------------------------------------
# hash_ids
# ------------------------------------------------------------------------------------------


def test_hash_ids_maps_raw_ids_into_one_to_size_and_negatives_to_unknown() -> None:
    raw = np.array([0, 5, 32766, 32767, 32768, 10**12, -1, -99])
    # 1 + raw % 32767; negatives -> 0 ("unknown").
    expected = np.array([1, 6, 32767, 1, 2, 1 + 10**12 % 32767, 0, 0])
    out = hash_ids(raw, 32768)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.int64


def test_hash_ids_never_produces_the_reserved_zero_for_valid_ids() -> None:
    raw = np.arange(0, 50_000)
    out = hash_ids(raw, 97)
    assert out.min() == 1 and out.max() == 96


# ------------------------------------------------------------------------------------------
# bucketise and the context fields
# ------------------------------------------------------------------------------------------


def test_bucketise_counts_edges_strictly_below_the_value() -> None:
    # Edges (7, 15, 30, 60, 120, 300, 600): an edge value belongs to the bucket it closes.
    x = np.array([0.0, 7.0, 7.5, 15.0, 15.01, 599.0, 600.0, 600.5, 1e9])
    np.testing.assert_array_equal(bucketise(x, DURATION_EDGES_S), [1, 1, 2, 2, 3, 7, 7, 8, 8])


def test_bucketise_maps_nan_to_unknown() -> None:
    np.testing.assert_array_equal(bucketise(np.array([np.nan, 3.0]), DURATION_EDGES_S), [0, 1])


def test_bucketise_with_depth_edges_starting_at_zero() -> None:
    # DEPTH_EDGES = (0, 10, 20, 40, 80, 160): zero has its own bucket.
    x = np.array([0, 1, 10, 11, 160, 161])
    np.testing.assert_array_equal(bucketise(x, DEPTH_EDGES), [1, 2, 2, 3, 6, 7])


def test_hour_of_day_is_one_plus_the_utc_hour() -> None:
    ts = MIDNIGHT_MS + np.array(
        [0, HOUR_MS - 1, 13 * HOUR_MS + 1_800_000, 23 * HOUR_MS, 24 * HOUR_MS]
    )
    np.testing.assert_array_equal(hour_of_day(ts), [1, 1, 14, 24, 1])


def test_context_fields_stack_hour_and_request_index_bucket() -> None:
    out = context_fields(np.array([MIDNIGHT_MS + 5 * HOUR_MS] * 3), np.array([0, 3, 100]))
    # REQUEST_INDEX_EDGES = (0, 1, 2, 4, 8, 16): 0 -> 1, 3 -> 4, 100 -> 7.
    np.testing.assert_array_equal(out, [[6, 1], [6, 4], [6, 7]])


# ------------------------------------------------------------------------------------------
# item_fields and list_fields
# ------------------------------------------------------------------------------------------


def test_item_fields_hash_ids_clip_vocabularies_and_bucket_duration() -> None:
    out = item_fields(
        item_id=np.array([5, -1]),
        author_raw=np.array([8191, 3]),
        tag=np.array([3, 500]),
        duration_s=np.array([20.0, np.nan]),
        upload_type=np.array([2, 99]),
        music_type=np.array([9, -4]),
    )
    np.testing.assert_array_equal(
        out,
        [
            [6, 1, 3, 3, 2, 9],  # 8191 % 8191 = 0 -> 1; 20 s -> bucket 3
            [0, 4, 71, 0, 11, 0],  # negative id -> 0; tag and types clipped to the vocab
        ],
    )


def test_list_fields_hand_computed() -> None:
    out = list_fields(
        position=np.array([0, 3, 40]),
        same_tag_in_list=np.array([0, 2, 9]),
        same_author_in_list=np.array([0, 1, 5]),
        recent_same_tag=np.array([0, 4, 30]),
        session_depth=np.array([0, 15, 1000]),
        session_clicks=np.array([0, 3, 100]),
    )
    np.testing.assert_array_equal(
        out,
        [
            [1, 1, 1, 1, 1, 1],
            [4, 3, 2, 5, 3, 3],  # depth 15 -> 1 + #{0, 10} = 3; clicks 3 -> 1 + #{0, 2} = 3
            [32, 5, 3, 9, 7, 7],  # everything clipped to the largest id
        ],
    )


def test_list_fields_broadcast_scalars_over_positions() -> None:
    out = list_fields(np.arange(4), 0, 0, 0, 0, 0)
    assert out.shape == (4, 6)
    np.testing.assert_array_equal(out[:, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(out[:, 1:], np.ones((4, 5), dtype=np.int64))


def test_featurisation_of_extreme_inputs_stays_inside_the_spec() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    ctx = context_fields(rng.integers(0, 2**40, n), rng.integers(0, 10**6, n))
    items = item_fields(
        rng.integers(-5, 2**40, n),
        rng.integers(-5, 2**40, n),
        rng.integers(-5, 10**4, n),
        rng.uniform(-10, 1e5, n),
        rng.integers(-5, 100, n),
        rng.integers(-5, 100, n),
    )
    lists = list_fields(*(rng.integers(0, 10**6, n) for _ in range(6)))
    DEFAULT_SPEC.check_ids(ctx, "context")
    DEFAULT_SPEC.check_ids(items, "item")
    DEFAULT_SPEC.check_ids(lists, "list")


# ------------------------------------------------------------------------------------------
# prefix_counts and candidate_prefix_counts
# ------------------------------------------------------------------------------------------


def test_prefix_counts_counts_earlier_equal_keys() -> None:
    np.testing.assert_array_equal(prefix_counts(np.array([3, 5, 3, 3, 5, 7])), [0, 0, 1, 2, 1, 0])


def test_prefix_counts_is_batched_over_leading_axes() -> None:
    keys = np.array([[1, 1, 1], [1, 2, 3]])
    np.testing.assert_array_equal(prefix_counts(keys), [[0, 1, 2], [0, 0, 0]])


def test_candidate_prefix_counts_only_counts_the_first_n_placed() -> None:
    cand = np.array([3, 5, 7, 9])
    placed = np.array([3, 3, 5, 9])
    np.testing.assert_array_equal(candidate_prefix_counts(cand, placed, 0), [0, 0, 0, 0])
    np.testing.assert_array_equal(candidate_prefix_counts(cand, placed, 2), [2, 0, 0, 0])
    np.testing.assert_array_equal(candidate_prefix_counts(cand, placed, 4), [2, 1, 0, 1])


def test_candidate_prefix_counts_with_per_row_n_placed() -> None:
    cand = np.array([[3, 5], [3, 5]])
    placed = np.array([[3, 5, 5], [3, 5, 5]])
    out = candidate_prefix_counts(cand, placed, np.array([1, 3]))
    np.testing.assert_array_equal(out, [[1, 0], [1, 2]])


def test_candidate_prefix_counts_agrees_with_prefix_counts_of_the_placed_list() -> None:
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 4, size=(50, 10))
    expected = prefix_counts(keys)
    for k in range(10):
        got = candidate_prefix_counts(keys[:, k : k + 1], keys, k)[:, 0]
        np.testing.assert_array_equal(got, expected[:, k])


# ------------------------------------------------------------------------------------------
# FeatureSpec
# ------------------------------------------------------------------------------------------


def test_default_spec_groups_in_order() -> None:
    assert DEFAULT_SPEC.names("user") == [f.name for f in USER_FIELDS]
    assert DEFAULT_SPEC.names("context") == [f.name for f in CONTEXT_FIELDS]
    assert DEFAULT_SPEC.names("item") == [f.name for f in ITEM_FIELDS]
    assert DEFAULT_SPEC.names("list") == [f.name for f in LIST_FIELDS]
    assert DEFAULT_SPEC.n_fields == len(USER_FIELDS + CONTEXT_FIELDS + ITEM_FIELDS + LIST_FIELDS)


def test_feature_spec_dict_round_trip() -> None:
    d = DEFAULT_SPEC.to_dict()
    back = FeatureSpec.from_dict(d)
    assert back == DEFAULT_SPEC
    assert back.to_dict() == d
    assert d["fields"][0] == {
        "name": "user_id", "group": "user", "size": 32768, "kind": "hash", "edges": [],
        "source": "user_id",
    }  # fmt: skip
    assert d["recent_window"] == 20
    dur = next(f for f in d["fields"] if f["name"] == "duration")
    assert dur["edges"] == [7.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]
    assert dur["source"] == "duration_s"


def test_field_rules_are_checked_and_named() -> None:
    with pytest.raises(ValueError, match="'d'.*size 5 != len\\(edges\\) \\+ 2 = 4"):
        Field("d", "item", 5, "bucket", (1.0, 2.0))
    with pytest.raises(ValueError, match="'d'.*must ascend"):
        Field("d", "item", 4, "bucket", (2.0, 1.0))
    with pytest.raises(ValueError, match="'h'.*size 25"):
        Field("h", "context", 24, "hour")
    with pytest.raises(ValueError, match="'x'.*kind 'weird'"):
        Field("x", "item", 4, "weird")  # type: ignore[arg-type]


def test_list_fields_follow_the_given_spec_not_module_constants() -> None:
    # A spec with other caps and edges: position capped at 3, depth bucketed at (5,).
    fields = tuple(
        Field("position", "list", 5, "count") if f.name == "position"
        else Field("session_depth", "list", 3, "bucket", (5.0,)) if f.name == "session_depth"
        else f
        for f in DEFAULT_SPEC.fields
    )  # fmt: skip
    spec = FeatureSpec(fields, version="other")
    ids = list_fields(np.array([0, 2, 7]), 0, 0, 0, np.array([0, 5, 6]), 0, spec=spec)
    np.testing.assert_array_equal(ids[:, 0], [1, 3, 4])  # 1 + min(p, 5 - 2)
    np.testing.assert_array_equal(ids[:, 4], [1, 1, 2])  # 1 + #{5 < depth}
    default = list_fields(np.array([0, 2, 7]), 0, 0, 0, np.array([0, 5, 6]), 0)
    np.testing.assert_array_equal(default[:, 0], [1, 3, 8])


def test_feature_spec_from_dict_names_a_missing_key() -> None:
    with pytest.raises(ValueError, match="'version'"):
        FeatureSpec.from_dict({"fields": []})
    with pytest.raises(ValueError, match="'size'"):
        FeatureSpec.from_dict({"version": "1", "fields": [{"name": "a", "group": "user"}]})


def test_feature_spec_rejects_duplicate_names_and_tiny_sizes() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSpec((Field("a", "user", 3), Field("a", "item", 3)))
    with pytest.raises(ValueError, match="'b'.*size 1"):
        FeatureSpec((Field("b", "user", 1),))


def test_check_ids_names_the_first_bad_field_and_value() -> None:
    ids = np.ones((4, len(USER_FIELDS)), dtype=np.int64)
    DEFAULT_SPEC.check_ids(ids, "user")  # all ones: fine
    seg_a = DEFAULT_SPEC.names("user").index("u_seg_a")
    ids[2, seg_a] = 8  # size 8: ids in [0, 8)
    with pytest.raises(ValueError, match=r"'u_seg_a': id 8 outside \[0, 8\)"):
        DEFAULT_SPEC.check_ids(ids, "user")
    ids[2, seg_a] = 1
    ids[0, 1] = -1
    with pytest.raises(ValueError, match="'u_active': id -1"):
        DEFAULT_SPEC.check_ids(ids, "user")


def test_check_ids_rejects_the_wrong_number_of_fields() -> None:
    with pytest.raises(ValueError, match="expected 6 fields"):
        DEFAULT_SPEC.check_ids(np.ones((2, 5), dtype=np.int64), "item")
