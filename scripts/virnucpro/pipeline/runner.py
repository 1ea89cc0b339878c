"""`virnucpro embed`: FASTA in, packed ESM-2 forward, `embeddings.h5` + telemetry out.

The loop keeps the device one batch ahead of the host: batch k is launched before batch k-1's pooled rows are
read back (through a pinned buffer and a CUDA event), so the host never waits on the GPU in between. Results
are flushed to checkpoint chunks every `checkpoint_every` sequences; a rerun with the same options resumes
from them and recomputes only what no valid chunk holds.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from virnucpro.data.fasta import MAX_RESIDUES, Records, read_fasta
from virnucpro.data.loader import PackedBatchDataset, Vocabulary, collate, make_loader
from virnucpro.data.packing import check_budget, pack_batches
from virnucpro.errors import UserError
from virnucpro.models.packed_esm2 import PackedESM2, fused_gelu_applies
from virnucpro.models.weights import Weights, resolve_weights
from virnucpro.pipeline.launcher import launch_ranks
from virnucpro.pipeline import output
from virnucpro.pipeline.preemption import Preempted, StopFlag
from virnucpro.pipeline.progress_reporter import InferenceProgressReporter, create_progress_callback
from virnucpro.utils.hardware import capture_hardware_info, matmul_tflops, package_versions
from virnucpro.utils.gpu_monitor import NvitopMonitor
from virnucpro.utils.telemetry import TelemetryLogger, aggregate_telemetry_shards, queue_state, summarize

logger = logging.getLogger("virnucpro.pipeline.runner")

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class EmbedConfig:
    fasta: Path
    outdir: Path
    model: str | None = None  # None: the checkpoint's own architecture, else esm2_t36_3B_UR50D
    checkpoint: str | None = None
    random_weights: bool = False
    seed: int = 0
    precision: str = "auto"  # bf16 on CUDA, fp32 on CPU
    device: str = "auto"
    token_budget: int = 16384
    buffer_size: int = 5000
    num_workers: int = 2
    prefetch_factor: int = 4
    checkpoint_every: int = 10000
    long_sequences: str = "truncate"
    compile: str = "auto"  # torch.compile the dense layer kernels: auto = on CUDA only
    exact_gelu: bool = False  # on CUDA fp16/bf16, keep ESM's erf gelu instead of cuBLASLt's fused tanh form
    repr_layer: int = -1
    target_sequences: int = 6_000_000
    world_size: int | None = None  # None: every visible CUDA device, 1 on CPU
    progress_interval: float = 10.0  # seconds between progress lines in a non-interactive log
    monitor_interval: float = 1.0  # seconds between GPU samples
    extra_metadata: dict = field(default_factory=dict)

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"--device must be auto, cpu or cuda, not {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but torch sees no CUDA device")
        return torch.device(self.device)

    def resolved_precision(self, device: torch.device) -> str:
        if self.precision == "auto":
            return "bf16" if device.type == "cuda" else "fp32"
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of auto, {', '.join(PRECISIONS)}, not {self.precision!r}")
        return self.precision

    def resolved_compile(self, device: torch.device) -> bool:
        if self.compile not in ("auto", "on", "off"):
            raise UserError(f"--compile must be auto, on or off, not {self.compile!r}")
        return device.type == "cuda" if self.compile == "auto" else self.compile == "on"

    def resolved_world_size(self, device: torch.device) -> int:
        if self.world_size is None:
            return torch.cuda.device_count() if device.type == "cuda" and device.index is None else 1
        if self.world_size < 1:
            raise UserError(f"--world-size must be at least 1, not {self.world_size}")
        if device.type == "cuda" and self.world_size > 1:
            if device.index is not None:
                raise UserError(f"--device {device} names one GPU; --world-size {self.world_size} needs --device cuda")
            visible = torch.cuda.device_count()
            if self.world_size > visible:
                raise UserError(f"--world-size {self.world_size} but only {visible} CUDA device(s) are visible "
                                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        return self.world_size

    def validate(self) -> None:
        for name in ("token_budget", "buffer_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.num_workers < 0 or self.prefetch_factor < 1:
            raise UserError("--num-workers must be >= 0 and --prefetch-factor >= 1")


def resolve_layer(repr_layer: int, num_layers: int) -> int:
    """fair-esm's convention: negative layers count from the end (-1 = last)."""
    layer = repr_layer + num_layers + 1 if repr_layer < 0 else repr_layer
    if not 0 <= layer <= num_layers:
        raise UserError(f"--repr-layer {repr_layer} is outside 0..{num_layers} (or -{num_layers + 1}..-1)")
    return layer


