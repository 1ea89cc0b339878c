"""`virnucpro bench scale`: what a job of production size costs outside its loop -- phases and peak disk.

Two measurements (a benchmark for the GPU machine, not a test):
- `job`: a synthetic FASTA of N sequences embedded by a real `virnucpro embed` process, with the output
  directory's allocated bytes (st_blocks) sampled every 0.2 s: the job's phases (status.json), its wall time, the
  peak disk against the final file, and the end-of-job work as a share of the loop.
- `finalize`: N x D synthetic rows through the real output code (preallocated file, background writer, the
  final check and rename) without a model: how the output side scales to 6M x 2560 where no GPU run of that
  size fits in a session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from virnucpro.data.fasta import write_fasta
from virnucpro.data.synthetic import make_sequences
from virnucpro.pipeline import output


def allocated_bytes(root: Path, skip: str = "telemetry") -> int:
    """Bytes the files under `root` occupy on disk (sparse regions not counted), telemetry aside."""
    total = 0
    for folder, _, files in os.walk(root):
        if skip in Path(folder).parts:
            continue
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class DiskPeak:
    """Samples `allocated_bytes(root)` on a thread; `.peak` is the largest value seen."""

    def __init__(self, root: Path, interval: float = 0.2):
        self.root, self.interval, self.peak = root, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, allocated_bytes(self.root))
            self._stop.wait(self.interval)

    def __enter__(self) -> "DiskPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, allocated_bytes(self.root))


def job(workdir: Path, model: str, num_sequences: int, profile: str, extra: list[str]) -> dict:
    """One real `virnucpro embed` of `num_sequences` synthetic sequences; its phases and disk use."""
    workdir.mkdir(parents=True, exist_ok=True)
    fasta = workdir / f"{profile}_{num_sequences}.fa"
    if not fasta.exists():
        ids, seqs = make_sequences(num_sequences, 7, profile)
        write_fasta(fasta, ids, seqs)
    outdir = workdir / f"out_{model}_{num_sequences}"
    cmd = [
        sys.executable,
        "-m",
        "virnucpro.cli",
        "embed",
        str(fasta),
        "-o",
        str(outdir),
        "--model",
        model,
        "--random-weights",
        "--overwrite",
        "--progress-interval",
        "30",
        *extra,
    ]
    t0 = time.time()
    with DiskPeak(outdir) as disk:
        proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"embed failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads((outdir / "status.json").read_text())["summary"]
    final = (outdir / output.FINAL_FILE).stat().st_blocks * 512
    phases = summary["phases"]
    result = {
        "model": model,
        "num_sequences": num_sequences,
        "profile": profile,
        "command": " ".join(cmd),
        "wall_seconds_outside": wall,
        "job_wall_seconds": summary["job_wall_seconds"],
        "phases": phases,
        "loop_tokens_per_sec": summary.get("avg_tokens_per_sec"),
        "final_bytes": final,
        "peak_bytes": disk.peak,
        "peak_over_final": disk.peak / final if final else None,
        "end_of_job_pct_of_loop": 100 * phases.get("finalize", 0.0) / phases["loop"] if phases.get("loop") else None,
        "outside_loop_seconds": summary["job_wall_seconds"] - phases.get("loop", 0.0),
    }
    for path in outdir.glob(output.FINAL_FILE):
        path.unlink()  # the numbers are kept; the (random-weight) embeddings are not worth the disk
    return result


def engine_order(num_sequences: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Input positions in the order the engine finishes them: it walks the input in packing buffers of
    `window` sequences and sorts each by length, so rows are scattered within a window, not across the file."""
    order = np.arange(num_sequences)
    for start in range(0, num_sequences, window):
        rng.shuffle(order[start : start + window])
    return order


def finalize_only(
    workdir: Path, num_sequences: int, dim: int, dtype: str, window: int = 5000, rows_per_chunk: int = 10000
) -> dict:
    """N x D synthetic rows through the real output path: create, write in chunks (in the engine's order, see
    `engine_order`), finish. Times each part and samples the disk."""
    outdir = workdir / f"finalize_{num_sequences}x{dim}_{dtype}"
    partial = outdir / output.PARTIAL_DIR
    output.discard_partial(partial)
    (outdir / output.FINAL_FILE).unlink(missing_ok=True)
    partial.mkdir(parents=True)
    fp = {"synthetic": True, "n": num_sequences, "dim": dim, "dtype": dtype}
    key, rng = output.run_key(fp), np.random.default_rng(0)
    result: dict = {
        "num_sequences": num_sequences,
        "dim": dim,
        "dtype": dtype,
        "rows_per_chunk": rows_per_chunk,
        "window": window,
    }
    with DiskPeak(outdir, interval=1.0) as disk:
        t = time.perf_counter()
        ids = [f"read_{i}_f{i % 6}" for i in range(num_sequences)]
        layout = output.create_data_file(partial / output.DATA_FILE, ids, dim, dtype, fp)
        result["create_seconds"] = time.perf_counter() - t
        order = engine_order(num_sequences, window, rng)
        block = rng.standard_normal((rows_per_chunk, dim)).astype(np.float32)
        t = time.perf_counter()
        writer = output.AsyncChunkWriter(partial, 0, layout, key)
        for start in range(0, num_sequences, rows_per_chunk):
            idx = order[start : start + rows_per_chunk]
            writer.submit(idx, block[: len(idx)])
        writer.close()
        result["write_seconds"] = time.perf_counter() - t
        result["write_mb_per_sec"] = num_sequences * layout.row_bytes / 1e6 / result["write_seconds"]
        t = time.perf_counter()
        output.finalize(partial, outdir / output.FINAL_FILE, num_sequences, key, {"synthetic": True})
        output.discard_partial(partial)
        result["finalize_seconds"] = time.perf_counter() - t
    final = (outdir / output.FINAL_FILE).stat().st_blocks * 512
    result.update(final_bytes=final, peak_bytes=disk.peak, peak_over_final=disk.peak / final)
    (outdir / output.FINAL_FILE).unlink()
    return result


def run(workdir: Path, jobs: list[str], finalize: list[str], embed_args: list[str]) -> dict:
    """`bench scale`: each `MODEL:N:PROFILE` job, then each `N:DIM:DTYPE` output-only run, printed as they end."""
    result = {"jobs": [], "finalize": []}
    for spec in jobs:
        model, n, profile = spec.split(":")
        result["jobs"].append(job(workdir, model, int(n), profile, embed_args))
        print(json.dumps(result["jobs"][-1], indent=2), flush=True)
    for spec in finalize:
        n, dim, dtype = spec.split(":")
        result["finalize"].append(finalize_only(workdir, int(n), int(dim), dtype))
        print(json.dumps(result["finalize"][-1], indent=2), flush=True)
    return result
