"""Per-batch telemetry of an embedding run (seed plan 10-01).

`TelemetryLogger` records one dict per batch and writes `{run_metadata, summary, per_batch_metrics}` JSON.
A figure that could not be measured (GPU utilisation without NVML, say) is stored as null, never as 0, and
every average skips nulls. Projections are for `target_sequences` (default 6,000,000): one from the run's
sequences/s, one from its tokens/s and the production workload's tokens per sequence (the real VirNucPro
input averages ~49 residues + BOS/EOS), which is the fair one when the benchmark's lengths differ.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from virnucpro.defaults import TARGET_SEQUENCES, TARGET_TOKENS_PER_SEQUENCE, WARMUP_BATCHES, WARMUP_SECONDS
from virnucpro.utils.hardware import capture_hardware_info  # noqa: F401  (re-exported: plan 10-01's home for it)
from virnucpro.utils.jsonfile import read_json, write_json_atomic

logger = logging.getLogger("virnucpro.utils.telemetry")

#: Queue states by DataLoader wait: data was ready, or the GPU side waited long enough to matter.
FULL_WAIT_MS = 0.5
STARVED_WAIT_MS = 5.0


def queue_state(wait_time_ms: float) -> str:
    if wait_time_ms < FULL_WAIT_MS:
        return "full"
    return "starved" if wait_time_ms > STARVED_WAIT_MS else "normal"


def _values(batches: list[dict], key: str) -> list[float]:
    return [b[key] for b in batches if b.get(key) is not None]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(
    batches: list[dict],
    elapsed_seconds: float,
    target_sequences: int = TARGET_SEQUENCES,
    target_tokens_per_sequence: float = TARGET_TOKENS_PER_SEQUENCE,
) -> dict[str, Any]:
    """The plan's summary fields from per-batch records and the wall time they took."""
    total_sequences = sum(b.get("num_sequences", 0) for b in batches)
    total_tokens = sum(b.get("num_tokens", 0) for b in batches)
    rate_ok = elapsed_seconds > 0
    seq_per_hour = total_sequences / elapsed_seconds * 3600 if rate_ok else None
    tokens_per_sec = total_tokens / elapsed_seconds if rate_ok else None
    waits = _values(batches, "wait_time_ms")
    summary: dict[str, Any] = {
        "total_sequences": total_sequences,
        "total_tokens": total_tokens,
        "total_batches": len(batches),
        "elapsed_seconds": elapsed_seconds,
        "avg_tokens_per_sec": tokens_per_sec,
        "avg_sequences_per_sec": total_sequences / elapsed_seconds if rate_ok else None,
        "avg_gpu_util": _mean(_values(batches, "gpu_util")),
        "avg_packing_efficiency": _mean(_values(batches, "packing_efficiency")),
        "min_packing_efficiency": min(_values(batches, "packing_efficiency"), default=None),
        "avg_wait_time_ms": _mean(waits),
        "p95_wait_time_ms": percentile(waits, 95),
        "pct_starved": (
            100.0 * sum(b.get("queue_state") == "starved" for b in batches) / len(batches) if batches else None
        ),
        "sequences_per_hour": seq_per_hour,
        "avg_tokens_per_seq": total_tokens / total_sequences if total_sequences else None,
        "projection_target_sequences": target_sequences,
        "projection_tokens_per_sequence": target_tokens_per_sequence,
        "projected_hours": target_sequences / seq_per_hour if seq_per_hour else None,
        "projected_hours_tokens": (
            target_sequences * target_tokens_per_sequence / tokens_per_sec / 3600 if tokens_per_sec else None
        ),
    }
    ckpt_ms = _values(batches, "checkpoint_write_ms")
    if ckpt_ms:
        summary["avg_checkpoint_write_ms"] = statistics.fmean(ckpt_ms)
        summary["total_checkpoint_write_ms"] = sum(ckpt_ms)
        summary["max_checkpoint_queue_depth"] = max(_values(batches, "checkpoint_queue_depth"), default=None)
    return summary


class TelemetryLogger:
    """Collects per-batch metrics of one process and writes them as JSON on `finalize()`."""

    def __init__(
        self,
        output_dir: str | Path,
        run_id: str | None = None,
        target_sequences: int = TARGET_SEQUENCES,
        target_tokens_per_sequence: float = TARGET_TOKENS_PER_SEQUENCE,
    ):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id or datetime.now().strftime("%Y%m%d_%H%M%S")
        self.json_path = self.output_dir / f"telemetry_{self.run_id}.json"
        self.batch_metrics: list[dict[str, Any]] = []
        self.run_metadata: dict[str, Any] = {}
        self.target_sequences = target_sequences
        self.target_tokens_per_sequence = target_tokens_per_sequence
        self.start_time = time.time()

    def set_run_metadata(self, **kwargs: Any) -> None:
        self.run_metadata.update(kwargs)

    def record_batch(self, batch_idx: int, metrics: dict[str, Any]) -> None:
        """Store one batch's metrics (any extra keys kept) with a wall-clock timestamp."""
        self.batch_metrics.append({"batch_idx": batch_idx, "timestamp": time.time(), **metrics})

    def get_summary(self, elapsed_seconds: float | None = None) -> dict[str, Any]:
        elapsed = time.time() - self.start_time if elapsed_seconds is None else elapsed_seconds
        return summarize(self.batch_metrics, elapsed, self.target_sequences, self.target_tokens_per_sequence)

    def finalize(self, summary: dict[str, Any] | None = None, elapsed_seconds: float | None = None) -> Path:
        """Write `{run_metadata, summary, per_batch_metrics}` (atomically) and return the path."""
        payload = {
            "run_metadata": {
                "start_time": datetime.fromtimestamp(self.start_time, timezone.utc).isoformat(),
                **self.run_metadata,
            },
            "summary": summary if summary is not None else self.get_summary(elapsed_seconds),
            "per_batch_metrics": self.batch_metrics,
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)  # deleted mid-run: write it again, don't crash
        write_json_atomic(self.json_path, payload)
        return self.json_path