def gelu_form(cfg: EmbedConfig, device: torch.device, precision: str) -> str:
    """Which gelu the model computes: cuBLASLt's fused tanh form with compiled kernels on CUDA in fp16/bf16
    unless `exact_gelu`, ESM's erf form everywhere else."""
    fused = cfg.resolved_compile(device) and not cfg.exact_gelu and fused_gelu_applies(device, PRECISIONS[precision])
    return "tanh (cuBLASLt bias+gelu epilogue)" if fused else "erf"


def fingerprint(cfg: EmbedConfig, records: Records, weights: Weights, precision: str, layer: int,
                gelu: str) -> dict:
    """What must match for checkpoint chunks to be reused (throughput knobs may change between reruns)."""
    return {"input_sha256": records.sha256, "num_sequences": len(records), "weights": weights.provenance,
            "precision": precision, "repr_layer": layer, "long_sequences": cfg.long_sequences, "gelu": gelu}


class ResultBuffer:
    """Finished rows gathered until `every` sequences make a chunk, then handed to the async writer."""

    def __init__(self, writer: output.AsyncChunkWriter, every: int):
        self.writer, self.every = writer, every
        self.indices: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.count = 0

    def add(self, indices: np.ndarray, rows: np.ndarray) -> int | None:
        """Keep rows; if they fill a chunk, submit it and return the writer's queue depth."""
        self.indices.append(indices)
        self.rows.append(rows)
        self.count += len(indices)
        return self.flush() if self.count >= self.every else None

    def flush(self) -> int | None:
        if not self.count:
            return None
        depth = self.writer.submit(np.concatenate(self.indices), np.concatenate(self.rows))
        self.indices, self.rows, self.count = [], [], 0
        return depth


