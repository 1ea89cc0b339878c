"""`results/embed/report.html` and `summary.json`: how the `embed` target's shard jobs went.

Per shard: sequences, tokens, wall time over all its attempts (a cancelled or preempted attempt costs GPU time
too), the loop's rate, Slurm job ids; stragglers (wall over 1.25x the median); total GPU-hours; and, when the
target ran the best configuration, the projection that configuration's measured rate made before the run
against what the run took; and what splitting cost: each shard job pays start-up, weights, compile and warm-up
again, so N shards spend about (N - 1) x that fixed cost more GPU time than one job of the same input (measured
on an H100, 2026-12-07: ~19 s a job, +11.8 % for 4 shards of 250,000 reads; after the start-up work ~3.5 s a
job, +2.0 %, docs/benchmarks/2026-12-07-h100-issue15-rerun), and the report says how large a shard must be to
keep it under `OVERHEAD_LIMIT`.
"""

from __future__ import annotations

import json
import math
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from virnucpro.pipeline.shards import read_attempts
from virnucpro.report.render import _environment, git_commit
from virnucpro.utils.jsonfile import read_json
from virnucpro.utils.phases import fixed_part

STRAGGLER_FACTOR = 1.25
#: The extra GPU time over one job of the same input that sharding may cost before the report advises larger shards.
OVERHEAD_LIMIT = 0.05


def _this_result(attempts: list[dict]) -> tuple[list[dict], list[dict]]:
    """The attempts behind the current result (those for the shard content and settings of the last completed
    attempt) and those of earlier inputs or settings (a log from before attempts carried keys: all current)."""
    done = [a for a in attempts if a.get("exit_code") == 0]
    key = done[-1].get("key") if done else None
    if key is None:
        return attempts, []
    return [a for a in attempts if a.get("key") == key], [a for a in attempts if a.get("key") != key]


def _hours(attempts: list[dict], gpus: int) -> float:
    return sum(a.get("wall_seconds") or 0.0 for a in attempts) * gpus / 3600


def shard_row(entry: dict, directory: Path, gpus: int) -> dict[str, Any]:
    """One shard's figures from its status.json (the completing attempt) and attempts.jsonl: the attempts for
    this result (their wall time, GPU-hours, stragglers), and the GPU-hours of earlier inputs' or settings'."""
    status = read_json(directory / "status.json", "shard status.json", keys=("status",))
    summary = status.get("summary") or {}
    attempts, earlier = _this_result(read_attempts(directory))
    timed = [a["wall_seconds"] for a in attempts if a.get("wall_seconds") is not None]
    wall = sum(timed) if timed else summary.get("job_wall_seconds")
    ids = sorted({a["slurm_job_id"] for a in attempts if a.get("slurm_job_id")})
    phases = summary.get("phases") or {}
    fixed = fixed_part(phases)
    return {
        "index": entry["index"],
        "sequences": entry["sequences"],
        "tokens": entry["tokens"],
        "attempts": len(attempts) or 1,
        "untimed_attempts": len(attempts) - len(timed),
        "wall_seconds": wall,
        "gpu_hours": wall * gpus / 3600 if wall is not None else None,
        "earlier_attempts": len(earlier),
        "earlier_gpu_hours": _hours(earlier, gpus),
        "loop_seconds": phases.get("loop"),
        "fixed_phases": fixed,  # the completing attempt's phases that any job pays whatever its size
        "fixed_seconds": sum(fixed.values()) if "loop" in phases else None,
        "job_seconds": sum(phases.values()) if "loop" in phases else None,  # the completing attempt's process
        "tokens_per_sec": summary.get("avg_tokens_per_sec"),
        "resumed_sequences": summary.get("resumed_sequences") or 0,
        "slurm_job_ids": ids,
        "started": min((a["started"] for a in attempts), default=None),
        "ended": max((a["started"] + a["wall_seconds"] for a in attempts if a.get("wall_seconds")), default=None),
    }


