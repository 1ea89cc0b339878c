"""Issue 15's check: the `embed` target's shard jobs against one `virnucpro embed` of the same input.

GPU time of each side = the sum of its jobs' process wall times (`status.json` `summary.job_wall_seconds`: what a
Slurm allocation of one GPU per job is charged, startup and finalisation included), and, separately, their loops;
then the gathered embeddings against the single job's, row by row (relative L2), read in chunks.

Usage: python docs/benchmarks/issue15_compare.py SINGLE_OUTDIR RESULTS_EMBED_DIR [--no-rows]
(--no-rows: GPU time only, from the status files alone, e.g. on a copy of them made after the device run; reading
both 1M x 2560 outputs takes ~40-60 s of device time.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np

CHUNK = 50_000


def job(status: Path) -> dict:
    summary = json.loads(status.read_text())["summary"]
    phases = summary.get("phases") or {}
    return {"wall": summary["job_wall_seconds"], "loop": phases.get("loop"), "sequences": summary["total_sequences"]}


def compare_rows(single: Path, gathered: Path) -> dict:
    with h5py.File(single) as a, h5py.File(gathered) as b:
        ids_a, ids_b = a["ids"].asstr()[()], b["ids"].asstr()[()]
        same_ids = len(ids_a) == len(ids_b) and bool((ids_a == ids_b).all())
        worst, rel = 0.0, []
        for start in range(0, len(ids_a), CHUNK):
            x = a["embeddings"][start : start + CHUNK].astype(np.float64)
            y = b["embeddings"][start : start + CHUNK].astype(np.float64)
            r = np.linalg.norm(x - y, axis=1) / np.linalg.norm(x, axis=1)
            worst = max(worst, float(r.max()))
            rel.append(np.median(r))
    return {
        "same_ids_in_order": same_ids,
        "rows": len(ids_a),
        "max_rel_l2": worst,
        "median_rel_l2": float(np.median(rel)),
    }


def main() -> None:
    single_dir, embed_dir, rows = Path(sys.argv[1]), Path(sys.argv[2]), "--no-rows" not in sys.argv
    one = job(single_dir / "status.json")
    shards = [job(p) for p in sorted(embed_dir.glob("shards/*/status.json"))]
    total_wall, total_loop = sum(s["wall"] for s in shards), sum(s["loop"] or 0 for s in shards)
    result = {
        "single": one,
        "shards": shards,
        "shard_sequences": sum(s["sequences"] for s in shards),
        "gpu_seconds_single": one["wall"],
        "gpu_seconds_shards": total_wall,
        "gpu_time_ratio": total_wall / one["wall"],
        "loop_ratio": total_loop / one["loop"] if one["loop"] else None,
        "fixed_seconds_per_shard_job": (total_wall - total_loop) / len(shards),
        "embeddings": compare_rows(single_dir / "embeddings.h5", embed_dir / "embeddings.h5") if rows else None,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
