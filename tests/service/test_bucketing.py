"""A/B bucketing: GrowthBook's hash v2 and range allocation, checked against the SDK itself."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import growthbook
import pytest

from service.bucketing import (
    N_BUCKETS,
    Arm,
    Experiment,
    bucket_of,
    fnv1a32,
    moved_share,
)

# GrowthBook's published hash cases (sdk-js test/cases.json, "hash", version 2):
# [seed, value, expected hash in [0, 1)].
GROWTHBOOK_V2_CASES = [
    ("seed", "a", 0.0505),
    ("seed", "b", 0.2696),
    ("foo", "ab", 0.2575),
    ("foo", "def", 0.2019),
    ("89123klj", "8952klfjas09ujkasdf", 0.124),
    ("90850943850283058242805", "123", 0.7516),
    ("()**(%$##$%#$#", '___)((*":&', 0.0128),
]

# Computed once with growthbook 4.0.0 (growthbook.core.gbhash(seed, id, 2) * 10000): the
# buckets users have today. A change here moves real users between arms.
PINNED_BUCKETS = [
    ("ranker-ab-1", "42", 314),
    ("ranker-ab-1", "1001", 337),
    ("ranker-ab-1", "user-7", 3910),
    ("feed-2024", "0", 3353),
    ("feed-2024", "123456789012", 5691),
    ("feed-2024", "ü-ユーザー", 2269),
]


def three_arms(a: float = 0.5, b: float = 0.3, c: float = 0.2, **kw) -> Experiment:
    return Experiment("exp-seed", (Arm("A", a), Arm("B", b), Arm("C", c)), **kw)


def binomial_ok(count: int, n: int, p: float, z: float = 5.0) -> bool:
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p))


def test_fnv1a32_matches_reference_values() -> None:
    # Landon Curt Noll's FNV-1a 32 reference vectors.
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


@pytest.mark.parametrize(("seed", "value", "expected"), GROWTHBOOK_V2_CASES)
def test_bucket_matches_growthbook_published_cases(seed: str, value: str, expected: float) -> None:
    assert bucket_of(seed, value) / N_BUCKETS == expected


@pytest.mark.parametrize(("seed", "user", "bucket"), PINNED_BUCKETS)
def test_bucket_of_a_user_is_pinned(seed: str, user: str, bucket: int) -> None:
    assert bucket_of(seed, user) == bucket


def test_buckets_are_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "from service.bucketing import bucket_of;"
        f"print([bucket_of(s, u) for s, u, _ in {PINNED_BUCKETS!r}])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == str([b for _, _, b in PINNED_BUCKETS])


def test_int_and_string_ids_hash_alike() -> None:
    assert bucket_of("s", 12345) == bucket_of("s", "12345")


def test_assignment_agrees_with_growthbook_sdk_on_1000_users() -> None:
    # Weights whose float running sum is inexact (0.1 + 0.2), so boundaries are exercised.
    weights = [0.1, 0.2, 0.7]
    exp = Experiment("agree-seed", tuple(Arm(f"v{i}", w) for i, w in enumerate(weights)))
    gb_exp = growthbook.Experiment(
        key="agree", variations=[0, 1, 2], weights=weights, seed="agree-seed", hashVersion=2
    )
    sdk = growthbook.GrowthBook(attributes={})
    mismatches = []
    for uid in range(1000):
        sdk.set_attributes({"id": str(uid)})
        res = sdk.run(gb_exp)
        ours = exp.assign(uid)
        if (res.variationId, res.bucket) != (int(ours.arm[1:]), ours.bucket / N_BUCKETS):
            mismatches.append((uid, res.variationId, res.bucket, ours))
    assert not mismatches


def test_float_boundary_bucket_goes_where_growthbook_puts_it() -> None:
    # 0.1 + 0.2 = 0.30000000000000004 > 0.3, so bucket 3000 still belongs to the second arm.
    exp = Experiment("s", (Arm("x", 0.1), Arm("y", 0.2), Arm("z", 0.7)))
    assert exp.arm_of_bucket(3000) == "y"
    assert exp.arm_of_bucket(3001) == "z"


def test_ranges_match_growthbook_get_bucket_ranges() -> None:
    from growthbook.core import getBucketRanges

    exp = three_arms(0.2, 0.3, 0.5, coverage=0.2)
    assert exp.ranges() == getBucketRanges(3, 0.2, [0.2, 0.3, 0.5])


def test_split_proportions_within_binomial_bound_on_100k_users() -> None:
    exp = three_arms(0.5, 0.3, 0.2)
    n = 100_000
    counts = {"A": 0, "B": 0, "C": 0}
    for uid in range(n):
        counts[exp.assign(uid).arm] += 1
    for arm, p in (("A", 0.5), ("B", 0.3), ("C", 0.2)):
        assert binomial_ok(counts[arm], n, p), (arm, counts)


def test_moving_weight_from_c_to_b_never_moves_a_users() -> None:
    old, new = three_arms(0.5, 0.3, 0.2), three_arms(0.5, 0.4, 0.1)
    n = 100_000
    moved = []
    for uid in range(n):
        a, b = old.assign(uid).arm, new.assign(uid).arm
        if a != b:
            moved.append((a, b))
    assert {pair for pair in moved} == {("C", "B")}
    # The ranges imply that buckets [8000, 9000) change owner: 10% of users.
    assert moved_share(old, new) == pytest.approx(0.1)
    assert binomial_ok(len(moved), n, 0.1)


def test_moved_users_are_exactly_those_in_buckets_that_changed_owner() -> None:
    old, new = three_arms(0.5, 0.3, 0.2), three_arms(0.4, 0.3, 0.3)
    # A shrinks, C grows: B's range shifts down by 0.1 and loses [0.7, 0.8) to C.
    assert moved_share(old, new) == pytest.approx(0.2)
    n = 20_000
    moved_pairs = set()
    moved = 0
    for uid in range(n):
        a_old, a_new = old.assign(uid), new.assign(uid)
        changed_owner = old.arm_of_bucket(a_old.bucket) != new.arm_of_bucket(a_old.bucket)
        assert (a_old.arm != a_new.arm) == changed_owner
        if a_old.arm != a_new.arm:
            moved += 1
            moved_pairs.add((a_old.arm, a_new.arm))
    assert moved_pairs == {("A", "B"), ("B", "C")}
    assert binomial_ok(moved, n, 0.2)


def test_with_weights_keeps_order_and_moves_only_changed_ranges() -> None:
    old = three_arms(0.5, 0.3, 0.2)
    new = old.with_weights({"B": 0.45, "C": 0.05})
    assert new.arm_names == ("A", "B", "C")
    assert new.ranges()[0] == old.ranges()[0]
    assert moved_share(old, new) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="'D'"):
        old.with_weights({"D": 0.1})


def test_qa_override_wins_over_the_hash() -> None:
    plain = three_arms()
    uid = next(u for u in range(100) if plain.assign(u).arm != "C")
    exp = three_arms(overrides={uid: "C"})
    got = exp.assign(uid)
    assert got.arm == "C"
    assert got.via == "override" and not got.in_experiment
    assert got.bucket == plain.assign(uid).bucket


def test_uncovered_users_get_the_first_arm_outside_the_experiment() -> None:
    exp = three_arms(coverage=0.5)
    n = 20_000
    uncovered = [a for a in (exp.assign(u) for u in range(n)) if a.via == "not_covered"]
    assert all(a.arm == "A" for a in uncovered)
    assert binomial_ok(len(uncovered), n, 0.5)


def test_bucket_is_in_range() -> None:
    exp = three_arms()
    assert all(0 <= exp.assign(u).bucket < N_BUCKETS for u in range(2000))


@pytest.mark.parametrize(
    ("build", "names"),
    [
        (lambda: three_arms(0.5, 0.3, 0.3), "sum to 1.1"),
        (lambda: three_arms(0.5, 0.6, -0.1), "-0.1"),
        (lambda: three_arms(overrides={"7": "Z"}), "'Z'"),
        (lambda: three_arms(coverage=1.5), "1.5"),
        (lambda: Experiment("", (Arm("A", 1.0),)), "seed"),
        (lambda: Experiment("s", (Arm("A", 0.5), Arm("A", 0.5))), "'A'"),
        (lambda: Arm("A", 1.0, exploration_rate=1.0), "exploration_rate 1.0"),
        (lambda: Arm("A", 1.0, exploration_top_k=0), "exploration_top_k 0"),
    ],
)
def test_bad_config_raises_value_error_naming_the_value(build, names: str) -> None:
    with pytest.raises(ValueError, match=names.replace(".", r"\.")):
        build()


def test_empty_user_id_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        three_arms().assign("")
