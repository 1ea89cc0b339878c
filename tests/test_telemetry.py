"""Telemetry summaries and the text report, against hand-computed values."""

from __future__ import annotations

import json

import pytest

from virnucpro.utils.telemetry import TelemetryLogger, percentile, queue_state


def _logger(tmp_path):
    t = TelemetryLogger(tmp_path, run_id="rank0", target_sequences=1000, target_tokens_per_sequence=50)
    t.record_batch(
        0,
        {
            "num_sequences": 10,
            "num_tokens": 500,
            "gpu_util": None,
            "packing_efficiency": 0.8,
            "wait_time_ms": 1.0,
            "queue_state": "normal",
        },
    )
    t.record_batch(
        1,
        {
            "num_sequences": 30,
            "num_tokens": 1500,
            "gpu_util": 90.0,
            "packing_efficiency": 1.0,
            "wait_time_ms": 9.0,
            "queue_state": "starved",
            "checkpoint_write_ms": 12.0,
            "checkpoint_queue_depth": 2,
        },
    )
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


def test_finalize_writes_three_sections(tmp_path):
    path = _logger(tmp_path).finalize(elapsed_seconds=10.0)
    data = json.loads(path.read_text())
    assert set(data) == {"run_metadata", "summary", "per_batch_metrics"}
    assert path.name == "telemetry_rank0.json" and len(data["per_batch_metrics"]) == 2


def test_helpers():
    assert percentile([], 95) is None and percentile([5.0], 95) == 5.0
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert [queue_state(x) for x in (0.1, 2.0, 50.0)] == ["full", "normal", "starved"]


def _shard(tmp_path, rank, elapsed, seqs, util):
    t = TelemetryLogger(tmp_path, run_id=f"rank{rank}")
    t.set_run_metadata(model="m", rank=rank)
    t.record_batch(
        0,
        {
            "num_sequences": seqs,
            "num_tokens": seqs * 10,
            "gpu_util": util,
            "packing_efficiency": 0.9 + rank * 0.05,
            "wait_time_ms": 1.0,
        },
    )
    return t.finalize(elapsed_seconds=elapsed)


def test_aggregate_shards_hand_computed(tmp_path):
    from virnucpro.utils.telemetry import aggregate_telemetry_shards

    agg = aggregate_telemetry_shards([_shard(tmp_path, 0, 10.0, 100, 80.0), _shard(tmp_path, 1, 12.0, 140, None)])
    g = agg["global_summary"]
    assert g["total_sequences"] == 240 and g["total_tokens"] == 2400 and g["elapsed_seconds"] == 12.0
    assert g["avg_tokens_per_sec"] == 200.0 and g["num_shards"] == 2
    assert g["avg_gpu_util"] == 80.0 and g["avg_packing_efficiency"] == pytest.approx(0.925)
    assert [b["shard_rank"] for b in agg["per_batch_metrics"]] == [0, 1]
    one = aggregate_telemetry_shards([_shard(tmp_path, 0, 10.0, 100, 80.0)])["global_summary"]
    assert one["num_shards"] == 1 and one["avg_sequences_per_sec"] == 10.0


def test_scaling_efficiency():
    from virnucpro.utils.telemetry import calculate_scaling_efficiency

    r = calculate_scaling_efficiency(100.0, 52.0, 2)
    assert r["speedup"] == pytest.approx(100 / 52) and r["efficiency"] == pytest.approx(100 / 52 / 2 * 100)
    assert r["ideal_runtime"] == 50.0 and r["overhead_seconds"] == pytest.approx(2.0) and r["meets_perf03"]
    assert not calculate_scaling_efficiency(100.0, 60.0, 2)["meets_perf03"]
    for bad in ((0.0, 1.0, 2), (1.0, 0.0, 2), (1.0, 1.0, 0)):
        with pytest.raises(ValueError):
            calculate_scaling_efficiency(*bad)


def test_steady_state_excludes_larger_warmup_and_never_everything():
    from virnucpro.utils.telemetry import steady_state

    # 30 batches, 1 s each, 100 tokens; the first 5 are slow (2 s).
    batches, t = [], 0.0
    for i in range(30):
        dt = 2.0 if i < 5 else 1.0
        t += dt
        batches.append(
            {"timestamp": t, "batch_seconds": dt, "num_sequences": 1, "num_tokens": 100, "wait_time_ms": float(i)}
        )
    s = steady_state(batches, warmup_seconds=60.0, warmup_batches=3)  # whole run is 35 s: all in warm-up
    assert not s["warmup_excluded"] and s["total_batches"] == 30
    s = steady_state(batches, warmup_seconds=12.0, warmup_batches=3)  # 12 s covers 7 batches (2*5 + 2)
    assert s["warmup_excluded"] and s["excluded_batches"] == 7 and s["total_batches"] == 23
    assert s["avg_tokens_per_sec"] == pytest.approx(100.0)
    s = steady_state(batches, warmup_seconds=1.0, warmup_batches=10)
    assert s["excluded_batches"] == 10 and s["elapsed_seconds"] == pytest.approx(20.0)
    assert s["p95_wait_time_ms"] == pytest.approx(10 + 0.95 * 19)
    # no warm-up at all (warmup.batches: 0, a window shorter than the first batch): every batch, timed from the
    # first one's start (it measured nothing before: the last batch's timestamp minus itself)
    s = steady_state(batches, warmup_seconds=0.5, warmup_batches=0)
    assert s["excluded_batches"] == 0 and s["total_batches"] == 30 and s["elapsed_seconds"] == pytest.approx(35.0)
    assert s["avg_tokens_per_sec"] == pytest.approx(3000 / 35)
    assert steady_state([])["total_batches"] == 0


def test_write_json_atomic_replaces_whole_files_only(tmp_path):
    from virnucpro.utils.jsonfile import read_json, write_json_atomic

    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):  # fails half-way through serialising: the old file must survive intact
        write_json_atomic(path, {"a": 2, "b": object()})
    assert read_json(path) == {"a": 1}
    write_json_atomic(path, {"b": tmp_path}, default=str)
    assert read_json(path) == {"b": str(tmp_path)}


def test_the_driver_version_comes_from_nvml_before_nvidia_smi(monkeypatch):
    """nvidia-smi costs ~0.5 s a call on an H100 host, paid by every job; NVML answers in milliseconds."""
    import subprocess

    import nvitop

    from virnucpro.utils import hardware

    def no_subprocess(*a, **k):
        raise AssertionError("nvidia-smi called although NVML answered")

    monkeypatch.setattr(nvitop.Device, "driver_version", staticmethod(lambda: "580.159.04"))
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert hardware._driver_version() == "580.159.04"

    def nvml_missing():
        raise RuntimeError("NVML Shared Library Not Found")

    smi = subprocess.CompletedProcess([], 0, stdout="570.1\n", stderr="")
    monkeypatch.setattr(nvitop.Device, "driver_version", staticmethod(nvml_missing))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: smi)
    assert hardware._driver_version() == "570.1"