def projection(best: dict | None, total_tokens: int, shards: list[dict], gpus: int) -> dict[str, Any]:
    """What the best configuration's measured rate projected for this input, against what the run took."""
    if best is None:
        return {
            "available": False,
            "reason": "embed.use_best is false: the shards ran the engine section's settings, which no measurement "
            "of this target rated; with embed.use_best: true the target depends on the sweeps and the best "
            "configuration's measured rate gives the projection",
        }
    rate = (best.get("steady") or {}).get("avg_tokens_per_sec")
    if not rate:
        return {"available": False, "reason": "results/sweeps/best.json has no measured rate (its point failed?)"}
    measured = sum(s["gpu_hours"] for s in shards if s["gpu_hours"] is not None)
    loop = sum((s["loop_seconds"] or 0) * gpus for s in shards) / 3600
    projected = total_tokens / rate / 3600
    return {
        "available": True,
        "rate_tokens_per_sec": rate,
        "point": best.get("label"),
        "projected_gpu_hours": projected,
        "measured_gpu_hours": measured,
        "measured_loop_gpu_hours": loop,
        "ratio": measured / projected if projected else None,
        "note": "the projection is the loop alone at the best point's median steady rate on one GPU (sweep "
        "workload, tokens); each shard job adds its fixed costs (start-up, weights, compile, warm-up), and a "
        "resumed shard's loop covers only what was left",
    }


def job_overhead(shards: list[dict]) -> dict[str, Any]:
    """What splitting the input into these n shard jobs cost over one job of the same input, from their phases.

    F = the median shard's fixed seconds (every phase that does not grow with the input: imports, weights,
    compile, warm-up, ..., as `report.projection` counts them); one job would have paid F once instead of n
    times, so the extra is (n - 1) F over the shards' job seconds less that. A resumed shard's completing attempt
    embedded only what its checkpoints lacked: its loop is scaled to the whole shard. Shards whose loops last at
    least F / limit seconds keep the extra under the limit however many there are ((k - 1) F / (k L + F) <
    limit): at the shards' loop rate, `min_sequences_per_shard`. Estimates (one GPU's seconds; a job of g GPUs
    pays F on each, so the ratio holds), N/A unless every shard has phases and a loop.
    """
    timed = [
        s
        for s in shards
        if s.get("fixed_seconds") is not None
        and s.get("loop_seconds")
        and s.get("job_seconds") is not None
        and s["sequences"] > (s.get("resumed_sequences") or 0)
    ]
    if not shards or len(timed) < len(shards):
        return {
            "available": False,
            "reason": f"{len(shards) - len(timed)} of {len(shards)} shards have no phases in their status.json "
            "(made by an older version?) or embedded nothing in their completing attempt",
        }
    n, fixed = len(shards), statistics.median(s["fixed_seconds"] for s in shards)
    loops = [s["loop_seconds"] * s["sequences"] / (s["sequences"] - (s.get("resumed_sequences") or 0)) for s in shards]
    job_seconds = sum(s["job_seconds"] - s["loop_seconds"] + loop for s, loop in zip(shards, loops))
    one_job = job_seconds - (n - 1) * fixed
    rate = sum(s["sequences"] for s in shards) / sum(loops)
    names = sorted({k for s in shards for k in s["fixed_phases"]})
    by_phase = {k: statistics.median(s["fixed_phases"].get(k, 0.0) for s in shards) for k in names}
    extra = (n - 1) * fixed / one_job if one_job > 0 else None
    minimum = max(1, math.ceil(fixed / OVERHEAD_LIMIT * rate))
    return {
        "available": True,
        "median_fixed_seconds": fixed,
        "fixed_by_phase": {k: v for k, v in sorted(by_phase.items(), key=lambda kv: -kv[1]) if v >= 0.05},
        "extra_vs_one_job": extra,
        "limit": OVERHEAD_LIMIT,
        "within_limit": extra is not None and extra <= OVERHEAD_LIMIT,
        "sequences_per_loop_second": rate,
        "min_sequences_per_shard": minimum,
        "advice": (
            None
            if extra is None or extra <= OVERHEAD_LIMIT
            else f"Each shard job spends ~{fixed:.1f} s outside its loop, so {n} shards cost ~{100 * extra:.1f} % "
            f"more GPU time than one job; shards of >= {minimum:,} sequences (embed.shards <= "
            f"{max(1, sum(s['sequences'] for s in shards) // minimum)} for this input) keep it under "
            f"{100 * OVERHEAD_LIMIT:.0f} % -- more shards still help when GPUs or time limits are the constraint"
        ),
    }