def warm_up(model: PackedESM2, device: torch.device, layer: int, pad_to: int | None) -> float:
    """Run throwaway batches so compilation and kernel selection stay out of the timed loop; seconds taken.

    One batch of reads and one of longer proteins: they take different attention kernels (see
    `ROTATE_KEYS_MAX_LEN`), and a kernel compiled mid-run would stall the GPU for a second or two.
    """
    t0 = time.perf_counter()
    with torch.inference_mode():
        for seqs in ([b"M" * 40], [b"M" * 100]):
            model.embed(collate(seqs, [0], Vocabulary.esm2(), pad_to).to(device), layer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def embed_indices(cfg: EmbedConfig, seqs: list[bytes], global_indices: np.ndarray, model: PackedESM2,
                  device: torch.device, layer: int, telemetry: TelemetryLogger, rank: int = 0,
                  pad_to: int | None = None, stop: StopFlag | None = None,
                  on_batch: Callable[[dict], None] | None = None, monitor: NvitopMonitor | None = None) -> None:
    """Embed `seqs` (input positions `global_indices`) on `device`, flushing chunks and recording telemetry.

    Between batches the loop checks `stop`: when set, it finishes the batch in flight, flushes every finished
    row to a checkpoint chunk and raises `Preempted`.
    """
    batches = pack_batches([len(s) for s in seqs], cfg.token_budget, cfg.buffer_size)
    dataset = PackedBatchDataset(seqs, batches, pad_to=pad_to)
    loader = make_loader(dataset, cfg.num_workers, cfg.prefetch_factor, pin_memory=device.type == "cuda")
    writer = output.AsyncChunkWriter(cfg.outdir / output.PARTIAL_DIR, rank)
    results = ResultBuffer(writer, cfg.checkpoint_every)
    cuda = device.type == "cuda"
    last_done = time.perf_counter()
    pending = None
    stopped = False

    def finish(p) -> None:
        nonlocal last_done
        k, batch, rows, event, wait_ms = p
        if event is not None:
            event.synchronize()
        now = time.perf_counter()
        dt = max(now - last_done, 1e-9)
        started, last_done = last_done, now
        metrics = {
            "num_sequences": batch.num_sequences,
            "num_tokens": batch.num_tokens,
            "tokens_per_sec": batch.num_tokens / dt,
            "sequences_per_sec": batch.num_sequences / dt,
            "batch_seconds": dt,
            "gpu_util": monitor.gpu_util(since=started) if monitor is not None else None,
            "packing_efficiency": batch.num_tokens / cfg.token_budget,
            "wait_time_ms": wait_ms,
            "queue_state": queue_state(wait_ms),
        }
        depth = results.add(global_indices[batch.indices.numpy()], rows.numpy())
        if depth is not None:
            metrics["checkpoint_queue_depth"] = depth
        written = writer.completed_write_ms()
        if written:
            metrics["checkpoint_write_ms"] = sum(written)
        telemetry.record_batch(k, metrics)
        if on_batch is not None:
            on_batch({**metrics, "rank": rank})

    it = None
    try:
        it = iter(loader)
        with torch.inference_mode():
            for k in range(len(batches)):
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                t0 = time.perf_counter()
                try:
                    batch = next(it)
                except Exception:
                    if stop is not None and stop.is_set():  # the signal also reached the loader's workers
                        stopped = True
                        break
                    raise
                wait_ms = (time.perf_counter() - t0) * 1000
                pooled = model.embed(batch.to(device), layer)
                if cuda:
                    rows = torch.empty(pooled.shape, dtype=pooled.dtype, pin_memory=True)
                    rows.copy_(pooled, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                    if pending is not None:
                        finish(pending)
                    pending = (k, batch, rows, event, wait_ms)
                else:  # synchronous device: the batch is done, time it now (a lag would shift every time by one)
                    finish((k, batch, pooled, None, wait_ms))
            if pending is not None:
                finish(pending)
        results.flush()
    finally:
        writer.close()  # even on an error: what was computed and queued reaches the disk
        it = None  # shut the loader's workers down now: they ignore SIGTERM, so exit-time cleanup would wait
        del loader
    written = writer.completed_write_ms()
    if written and telemetry.batch_metrics:  # writes that ended after the last batch still count
        last = telemetry.batch_metrics[-1]
        last["checkpoint_write_ms"] = last.get("checkpoint_write_ms", 0.0) + sum(written)
    if stopped:
        raise Preempted(f"stopped by {stop.signal_name} after {len(telemetry.batch_metrics)} of {len(batches)} "
                        f"batches; finished rows are checkpointed")


def build_model(weights: Weights, device: torch.device, precision: str) -> PackedESM2:
    vocab = Vocabulary.esm2()
    return PackedESM2.from_state_dict(weights.spec, weights.state_dict, vocab.cls_idx, vocab.eos_idx, device,
                                      PRECISIONS[precision])


@dataclass
class RankJob:
    """Everything one rank needs, decided once by the parent (picklable: it crosses a spawn)."""

    cfg: EmbedConfig
    rank: int
    world_size: int
    device: str
    precision: str
    layer: int
    compiled: bool
    weights_sha256: str | None
    global_indices: np.ndarray
    seqs: list[bytes]
    run_meta: dict
    started_at: float  # time.time() when the parent launched the rank: its startup cost is measured from here


def run_rank(job: RankJob, stop: StopFlag, on_batch: Callable[[dict], None] | None = None,
             weights: Weights | None = None) -> dict:
    """Load the model on this rank's device, embed its shard, write `telemetry_rank{r}.json`; returns its summary."""
    cfg, device = job.cfg, torch.device(job.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    t_load = time.perf_counter()
    startup_seconds = time.time() - job.started_at
    if weights is None:
        weights = resolve_weights(cfg.model, cfg.checkpoint, cfg.random_weights, cfg.seed, device,
                                  known_sha256=job.weights_sha256)
    model = build_model(weights, device, job.precision)
    weights.state_dict = {}
    pad_to = cfg.token_budget if job.compiled else None
    if job.compiled:
        model.compile_kernels(tanh_gelu_epilogue=not cfg.exact_gelu)
    load_seconds = time.perf_counter() - t_load
    warmup_seconds = warm_up(model, device, job.layer, pad_to)
    ceiling = matmul_tflops(device, PRECISIONS[job.precision])  # what this rank's FLOP rate is compared with
    if device.type == "cuda":  # from here on, the peak is what the token budget costs, not weight loading
        load_peak_gb = torch.cuda.max_memory_allocated(device) / 1024**3
        torch.cuda.reset_peak_memory_stats(device)
    else:
        load_peak_gb = None

    telemetry = TelemetryLogger(cfg.outdir / "telemetry", run_id=f"rank{job.rank}",
                                target_sequences=cfg.target_sequences)
    monitor = NvitopMonitor([device.index] if device.type == "cuda" else [], interval=cfg.monitor_interval)
    telemetry.set_run_metadata(
        **job.run_meta, rank=job.rank, world_size=job.world_size, device=str(device),
        shard_sequences=len(job.seqs), shard_tokens=int(sum(len(x) + 2 for x in job.seqs)),
        startup_seconds=startup_seconds, model_load_seconds=load_seconds, warmup_seconds=warmup_seconds,
        load_peak_memory_gb=load_peak_gb, compiled=job.compiled, gpu_monitor=monitor.identity(),
        matmul_tflops=ceiling, model_spec=asdict(weights.spec),
        hardware=capture_hardware_info(),
    )
    preempted: Preempted | None = None
    t_start = time.perf_counter()
    with monitor.start():
        try:
            embed_indices(cfg, job.seqs, job.global_indices, model, device, job.layer, telemetry, job.rank,
                          pad_to, stop, on_batch, monitor)
        except Preempted as exc:
            preempted = exc
    elapsed = time.perf_counter() - t_start
    summary = telemetry.get_summary(elapsed)
    summary["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None
    summary["gpu_monitor"] = monitor.get_statistics() if monitor.available else None
    telemetry.set_run_metadata(preempted=preempted is not None, gpu_samples=monitor.samples)
    telemetry.finalize(summary=summary)
    if preempted is not None:
        raise preempted
    return summary


def shard_by_tokens(indices: np.ndarray, lengths: np.ndarray, world_size: int) -> list[np.ndarray]:
    """Split `indices` into `world_size` shards of (nearly) equal token count.

    Deal the sequences round-robin in decreasing length: within each round rank r gets no less than rank r+1,
    and no more than rank r+1 got the round before, so any two shards differ by at most the longest
    sequence's tokens (<= 1024, less than one batch) and by at most one sequence in count. Vectorised:
    6M sequences take well under a second.
    """
    tokens = lengths[indices].astype(np.int64) + 2
    order = np.argsort(-tokens, kind="stable")
    return [np.sort(indices[order[r::world_size]]) for r in range(world_size)]


def run_embed(cfg: EmbedConfig, progress_stream=None, stop: StopFlag | None = None) -> dict:
    """Run one embedding job (one process per device) end to end; returns the merged telemetry summary.

    Raises `Preempted` after a SIGTERM (chunks flushed), `UserError` for bad input, `RankFailed` when a rank
    dies. Rerunning the same command resumes. `stop` is the caller's installed signal flag (none: no handler).
    """
    stop = stop if stop is not None else StopFlag()
    cfg.validate()
    device = cfg.resolved_device()
    world_size = cfg.resolved_world_size(device)
    precision = cfg.resolved_precision(device)
    records = read_fasta(cfg.fasta, cfg.long_sequences)
    if records.truncated:
        logger.warning("%d sequence(s) longer than %d residues were truncated to %d (--long-sequences truncate)",
                       records.truncated, MAX_RESIDUES, MAX_RESIDUES)
    lengths = records.lengths()
    check_budget(lengths, cfg.token_budget)  # before any output exists
    in_process = world_size == 1
    # one rank in this process: load the weights once, here; several: the ranks load them on their devices
    weights = resolve_weights(cfg.model, cfg.checkpoint, cfg.random_weights, cfg.seed,
                              device if in_process else "cpu", materialize=in_process)
    layer = resolve_layer(cfg.repr_layer, weights.spec.num_layers)
    if weights.provenance["weights"] == "random":
        logger.warning("RANDOM WEIGHTS (seed %d): throughput is real, the embeddings are not", cfg.seed)
    if stop.is_set():
        raise Preempted(f"stopped by {stop.signal_name} while loading")

    outdir = cfg.outdir
    final_path = outdir / "embeddings.h5"
    gelu = gelu_form(cfg, device, precision)
    fp = fingerprint(cfg, records, weights, precision, layer, gelu)
    if output.completed(final_path, fp):
        logger.warning("%s is already complete for this input and model; nothing to do", final_path)
        return {**(output.read_summary(outdir) or {}), "already_complete": True}
    outdir.mkdir(parents=True, exist_ok=True)
    partial = outdir / output.PARTIAL_DIR
    output.check_manifest(partial, fp)
    state = output.scan_partial(partial, len(records))
    todo = np.flatnonzero(~state.done)
    resumed = int(state.done.sum())
    if resumed:
        logger.warning("resuming: %d of %d sequences already checkpointed, %d to go", resumed, len(records),
                       len(todo))
    telemetry_dir = outdir / "telemetry"
    telemetry_dir.mkdir(exist_ok=True)
    for stale in telemetry_dir.glob("telemetry_rank*.json"):  # from an earlier attempt, maybe more ranks
        stale.unlink()

    compiled = cfg.resolved_compile(device)
    run_meta = {
        "model": weights.provenance.get("model"), "weights": weights.provenance, "precision": precision,
        "gelu": gelu, "repr_layer": layer, "fasta": str(cfg.fasta), "input_sha256": records.sha256,
        "num_input_sequences": len(records), "resumed_sequences": resumed, "truncated_sequences": records.truncated,
        "engine": {k: v for k, v in asdict(cfg).items() if k not in ("fasta", "outdir", "extra_metadata")},
        "versions": package_versions(), **cfg.extra_metadata,
    }
    t_job = time.perf_counter()
    summaries: list[dict] = []
    if len(todo):
        shards = shard_by_tokens(todo, np.asarray(lengths, dtype=np.int64), world_size)
        now = time.time()
        jobs = [RankJob(cfg, r, world_size, str(rank_device(device, r, world_size)), precision, layer, compiled,
                        weights.provenance.get("sha256"), shard, [records.seqs[i] for i in shard], run_meta, now)
                for r, shard in enumerate(shards)]
        del records.seqs[:]  # the ranks hold their own copies now; keep the ids only
        if stop.is_set():
            raise Preempted(f"stopped by {stop.signal_name} before embedding began")
        with InferenceProgressReporter(
                len(todo), description=f"embedding x{world_size}", stream=progress_stream,
                interval=cfg.progress_interval) as reporter:
            callback = create_progress_callback(reporter)
            on_batch = lambda m: callback(0, m["num_sequences"], m)  # noqa: E731
            if in_process:
                summaries = [run_rank(jobs[0], stop, on_batch, weights)]
            else:
                summaries = launch_ranks(jobs, stop, on_batch)
    rank_files = sorted(telemetry_dir.glob("telemetry_rank*.json"))
    summary = (aggregate_telemetry_shards(rank_files)["global_summary"] if rank_files
               else {**summarize([], 0.0, cfg.target_sequences), "note": "everything was already checkpointed"})
    summary["world_size"] = world_size
    summary["per_rank"] = summaries
    peaks = [r["peak_memory_gb"] for r in summaries if r.get("peak_memory_gb") is not None]
    summary["peak_memory_gb"] = max(peaks) if peaks else None

    attrs = {
        "model": weights.provenance.get("model"), "weights": weights.provenance["weights"],
        "weights_provenance": weights.provenance, "precision": precision, "gelu": gelu, "repr_layer": layer,
        "truncated_count": records.truncated, "input_sha256": records.sha256, "input_path": str(cfg.fasta),
        "num_sequences": len(records), "versions": package_versions(), "fingerprint": fp, "world_size": world_size,
    }
    output.assemble(partial, final_path, records.ids, weights.spec.embed_dim, attrs)
    output.discard_partial(partial)
    summary["job_wall_seconds"] = time.perf_counter() - t_job
    return summary


def rank_device(device: torch.device, rank: int, world_size: int) -> torch.device:
    """Rank r uses CUDA ordinal r (as `CUDA_VISIBLE_DEVICES` numbers them); CPU ranks share the CPU."""
    if device.type != "cuda":
        return device
    if world_size > 1:
        return torch.device("cuda", rank)
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
