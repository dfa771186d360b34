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
    ITEM_TABLE_COLUMNS,
    LIST_FIELDS,
    USER_FIELDS,
    USER_TABLE_COLUMNS,
    FeatureSpec,
    Field,
    bucket_field,
    bucketise,
    candidate_prefix_counts,
    category_field,
    check_standard_layout,
    context_fields,
    extend_spec,
    field_ids,
    hash_ids,
    hashed_field,
    hour_of_day,
    item_fields,
    list_fields,
    prefix_counts,
    side_table_columns,
    str_hash,
    unknown_counts,
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


def test_item_fields_hash_ids_map_out_of_vocabulary_codes_to_unknown_and_bucket_duration() -> None:
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
            # negative id -> 0; tag 500 >= 72, upload 99 >= 12, music -4 < 0: unknown (0),
            # never clipped onto the neighbouring ids 71 and 11
            [0, 4, 0, 0, 0, 0],
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


# ------------------------------------------------------------------------------------------
# Declared fields: vocab codes, categories, builders from data, extended specs
# ------------------------------------------------------------------------------------------


def test_vocab_fields_keep_in_range_codes_and_map_the_rest_to_unknown() -> None:
    f = Field("u_seg_a", "user", 8)
    raw = np.array([0, 1, 7, 8, 100, -1])
    np.testing.assert_array_equal(field_ids(f, raw), [0, 1, 7, 0, 0, 0])
    # Missing and fractional codes (a float column) are unknown too.
    np.testing.assert_array_equal(field_ids(f, np.array([3.0, np.nan, 2.5])), [3, 0, 0])


def test_category_ids_are_one_plus_the_vocabulary_index_and_zero_outside() -> None:
    f = Field("brand", "item", 4, "category", vocab=("b", "a", "c"))
    raw = np.array(["a", "b", "c", "zz", None, np.nan], dtype=object)
    np.testing.assert_array_equal(field_ids(f, raw), [2, 1, 3, 0, 0, 0])
    np.testing.assert_array_equal(field_ids(f, np.array([["c", "a"]])), [[3, 2]])
    g = Field("shop", "item", 4, "category", vocab=(30, 10, 20))
    np.testing.assert_array_equal(
        field_ids(g, np.array([10, 20, 30, 15, 31, -1])), [2, 3, 1, 0, 0, 0]
    )
    # A whole float matches its int; NaN and fractions are unknown, never a neighbour.
    np.testing.assert_array_equal(field_ids(g, np.array([20.0, np.nan, 20.5])), [3, 0, 0])


def test_category_ids_refuse_values_of_the_other_type() -> None:
    f = Field("brand", "item", 3, "category", vocab=("a", "b"))
    with pytest.raises(ValueError, match="'brand'.*strings"):
        field_ids(f, np.array([1, 2]))
    g = Field("shop", "item", 3, "category", vocab=(1, 2))
    with pytest.raises(ValueError, match="'shop'.*integer codes"):
        field_ids(g, np.array(["1", "2"], dtype=object))


def test_category_field_vocabulary_from_data_with_min_count_and_max_size() -> None:
    values = ["x", "y", "x", None, "z", "y", "x", "w"]  # x 3, y 2, z 1, w 1
    f = category_field("c", "item", values)
    assert (f.kind, f.vocab, f.size, f.source) == ("category", ("w", "x", "y", "z"), 5, "c")
    assert category_field("c", "item", values, min_count=2).vocab == ("x", "y")
    # max_size keeps the most frequent; ties (w and z, once each) go to the smaller value.
    assert category_field("c", "item", values, max_size=3).vocab == ("w", "x", "y")
    # Ints; a whole-float column with NaN (pandas' int column with gaps) gives ints.
    g = category_field("g", "user", np.array([5.0, np.nan, 2.0, 5.0]), source="grade")
    assert (g.vocab, g.size, g.source) == ((2, 5), 3, "grade")
    assert all(type(v) is int for v in g.vocab)
    np.testing.assert_array_equal(field_ids(g, np.array([5, 2, 3])), [2, 1, 0])


def test_category_field_refuses_fractions_mixtures_and_empty_vocabularies() -> None:
    with pytest.raises(ValueError, match="bucket_field"):
        category_field("c", "item", [1.5, 2.0])
    with pytest.raises(ValueError, match="mix"):
        category_field("c", "item", np.array(["a", 3], dtype=object))
    with pytest.raises(ValueError, match="min_count=3"):
        category_field("c", "item", ["a", "b", "a"], min_count=3)
    with pytest.raises(ValueError, match="min_count"):
        category_field("c", "item", ["a"], min_count=0)


def test_field_rules_for_categories_are_checked() -> None:
    with pytest.raises(ValueError, match="len\\(vocab\\) \\+ 1"):
        Field("c", "item", 5, "category", vocab=("a", "b"))
    with pytest.raises(ValueError, match="mixes"):
        Field("c", "item", 3, "category", vocab=("a", 1))
    with pytest.raises(ValueError, match="repeats"):
        Field("c", "item", 3, "category", vocab=(1, 1))
    with pytest.raises(ValueError, match="ints or strings"):
        Field("c", "item", 3, "category", vocab=(1.5, 2))
    with pytest.raises(ValueError, match="category fields"):
        Field("c", "item", 3, "vocab", vocab=(1, 2))
    with pytest.raises(ValueError, match="group"):
        Field("c", "items", 3)  # type: ignore[arg-type]


