"""The drills' verdict, log accounting and bundles on made-up inputs (the drills themselves are
scripts: `python -m loadtest.drills all`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loadtest.drills import failed_mask, log_accounting, make_bundles, verdict
from loadtest.openloop import FEEDBACK, RANK, Level
from loadtest.procs import DEFAULT_BUNDLE, metric_value


def test_verdict_passes_only_on_zero_and_zero_and_every_check() -> None:
    v = verdict(0, 0, {"recovered": True})
    assert v["pass"] and v["failed_requests"] == 0 and v["lost_log_events"] == 0
    assert verdict(0, 0)["pass"]
    v = verdict(3, 0, {"recovered": True})
    assert not v["pass"] and "3 failed requests" in v["why"]
    v = verdict(0, 200)
    assert not v["pass"] and "200 lost log events" in v["why"]
    v = verdict(0, 0, {"recovered": True, "answers_200_then_409": False})
    assert not v["pass"] and v["why"] == "check answers_200_then_409 failed"
    assert not verdict(1, 1, {"x": False})["pass"]


def _level(status: list[int], kind: list[int], request_id: list[int], n_cands: int) -> Level:
    n = len(status)
    nan = np.full(n, np.nan)
    return Level(
        "/v1/rank",
        10.0,
        1.0,
        np.arange(n) / 10.0,
        np.array(kind, np.int8),
        np.where(np.array(kind) == RANK, n_cands, 0),
        nan,
        nan,
        nan,
        np.array(status),
        [""] * n,
        [""] * n,
        [""] * n,
        np.array(request_id, np.int64),
    )


def _write_ids(folder: Path, name: str, ids: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"request_id": pa.array(ids, pa.int64())}), folder / name)


def test_log_accounting_counts_lost_and_unacknowledged_rows(tmp_path: Path) -> None:
    # Four rank requests (200, 200, 200, 503), two feedbacks about request 11 (one skipped).
    lv = _level(
        status=[200, 200, 200, 503, 200, -1],
        kind=[RANK, RANK, RANK, RANK, FEEDBACK, FEEDBACK],
        request_id=[11, 12, 13, 0, 11, 0],
        n_cands=5,
    )
    assert failed_mask(lv).tolist() == [False, False, False, True, False, False]
    exp = tmp_path / "exposures"
    _write_ids(exp, "part-1.parquet", [11] * 5 + [12] * 3)  # request 12 lost 2 rows
    _write_ids(exp, "part-2.parquet", [99] * 5)  # a request the client never saw answered
    _write_ids(exp, ".part-3.parquet.tmp", [13] * 5)  # a temporary file is not the log
    _write_ids(tmp_path / "feedback", "part-1.parquet", [11])
    acc = log_accounting(lv, tmp_path)
    assert acc["rank_ok"] == 3 and acc["expected_exposure_rows"] == 15
    assert acc["exposure_rows"] == 13
    assert acc["lost_exposure_rows"] == 2 + 5
    assert acc["exposure_rows_of_unacknowledged_requests"] == 5
    assert (acc["feedback_ok"], acc["feedback_rows"], acc["lost_feedback_rows"]) == (1, 1, 0)
    assert acc["lost_log_events"] == 7


def test_log_accounting_of_an_empty_folder(tmp_path: Path) -> None:
    lv = _level(status=[200], kind=[RANK], request_id=[5], n_cands=200)
    acc = log_accounting(lv, tmp_path)
    assert acc["lost_exposure_rows"] == 200 and acc["exposure_rows"] == 0


def test_drill_bundles_good_loads_bad_is_refused(tmp_path: Path) -> None:
    from contract.bundle import BundleError, read_manifest

    good, bad, version = make_bundles(tmp_path, DEFAULT_BUNDLE)
    m = read_manifest(good)
    assert m.bundle_version == version and version.startswith("drill-")
    assert version.split("-")[-1] == read_manifest(DEFAULT_BUNDLE).bundle_version.split("-")[-1]
    with pytest.raises(BundleError, match="weights.bin: sha256"):
        read_manifest(bad)


def test_metric_value_sums_matching_samples() -> None:
    text = "\n".join(
        [
            "# HELP ranker_state_store_evictions_total states evicted",
            "# TYPE ranker_state_store_evictions_total counter",
            "ranker_state_store_evictions_total 12.0",
            "ranker_state_store_evictions_created 1.7e9",
            'ranker_state_store_errors_total{reason="timeout"} 3.0',
            'ranker_state_store_errors_total{reason="connection"} 4.0',
        ]
    )
    assert metric_value(text, "ranker_state_store_evictions_total") == 12.0
    assert metric_value(text, "ranker_state_store_errors_total") == 7.0
    assert metric_value(text, "ranker_state_store_errors_total", {"reason": "timeout"}) == 3.0
    assert metric_value(text, "ranker_missing_total") == 0.0
