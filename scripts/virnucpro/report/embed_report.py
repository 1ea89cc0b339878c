"""`results/embed/report.html` and `summary.json`: how the `embed` target's shard jobs went.

Per shard: sequences, tokens, wall time over all its attempts (a cancelled or preempted attempt costs GPU time
too), the loop's rate, Slurm job ids; stragglers (wall over 1.25x the median); total GPU-hours; and, when the
target ran the best configuration, the projection that configuration's measured rate made before the run
against what the run took.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from virnucpro.pipeline.shards import read_attempts
from virnucpro.report.render import _environment, git_commit
from virnucpro.utils.jsonfile import read_json

STRAGGLER_FACTOR = 1.25


def shard_row(entry: dict, directory: Path, gpus: int) -> dict[str, Any]:
    """One shard's figures from its status.json (the completing attempt) and attempts.jsonl (every attempt)."""
    status = read_json(directory / "status.json", "shard status.json", keys=("status",))
    summary = status.get("summary") or {}
    attempts = read_attempts(directory)
    timed = [a["wall_seconds"] for a in attempts if a.get("wall_seconds") is not None]
    wall = sum(timed) if timed else summary.get("job_wall_seconds")
    ids = sorted({a["slurm_job_id"] for a in attempts if a.get("slurm_job_id")})
    return {
        "index": entry["index"],
        "sequences": entry["sequences"],
        "tokens": entry["tokens"],
        "attempts": len(attempts) or 1,
        "untimed_attempts": len(attempts) - len(timed),
        "wall_seconds": wall,
        "gpu_hours": wall * gpus / 3600 if wall is not None else None,
        "loop_seconds": (summary.get("phases") or {}).get("loop"),
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


#: What the gathered file says it holds, shown at the top of the report.
MODEL_ATTRS = ("model", "weights", "precision", "output_dtype", "long_sequences", "truncated_count", "chunked_count")


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
    return {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(Path(__file__).parent),
        "input": {k: manifest.get(k) for k in ("input", "input_sha256", "num_sequences", "total_tokens")},
        "gathered": str(gathered),
        "model": gathered_model(gathered),
        "gpus_per_job": gpus,
        "shards": shards,
        "median_wall_seconds": median,
        "stragglers": [s["index"] for s in shards if s["straggler"]],
        "total_gpu_hours": sum(s["gpu_hours"] for s in shards if s["gpu_hours"] is not None),
        "span_seconds": max(ends) - min(starts) if starts and ends else None,
        "projection": projection(best, manifest["total_tokens"], shards, gpus),
        "settings": (best or {}).get("params"),
        "slurm_job_ids": sorted({i for s in shards for i in s["slurm_job_ids"]}),
    }


def write(context: dict, html: Path, summary: Path) -> None:
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(_environment().get_template("embed_report.html.j2").render(**context))
    summary.write_text(json.dumps(context, indent=2, default=str))