def test_bucket_field_edges_are_quantiles_of_the_data() -> None:
    # 1..10, quartiles by linear interpolation: 1 + 9 * (0.25, 0.5, 0.75) = 3.25, 5.5, 7.75.
    f = bucket_field("b", "user", np.arange(1, 11), n_buckets=4)
    assert (f.kind, f.edges, f.size) == ("bucket", (3.25, 5.5, 7.75), 5)
    np.testing.assert_array_equal(
        field_ids(f, np.array([1.0, 3.25, 3.3, 7.75, 7.8, np.nan])), [1, 1, 2, 3, 4, 0]
    )
    # Repeated quantiles give one edge: 0, 0, 0, 0, 1 -> quartiles 0, 0, 0 -> edges (0,).
    assert bucket_field("b", "user", [0, 0, 0, 0, 1, np.nan], n_buckets=4).edges == (0.0,)
    assert bucket_field("b", "user", edges=[1, 10]).edges == (1.0, 10.0)
    with pytest.raises(ValueError, match="edges, or values and n_buckets"):
        bucket_field("b", "user", [1, 2], n_buckets=2, edges=[1])
    with pytest.raises(ValueError, match="n_buckets=1"):
        bucket_field("b", "user", [1, 2], n_buckets=1)
    with pytest.raises(ValueError, match="no finite value"):
        bucket_field("b", "user", [np.nan], n_buckets=2)


def test_hashed_field_hashes_ints_and_strings_stably() -> None:
    import zlib

    f = hashed_field("h", "item", 10)
    assert (f.kind, f.size) == ("hash", 10)
    np.testing.assert_array_equal(field_ids(f, np.array([0, 9, 10, -3])), [1, 1, 2, 0])
    raw = np.array(["abc", None], dtype=object)
    expected = 1 + zlib.crc32(b"abc") % 9
    np.testing.assert_array_equal(field_ids(f, raw), [expected, 0])
    np.testing.assert_array_equal(str_hash(np.array(["abc"])), [zlib.crc32(b"abc")])
    with pytest.raises(ValueError, match="size >= 2"):
        hashed_field("h", "item", 1)


def test_unknown_counts_per_field() -> None:
    spec = FeatureSpec(
        (
            Field("user_id", "user", 100, "hash"),
            Field("grade", "user", 3, "category", vocab=(1, 2)),
            Field("level", "user", 4),
        )
    )
    raw = {"user_id": np.array([1, 2, -1, 4]), "grade": np.array([1, 7, 2, 3]),
           "level": np.array([0, 3, 4, 1])}  # fmt: skip
    # user_id: one negative; grade: 7 and 3 outside the vocabulary; level: 0 and 4 (size 4).
    assert unknown_counts(spec, "user", raw) == {"user_id": 1, "grade": 2, "level": 2}


def test_extend_spec_appends_declared_fields_to_their_groups() -> None:
    brand = Field("brand", "item", 3, "category", vocab=("a", "b"))
    age = Field("age", "user", 4, "bucket", (18.0, 30.0))
    spec = extend_spec(DEFAULT_SPEC, [brand, age])
    names = spec.names()
    assert names[:9] == DEFAULT_SPEC.names("user") + ["age"]
    assert spec.names("item") == DEFAULT_SPEC.names("item") + ["brand"]
    assert spec.names("list") == DEFAULT_SPEC.names("list")
    assert spec.n_fields == DEFAULT_SPEC.n_fields + 2
    check_standard_layout(spec)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["fields"][-7]["vocab"] == ["a", "b"]
    users, items = side_table_columns(spec)
    assert users[-1] == "age" and items[-1] == "brand"
    with pytest.raises(ValueError, match="user or item"):
        extend_spec(DEFAULT_SPEC, [Field("x", "list", 3, "count")])
    with pytest.raises(ValueError, match="duplicate"):
        extend_spec(DEFAULT_SPEC, [Field("tag", "item", 3)])


def test_default_spec_dict_and_side_table_columns_are_unchanged() -> None:
    # Committed bundles hash DEFAULT_SPEC.to_dict(): no category key may appear in it.
    assert all("vocab" not in f for f in DEFAULT_SPEC.to_dict()["fields"])
    assert side_table_columns(DEFAULT_SPEC) == (USER_TABLE_COLUMNS, ITEM_TABLE_COLUMNS)


def test_check_standard_layout_names_the_offending_field() -> None:
    with pytest.raises(ValueError, match="'hour'.*after 'music_type'"):
        check_standard_layout(FeatureSpec(ITEM_FIELDS + CONTEXT_FIELDS))
    odd_list = Field("n_likes", "list", 5, "count", source="likes")
    with pytest.raises(ValueError, match="'n_likes' reads 'likes'"):
        check_standard_layout(FeatureSpec(CONTEXT_FIELDS + ITEM_FIELDS + (odd_list,)))
    with pytest.raises(ValueError, match="no item field"):
        check_standard_layout(FeatureSpec(USER_FIELDS + CONTEXT_FIELDS))
    check_standard_layout(DEFAULT_SPEC)
