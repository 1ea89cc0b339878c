"""What a job of the target size costs, from a run's measured phases, and how that scales over GPUs and nodes.

A production run of n sequences measured its phases (status.json `summary.phases`, seconds summing to the process
wall time; names and their classes in utils/phases.py). A job of N sequences is then projected as
    fixed (python_startup, load_weights, compile, warmup, ... and any phase not known to grow, e.g. rank_wait,
           other; plus the loop's ramp beyond its steady rate: once per job)
    + (read_input + prepare_output + finalize) x N/n + N / steady rate (the loop)
because users size Slurm allocations by the whole job, not by the loop. A figure that was not measured gives
None with a reason, never 0.
"""

from __future__ import annotations

import math
from typing import Any

from virnucpro.utils.phases import PER_SEQUENCE_PHASES, fixed_part
from virnucpro.defaults import TARGET_TOKENS_PER_SEQUENCE

LOOP_PHASE = "loop"
#: Phases that grow linearly with the sequences (rows) of the job; the loop is projected from the steady rate.
#: Every other phase (utils/phases.py FIXED_PHASES and any unknown one) is paid once per job.
LINEAR_PHASES = tuple(p for p in PER_SEQUENCE_PHASES if p != LOOP_PHASE)
#: GPUs per job and independent jobs (nodes, each on a shard of the input) of the scaling model.
MODEL_GPUS_PER_JOB = (1, 2, 4, 8)
MODEL_JOBS = (1, 2, 4, 8)
NO_PHASES = "no phases in the run's status.json (made before phases were measured): the loop alone is projected"


def valid_phases(phases: Any) -> dict[str, float] | None:
    """The phases as {name: seconds} when they are usable (numbers >= 0, a loop phase), else None."""
    if not isinstance(phases, dict) or LOOP_PHASE not in phases:
        return None
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in phases.values()
    ):
        return None
    return {k: float(v) for k, v in phases.items()}


def split_phases(phases: dict[str, float], n: int, target: int, steady_rate: float) -> dict[str, Any]:
    """Fixed seconds (per phase) and the linear phases scaled from n to `target` sequences. The measured loop's
    time beyond n / steady rate (its ramp: the warm-up batches) is paid once per job too (`loop_ramp`)."""
    fixed = fixed_part(phases)
    fixed["loop_ramp"] = max(0.0, phases[LOOP_PHASE] - n / steady_rate)
    scaled = {k: phases.get(k, 0.0) * target / n for k in LINEAR_PHASES}
    return {
        "fixed": fixed,
        "fixed_seconds": sum(fixed.values()),
        "scaled": scaled,
        "read_input_seconds": scaled["read_input"],
        "finalize_seconds": sum(v for k, v in scaled.items() if k != "read_input"),
    }


def projection(
    result: dict, target_sequences: int, tokens_per_sequence: float = TARGET_TOKENS_PER_SEQUENCE
) -> dict[str, Any]:
    """`production[*].projection` of one run: loop_hours and job_hours at `target_sequences` (+ components).

    The sequence-based figures use the run's own sequences/s; the `_tokens` ones its tokens/s and the target's
    tokens per sequence (fair when the benchmark's lengths differ from the production input's)."""
    out: dict[str, Any] = {
        "target_sequences": int(target_sequences),
        "tokens_per_sequence": tokens_per_sequence,
        "loop_hours": None,
        "loop_hours_tokens": None,
        "job_hours": None,
        "job_hours_tokens": None,
        "components": None,
        "na_reason": None,
    }
    steady = result.get("steady") if result.get("status") == "ok" else None
    if not steady or not steady.get("avg_sequences_per_sec"):
        out["na_reason"] = "no steady-state rate (the run did not finish)"
        return out
    loop_s = target_sequences / steady["avg_sequences_per_sec"]
    loop_tok_s = target_sequences * tokens_per_sequence / steady["avg_tokens_per_sec"]
    out.update(loop_hours=loop_s / 3600, loop_hours_tokens=loop_tok_s / 3600)
    summary = result.get("summary") or {}
    phases = valid_phases(result.get("phases") or summary.get("phases"))
    n = summary.get("total_sequences") or 0
    if phases is None or n <= 0 or summary.get("resumed_sequences"):
        out["na_reason"] = (
            NO_PHASES
            if phases is None
            else "the run embedded no sequences"
            if n <= 0
            else "a resumed run: its phases cover only part of the work"
        )
        return out
    parts = split_phases(phases, n, target_sequences, steady["avg_sequences_per_sec"])
    rest = parts["fixed_seconds"] + parts["read_input_seconds"] + parts["finalize_seconds"]
    out["components"] = {
        **parts,
        "loop_seconds": loop_s,
        "loop_seconds_tokens": loop_tok_s,
        "measured_sequences": n,
        "measured_phases": phases,
        "measured_wall_seconds": result.get("job_wall_seconds") or summary.get("job_wall_seconds"),
    }
    out.update(job_hours=(rest + loop_s) / 3600, job_hours_tokens=(rest + loop_tok_s) / 3600)
    return out


def model_job_hours(c: dict, per_gpu_rate: float, target: int, gpus_per_job: int, jobs: int) -> float:
    """The model: `jobs` independent jobs, each on target/jobs sequences with `gpus_per_job` GPUs; the loop is
    ideally data-parallel, read_input and finalize are serial within a job, fixed costs are paid once per job
    (ranks load in parallel). `c` holds components at `target` on one job."""
    serial = (c["read_input_seconds"] + c["finalize_seconds"]) / jobs
    loop = target / per_gpu_rate / (gpus_per_job * jobs)
    return (c["fixed_seconds"] + serial + loop) / 3600


def jobs_needed(c: dict, per_gpu_rate: float, target: int, gpus_per_job: int, max_hours: float) -> int | None:
    """Fewest independent jobs of `gpus_per_job` GPUs finishing within `max_hours`; None if no count can."""
    budget = max_hours * 3600 - c["fixed_seconds"]
    if budget <= 0:
        return None
    work = c["read_input_seconds"] + c["finalize_seconds"] + target / per_gpu_rate / gpus_per_job
    return max(1, math.ceil(work / budget - 1e-12))
