"""Where a job's wall time goes: seconds per phase, from the process's own start to its end.

The throughput loop is only part of a job: interpreter start and imports, reading the FASTA, hashing and loading
the weights, compiling, warming up and finishing the output are paid by every job, and some grow with the input.
A projection for 6M sequences needs each of them, measured the same way for 1 and N ranks.

Phase names (job level, in `status.json` `phases`): `python_startup` (process start to our first line, imports
included), `read_input`, `resolve_weights` (checkpoint hash / architecture), `prepare_output` (the preallocated
output file), then the critical rank's `rank_startup` (spawn + imports of a rank process; in-process: what is left of
starting the device, begun on a thread while the input was read),
`load_weights`, `compile` (the fused kernels chosen; a torch.compile'd one compiles at its first call, in
`warmup`), `warmup`, `matmul_probe`, `monitor_setup` (NVML and hardware facts), `loop`,
`rank_teardown`, then `rank_wait` (ranks that
finished before the last one leave nothing to wait for; the parent waits for the slowest), `finalize`, and
`other` (what no phase covers; small). They sum to the process's wall time up to the status write.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

#: Paid once per job whatever its size (the projection's fixed cost).
FIXED_PHASES = (
    "python_startup",
    "resolve_weights",
    "rank_startup",
    "load_weights",
    "compile",
    "warmup",
    "matmul_probe",
    "monitor_setup",
    "rank_teardown",
)
#: Grow with the number of sequences (the projection scales them by N / n).
PER_SEQUENCE_PHASES = ("read_input", "prepare_output", "loop", "finalize")


def fixed_part(phases: dict[str, float]) -> dict[str, float]:
    """The phases a job pays whatever its size: every one that does not grow with the sequences (`FIXED_PHASES`
    and any other, e.g. rank_wait, other)."""
    return {k: v for k, v in phases.items() if k not in PER_SEQUENCE_PHASES}


def process_start_epoch() -> float:
    """When this process started (epoch seconds), so interpreter start-up and imports are counted too.

    From /proc: now minus (uptime - the process's start in clock ticks since boot), to ~10 ms. psutil's
    create_time() adds those ticks to the boot time in whole seconds, so it can be off by up to a second.
    """
    try:
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: starttime
        return time.time() - (uptime - started_after_boot)
    except (OSError, ValueError, IndexError):  # no /proc (not Linux): count from the first call instead
        return time.time()


class PhaseClock:
    """Accumulates seconds per named phase; `as_dict()` adds `other` so the phases sum to the wall time."""

    def __init__(self, start_epoch: float | None = None, first_phase: str | None = None):
        self.start = start_epoch if start_epoch is not None else time.time()
        self.phases: dict[str, float] = {}
        if first_phase:  # the time before this clock existed (e.g. interpreter start-up)
            self.phases[first_phase] = max(0.0, time.time() - self.start)

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + max(0.0, seconds)

    def wall(self) -> float:
        return time.time() - self.start

    def as_dict(self) -> dict[str, float]:
        wall = self.wall()
        out = {k: round(v, 4) for k, v in self.phases.items()}
        out["other"] = round(max(0.0, wall - sum(self.phases.values())), 4)
        return out
