"""Telemetry summaries and the text report, against hand-computed values."""

from __future__ import annotations

import json

import pytest

from virnucpro.utils.telemetry import TelemetryLogger, generate_performance_report, percentile, queue_state


def _logger(tmp_path):
    t = TelemetryLogger(tmp_path, run_id="rank0", target_sequences=1000, target_tokens_per_sequence=50)
    t.record_batch(0, {"num_sequences": 10, "num_tokens": 500, "gpu_util": None, "packing_efficiency": 0.8,
                       "wait_time_ms": 1.0, "queue_state": "normal"})
    t.record_batch(1, {"num_sequences": 30, "num_tokens": 1500, "gpu_util": 90.0, "packing_efficiency": 1.0,
                       "wait_time_ms": 9.0, "queue_state": "starved", "checkpoint_write_ms": 12.0,
                       "checkpoint_queue_depth": 2})
    return t


def test_summary_values(tmp_path):
    s = _logger(tmp_path).get_summary(elapsed_seconds=10.0)
    assert s["total_sequences"] == 40 and s["total_tokens"] == 2000 and s["total_batches"] == 2
    assert s["avg_tokens_per_sec"] == 200.0 and s["avg_sequences_per_sec"] == 4.0
    assert s["avg_gpu_util"] == 90.0  # the null is skipped, not counted as 0
    assert s["avg_packing_efficiency"] == pytest.approx(0.9)
    assert s["pct_starved"] == 50.0
    assert s["sequences_per_hour"] == 14400.0
    assert s["projected_hours"] == pytest.approx(1000 / 14400)
    assert s["projected_hours_tokens"] == pytest.approx(1000 * 50 / 200 / 3600)
    assert s["avg_checkpoint_write_ms"] == 12.0 and s["max_checkpoint_queue_depth"] == 2
    assert s["p95_wait_time_ms"] == pytest.approx(1.0 + 0.95 * 8.0)


def test_zero_elapsed_and_no_gpu_give_nulls(tmp_path):
    t = TelemetryLogger(tmp_path, run_id="x")
    t.record_batch(0, {"num_sequences": 1, "num_tokens": 5, "gpu_util": None})
    s = t.get_summary(elapsed_seconds=0.0)
    assert s["avg_tokens_per_sec"] is None and s["projected_hours"] is None and s["avg_gpu_util"] is None


def test_finalize_writes_three_sections_and_report(tmp_path):
    path = _logger(tmp_path).finalize(elapsed_seconds=10.0)
    data = json.loads(path.read_text())
    assert set(data) == {"run_metadata", "summary", "per_batch_metrics"}
    assert path.name == "telemetry_rank0.json" and len(data["per_batch_metrics"]) == 2
    report = generate_performance_report(path, tmp_path / "r.txt", min_gpu_util=95.0)
    assert "PERF-01 projected < 10 h: PASS" in report
    assert "PERF-02 GPU utilisation >= 95 %: FAIL" in report
    assert "PERF-05 packing >= 0.90: PASS" in report
    assert (tmp_path / "r.txt").read_text() == report


def test_gpu_na_without_measurement(tmp_path):
    t = TelemetryLogger(tmp_path, run_id="cpu")
    t.record_batch(0, {"num_sequences": 1, "num_tokens": 5, "gpu_util": None, "packing_efficiency": 0.5,
                       "wait_time_ms": 0.1})
    report = generate_performance_report(t.finalize(elapsed_seconds=1.0))
    assert "PERF-02 GPU utilisation >= 70 %: N/A (no GPU utilisation was measured" in report
    assert "PERF-05 packing >= 0.90: FAIL" in report


def test_helpers():
    assert percentile([], 95) is None and percentile([5.0], 95) == 5.0
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert [queue_state(x) for x in (0.1, 2.0, 50.0)] == ["full", "normal", "starved"]
