"""Hardware and software facts recorded with every run, so a number can be traced to where it was measured."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from importlib import metadata

PACKAGES = ("virnucpro-perf", "torch", "fair-esm", "numpy", "h5py", "nvitop", "rich", "pandas", "jinja2")


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """Installed versions (None: missing), looked up once per process: each lookup scans sys.path."""
    return {name: _version(name) for name in names}


@cache
def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    """The NVIDIA driver's version, from NVML (milliseconds) or, without nvitop, `nvidia-smi` (~0.5 s a call on
    an H100 host: every job pays it)."""
    try:
        from nvitop import Device

        version = Device.driver_version()
        if isinstance(version, str) and version and version != "N/A":
            return version
    except Exception:  # nvitop or NVML missing: ask nvidia-smi
        pass
    try:
        res = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = res.stdout.strip().splitlines()
    return lines[0].strip() if res.returncode == 0 and lines else None


def capture_hardware_info() -> dict:
    """GPU models and memory (torch's `total_memory`), CUDA, driver, CPU and Python; GPU fields empty without CUDA.

    Read once per process (NVML's start and the driver query cost ~0.5 s; a job reads them early, on the thread
    that starts the device while the input is read)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in _hardware_info().items()}


@cache
def _hardware_info() -> dict:
    import torch

    info = {
        "gpu_count": 0,
        "gpu_models": [],
        "gpu_memory_gb": [],
        "cuda_version": torch.version.cuda,
        "pytorch_version": torch.__version__,
        "driver_version": None,
        "cpu_model": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python_version": platform.python_version(),
        "hostname": platform.node(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        info["gpu_count"] = n
        info["gpu_models"] = [torch.cuda.get_device_name(i) for i in range(n)]
        info["gpu_memory_gb"] = [round(torch.cuda.get_device_properties(i).total_memory / 1024**3, 2) for i in range(n)]
        info["driver_version"] = _driver_version()
    return info


def matmul_tflops(device, dtype=None, n: int | None = None, reps: int | None = None) -> float:
    """Measured dense matmul rate on `device` in `dtype` (median of `reps` n x n products, after warm-up): the
    ceiling a model's FLOP rate is compared with. 8192 x 10 on a GPU (fills an H100, ~30 ms), 512 x 5 on a
    CPU (a few ms: every rank measures it at start-up)."""
    import statistics
    import time

    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 512)
    reps = reps or (10 if cuda else 5)
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.float32, generator=gen)  # random, never zeros
    b = torch.randn(n, n, device=device, dtype=torch.float32, generator=gen)
    if dtype == torch.float8_e4m3fn:  # what --precision fp8 runs: row-wise scaled E4M3 products, bf16 out
        from virnucpro.models.fp8 import fp8_linear, quantise_rows, quantise_weight

        (a8, sa), (b8, sb) = quantise_rows(a), quantise_weight(b)

        def product():
            return fp8_linear(a8, sa, b8, sb, None)
    else:
        a, b = a.to(dtype), b.to(dtype)

        def product():
            return a @ b

    times = []
    for i in range(reps + 3):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            product()
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1000
        else:
            t0 = time.perf_counter()
            product()
            dt = time.perf_counter() - t0
        if i >= 3:
            times.append(dt)
    return 2 * n**3 / statistics.median(times) / 1e12