#: What the gathered file says it holds, shown at the top of the report.
MODEL_ATTRS = ("model", "weights", "precision", "output_dtype", "long_sequences", "truncated_count", "chunked_count")


def ran_on(shard_dirs: list[Path]) -> dict[str, Any]:
    """Where the shard jobs ran, from their rank-0 telemetry: devices, GPU models, hosts (empty where unread)."""
    devices, models, hosts = set(), set(), set()
    for d in shard_dirs:
        path = Path(d) / "telemetry" / "telemetry_rank0.json"
        try:
            meta = json.loads(path.read_text())["run_metadata"]
        except (OSError, ValueError, KeyError):
            continue
        hardware = meta.get("hardware") or {}
        devices.add(str(meta.get("device")).split(":")[0])
        models.update(hardware.get("gpu_models") or [])
        hosts.add(hardware.get("hostname") or "?")
    return {"devices": sorted(devices), "gpu_models": sorted(models), "hosts": sorted(hosts)}


def gathered_model(path: Path) -> dict[str, Any]:
    """The gathered file's model attributes (`weights` is `random` for random-weight embeddings)."""
    import h5py

    from virnucpro.pipeline.gather import attr_value

    with h5py.File(path, "r") as f:
        return {k: attr_value(f.attrs[k]) for k in MODEL_ATTRS if k in f.attrs}


def build(manifest_path: Path, shard_dirs: list[Path], gathered: Path, best_path: Path | None, gpus: int) -> dict:
    """The report's context, which is also summary.json."""
    manifest = read_json(manifest_path, "shard manifest", keys=("shards", "total_tokens"))
    shards = [shard_row(e, Path(d), gpus) for e, d in zip(manifest["shards"], shard_dirs)]
    walls = [s["wall_seconds"] for s in shards if s["wall_seconds"] is not None]
    median = statistics.median(walls) if walls else None
    for s in shards:
        s["straggler"] = bool(median and s["wall_seconds"] and s["wall_seconds"] > STRAGGLER_FACTOR * median)
    starts = [s["started"] for s in shards if s["started"]]
    ends = [s["ended"] for s in shards if s["ended"]]
    best = read_json(best_path, "best-config JSON", keys=("params",)) if best_path else None
    where = ran_on(shard_dirs)
    return {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(Path(__file__).parent),
        "input": {k: manifest.get(k) for k in ("input", "input_sha256", "num_sequences", "total_tokens")},
        "gathered": str(gathered),
        "model": gathered_model(gathered),
        "gpus_per_job": gpus,
        "ran_on": where,
        # jobs on CPUs (the local default) hold no GPU: the same sums, named for what they count
        "hours_unit": "GPU-hours" if "cuda" in where["devices"] or not where["devices"] else "CPU job-hours",
        "shards": shards,
        "median_wall_seconds": median,
        "stragglers": [s["index"] for s in shards if s["straggler"]],
        "total_gpu_hours": sum(s["gpu_hours"] for s in shards if s["gpu_hours"] is not None),
        "earlier_gpu_hours": sum(s["earlier_gpu_hours"] for s in shards),  # for other inputs or settings
        "span_seconds": max(ends) - min(starts) if starts and ends else None,
        "projection": projection(best, manifest["total_tokens"], shards, gpus),
        "overhead": job_overhead(shards),
        "settings": (best or {}).get("params"),
        "slurm_job_ids": sorted({i for s in shards for i in s["slurm_job_ids"]}),
    }


def write(context: dict, html: Path, summary: Path) -> None:
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(_environment().get_template("embed_report.html.j2").render(**context))
    summary.write_text(json.dumps(context, indent=2, default=str))
