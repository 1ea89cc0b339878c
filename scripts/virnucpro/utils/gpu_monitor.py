"""Background GPU sampling with nvitop, for the devices THIS process uses.

NVML numbers GPUs physically and ignores `CUDA_VISIBLE_DEVICES`; nvitop's `CudaDevice` maps a CUDA ordinal
(what torch calls `cuda:0`) to its physical GPU by UUID, so rank 1 of a Slurm job with
`CUDA_VISIBLE_DEVICES=2,3` samples physical GPU 3, not GPU 0 (the upstream bug). Without NVML (no GPU, no
driver) the monitor is simply unavailable: every reading is None and the report says N/A.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from typing import Any

logger = logging.getLogger("virnucpro.utils.gpu_monitor")

FIELDS = ("gpu_util", "memory_used_gb", "temperature_c", "power_w")


def _number(value: Any) -> float | None:
    """nvitop returns the string 'N/A' (its NA) for what NVML cannot read; keep numbers only."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _open_cuda_devices(cuda_indices: list[int]) -> list:
    import torch

    if not torch.cuda.is_available():  # also keeps nvitop from printing its "NVML not found" banner
        return []
    try:
        from nvitop import CudaDevice, Device
    except ImportError:
        return []
    try:
        if Device.count() == 0:
            return []
        return [CudaDevice(i) for i in cuda_indices]
    except Exception as exc:  # NVML missing or the ordinal is not visible: unmeasurable, not fatal
        logger.info("GPU monitoring unavailable: %s", exc)
        return []


def resolve_visible_devices() -> None:
    """Map `CUDA_VISIBLE_DEVICES` to NVML devices now: nvitop starts a helper Python process for it (0.3-0.7 s)
    and caches the answer, so a monitor opened later (`_open_cuda_devices`) finds it ready. Best effort."""
    import torch

    if not torch.cuda.is_available():
        return
    try:
        from nvitop import Device

        Device.parse_cuda_visible_devices()
    except Exception as exc:  # no nvitop or NVML: the monitor will say so when it is opened
        logger.debug("CUDA_VISIBLE_DEVICES not resolved early: %s", exc)


class NvitopMonitor:
    """Samples utilisation, memory, temperature and power every `interval` seconds on a daemon thread.

    `cuda_indices` are CUDA ordinals as this process sees them (after `CUDA_VISIBLE_DEVICES`).
    """

    def __init__(self, cuda_indices: list[int] | None = None, interval: float = 1.0, keep_samples: bool = True):
        self.cuda_indices = list(cuda_indices) if cuda_indices is not None else [0]
        self.interval = interval
        self.keep_samples = keep_samples
        self.devices = _open_cuda_devices(self.cuda_indices)
        self.samples: list[dict] = []
        self._latest: dict | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()

    @property
    def available(self) -> bool:
        return bool(self.devices)

    def identity(self) -> list[dict]:
        """Which physical GPUs are sampled (UUID, NVML index, name), for the telemetry's provenance."""
        out = []
        for cuda_index, dev in zip(self.cuda_indices, self.devices):
            out.append(
                {
                    "cuda_index": cuda_index,
                    "nvml_index": _number(dev.physical_index),
                    "uuid": dev.uuid(),
                    "name": dev.name(),
                }
            )
        return out

    def sample(self) -> dict | None:
        """One reading, averaged over this process's devices; None when nothing can be measured."""
        if not self.devices:
            return None
        per_device = []
        for dev in self.devices:
            used = _number(dev.memory_used())
            power = _number(dev.power_usage())  # milliwatts
            per_device.append(
                {
                    "gpu_util": _number(dev.gpu_utilization()),
                    "memory_used_gb": used / 1024**3 if used is not None else None,
                    "temperature_c": _number(dev.temperature()),
                    "power_w": power / 1000 if power is not None else None,
                }
            )
        now = time.perf_counter()
        reading: dict[str, Any] = {"t": now - self._t0, "at": now}
        for key in FIELDS:
            values = [d[key] for d in per_device if d[key] is not None]
            reading[key] = statistics.fmean(values) if values else None
        return reading

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reading = self.sample()
            except Exception as exc:  # a driver hiccup must never kill the run
                logger.debug("GPU sample failed: %s", exc)
                reading = None
            if reading is not None:
                with self._lock:
                    self._latest = reading
                    if self.keep_samples:
                        self.samples.append(reading)
            self._stop.wait(self.interval)

    def start(self) -> "NvitopMonitor":
        if self.available and self._thread is None:
            self._t0 = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name="nvitop-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "NvitopMonitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def latest(self) -> dict | None:
        with self._lock:
            return dict(self._latest) if self._latest else None

    def gpu_util(self, since: float | None = None) -> float | None:
        """The latest utilisation; None when there is none, or when it was read before `since` (a
        `time.perf_counter()` value): a reading from before a batch started says nothing about that batch."""
        reading = self.latest()
        if not reading or (since is not None and reading["at"] < since):
            return None
        return reading["gpu_util"]

    def get_statistics(self) -> dict[str, float | None]:
        """Mean of each field over the samples so far (None where nothing was measured)."""
        with self._lock:
            samples = list(self.samples)
        stats: dict[str, float | None] = {}
        for key in FIELDS:
            values = [s[key] for s in samples if s.get(key) is not None]
            stats[f"avg_{key}"] = statistics.fmean(values) if values else None
        stats["max_memory_used_gb"] = max(
            (s["memory_used_gb"] for s in samples if s.get("memory_used_gb") is not None), default=None
        )
        stats["num_samples"] = len(samples)
        return stats
