"""Live progress (compact lines in a log, a rich bar on a terminal) and the GPU monitor's readings."""

from __future__ import annotations

import io

import pytest

from virnucpro.pipeline.progress_reporter import InferenceProgressReporter, create_progress_callback
from virnucpro.utils import gpu_monitor
from virnucpro.utils.gpu_monitor import NvitopMonitor
from virnucpro.utils.telemetry import TelemetryLogger


def test_non_tty_prints_compact_lines_at_the_interval():
    out = io.StringIO()
    with InferenceProgressReporter(100, stream=out, interval=3600) as rep:
        cb = create_progress_callback(rep)
        for k in range(10):
            cb(k, 10, {"num_tokens": 500, "packing_efficiency": 0.95, "gpu_util": 80.0 + k, "rank": k % 2})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the opening line and the final one: the interval suppressed the rest
    assert lines[0].startswith("[embedding] 0/100 seq (0.0%)")
    assert lines[-1].startswith("[embedding] 100/100 seq (100.0%)")
    assert "packing 95.0%" in lines[-1]
    assert "GPU 88.5%" in lines[-1]  # mean of the latest reading of each rank: (88 + 89) / 2
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_interval_zero_prints_every_update_and_no_duplicate_last_line():
    out = io.StringIO()
    with InferenceProgressReporter(4, stream=out, interval=0) as rep:
        for done in (1, 2, 3, 4):
            rep.update(done, {"num_tokens": 10})
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and "GPU N/A" in lines[-1] and "packing N/A" in lines[-1]
    assert "| ? tok/s |" in lines[1]  # one batch gives no rate yet: unknown, not "0 tok/s"


def test_tty_uses_a_rich_bar_and_records_telemetry(tmp_path):
    out = io.StringIO()
    telemetry = TelemetryLogger(tmp_path, run_id="t")
    with InferenceProgressReporter(20, telemetry=telemetry, stream=out, interactive=True) as rep:
        cb = create_progress_callback(rep)
        cb(0, 10, {"num_tokens": 100, "packing_efficiency": 0.5})
        cb(1, 10, {"num_tokens": 100, "packing_efficiency": 1.0})
    assert rep.progress is not None and rep.progress.tasks[0].completed == 20
    assert "tok/s" in out.getvalue() and "75.0% pack" in out.getvalue()
    assert [b["num_tokens"] for b in telemetry.batch_metrics] == [100, 100]


def test_monitor_without_a_gpu_reports_nothing_rather_than_zero():
    with NvitopMonitor([0], interval=0.01) as mon:
        assert not mon.available
        assert mon.sample() is None and mon.gpu_util() is None
        assert mon.identity() == []
    stats = mon.get_statistics()
    assert stats["avg_gpu_util"] is None and stats["num_samples"] == 0


class FakeDevice:
    def __init__(self, util, mem_bytes, temp, power_mw, physical_index, uuid):
        self._v = (util, mem_bytes, temp, power_mw)
        self.physical_index, self._uuid = physical_index, uuid

    def gpu_utilization(self):
        return self._v[0]

    def memory_used(self):
        return self._v[1]

    def temperature(self):
        return self._v[2]

    def power_usage(self):
        return self._v[3]

    def uuid(self):
        return self._uuid

    def name(self):
        return "Fake GPU"


def test_monitor_averages_its_own_devices_and_skips_na(monkeypatch):
    opened = []

    def fake_open(indices):
        opened.append(list(indices))
        return [FakeDevice(90, 2 * 1024**3, 60, 300_000, 3, "GPU-b"), FakeDevice("N/A", "N/A", 70, "N/A", 1, "GPU-a")]

    monkeypatch.setattr(gpu_monitor, "_open_cuda_devices", fake_open)
    mon = NvitopMonitor([0, 1], interval=0.01)
    assert opened == [[0, 1]]  # CUDA ordinals are handed to nvitop, which maps them by UUID
    reading = mon.sample()
    assert reading["gpu_util"] == 90 and reading["memory_used_gb"] == pytest.approx(2.0)
    assert reading["temperature_c"] == 65 and reading["power_w"] == pytest.approx(300.0)
    assert [d["uuid"] for d in mon.identity()] == ["GPU-b", "GPU-a"]
    with mon:
        import time

        deadline = time.monotonic() + 5
        while mon.get_statistics()["num_samples"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    stats = mon.get_statistics()
    assert stats["num_samples"] >= 3 and stats["avg_gpu_util"] == 90 and stats["max_memory_used_gb"] == 2.0
    # a batch that started after the last reading gets no utilisation (not the stale, maybe idle, value)
    last = mon.latest()["at"]
    assert mon.gpu_util(since=last) == 90 and mon.gpu_util(since=last + 1e-6) is None


def test_visible_devices_are_resolved_ahead_only_where_cuda_runs(monkeypatch):
    """The early start-up thread asks nvitop to map CUDA_VISIBLE_DEVICES (a helper process; cached by nvitop) so
    that opening the monitor later is free; without CUDA it does nothing, and a failure is not an error."""
    import nvitop
    import torch

    calls = []
    monkeypatch.setattr(nvitop.Device, "parse_cuda_visible_devices", staticmethod(lambda: calls.append(1) or [0]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu_monitor.resolve_visible_devices()
    assert calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu_monitor.resolve_visible_devices()
    assert calls == [1]

    def broken():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(nvitop.Device, "parse_cuda_visible_devices", staticmethod(broken))
    gpu_monitor.resolve_visible_devices()  # logged, not raised