def aggregate_telemetry_shards(shard_paths: list[str | Path]) -> dict[str, Any]:
    """Merge per-rank telemetry (seed plan 10-01): totals summed, elapsed = slowest shard, batches tagged."""
    if not shard_paths:
        raise ValueError("aggregate_telemetry_shards needs at least one shard")
    shards = [read_json(p, "telemetry shard", ("run_metadata", "summary", "per_batch_metrics")) for p in shard_paths]
    models = {json.dumps(s.get("run_metadata", {}).get("model")) for s in shards}
    if len(models) > 1:
        logger.warning("telemetry shards disagree on the model: %s", sorted(models))
    batches = []
    for rank, shard in enumerate(shards):
        shard_rank = shard.get("run_metadata", {}).get("rank", rank)
        batches += [{**b, "shard_rank": shard_rank} for b in shard["per_batch_metrics"]]
    summaries = [s["summary"] for s in shards]
    elapsed = max(s["elapsed_seconds"] for s in summaries)
    first = summaries[0]
    glob = summarize(
        batches,
        elapsed,
        first.get("projection_target_sequences", TARGET_SEQUENCES),
        first.get("projection_tokens_per_sequence", TARGET_TOKENS_PER_SEQUENCE),
    )
    per_shard = lambda key: [s[key] for s in summaries if s.get(key) is not None]  # noqa: E731
    glob.update(  # each shard weighted equally, as the plan asks; null when no shard measured it
        avg_gpu_util=_mean(per_shard("avg_gpu_util")),
        avg_packing_efficiency=_mean(per_shard("avg_packing_efficiency")),
        pct_starved=_mean(per_shard("pct_starved")),
        num_shards=len(shards),
    )
    return {"global_summary": glob, "per_shard_summary": summaries, "per_batch_metrics": batches}


def calculate_scaling_efficiency(
    baseline_runtime: float, multi_gpu_runtime: float, num_gpus: int, min_efficiency: float = 95.0
) -> dict[str, Any]:
    """Speedup of an N-GPU run over the 1-GPU baseline on the same work (PERF-03: >= 95 % for 2 GPUs)."""
    if baseline_runtime <= 0 or multi_gpu_runtime <= 0:
        raise ValueError("runtimes must be positive")
    if num_gpus < 1:
        raise ValueError("num_gpus must be at least 1")
    speedup = baseline_runtime / multi_gpu_runtime
    efficiency = speedup / num_gpus * 100.0
    ideal = baseline_runtime / num_gpus
    return {
        "speedup": speedup,
        "efficiency": efficiency,
        "ideal_runtime": ideal,
        "overhead_seconds": multi_gpu_runtime - ideal,
        "num_gpus": num_gpus,
        "meets_perf03": efficiency >= min_efficiency,
    }


def steady_state(
    batches: list[dict],
    warmup_seconds: float = WARMUP_SECONDS,
    warmup_batches: int = WARMUP_BATCHES,
    **summary_kwargs: Any,
) -> dict[str, Any]:
    """Summary without the warm-up: the larger of the first `warmup_seconds` or `warmup_batches` batches.

    Never discards everything: a run shorter than its warm-up keeps all batches and says so
    (`warmup_excluded: false`). Elapsed time restarts at the end of the last excluded batch.
    """
    if not batches:
        return {**summarize([], 0.0, **summary_kwargs), "warmup_excluded": False, "excluded_batches": 0}
    start = batches[0]["timestamp"] - batches[0].get("batch_seconds", 0.0)
    by_time = sum(1 for b in batches if b["timestamp"] - start <= warmup_seconds)
    excluded = max(by_time, warmup_batches)
    if excluded >= len(batches):
        elapsed = batches[-1]["timestamp"] - start
        return {
            **summarize(batches, elapsed, **summary_kwargs),
            "warmup_excluded": False,
            "excluded_batches": 0,
            "note": "run shorter than the warm-up window: nothing excluded",
        }
    kept = batches[excluded:]
    elapsed = kept[-1]["timestamp"] - (batches[excluded - 1]["timestamp"] if excluded else start)
    return {**summarize(kept, elapsed, **summary_kwargs), "warmup_excluded": True, "excluded_batches": excluded}
