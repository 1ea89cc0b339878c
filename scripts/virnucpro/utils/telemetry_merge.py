"""`virnucpro merge-telemetry`: a job's rank telemetry as one JSON (elapsed = the slowest rank's)."""

from __future__ import annotations

from pathlib import Path

from virnucpro.errors import UserError
from virnucpro.utils.jsonfile import read_object
from virnucpro.utils.telemetry import aggregate_telemetry_shards


def shards_to_merge(shards: list[Path], result: Path | None) -> list[Path]:
    """The shards to merge: those given, or those the result lists (the workflow's rule declares the result)."""
    if bool(shards) == bool(result):
        raise UserError("merge-telemetry: give rank telemetry files or --result, not both and not neither")
    if shards:
        return list(shards)
    record = read_object(result, "--result")
    listed = [Path(k["telemetry"]) for k in record.get("ranks") or []]
    if not listed:
        raise UserError(f"--result {result}: lists no rank telemetry (status {record.get('status')})")
    missing = [str(p) for p in listed if not p.is_file()]
    if missing:
        raise UserError(f"--result {result}: rank telemetry missing: {', '.join(missing)}")
    return listed


def merged_telemetry(shards: list[Path]) -> dict:
    """One telemetry document of `shards`: the first rank's metadata (with the shard list), the merged summary,
    each shard's summary and every batch."""
    merged = aggregate_telemetry_shards(shards)
    first = read_object(shards[0], "telemetry shard")["run_metadata"]
    return {
        "run_metadata": {**first, "shards": [str(p) for p in shards]},
        "summary": merged["global_summary"],
        "per_shard_summary": merged["per_shard_summary"],
        "per_batch_metrics": merged["per_batch_metrics"],
    }
