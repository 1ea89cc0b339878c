"""`virnucpro embed`: FASTA in, packed ESM-2 forward, `embeddings.h5` + telemetry out.

The loop keeps the device one batch ahead of the host: batch k is launched before batch k-1's pooled rows are
read back (through a pinned buffer and a CUDA event), so the host never waits on the GPU in between. Results
are flushed to checkpoint chunks every `checkpoint_every` sequences; a rerun with the same options resumes
from them and recomputes only what no valid chunk holds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from virnucpro.data.fasta import MAX_RESIDUES, Records, read_fasta
from virnucpro.data.loader import CLOSE_ATTEMPTS, DEATH_WAIT_SECONDS, PackedBatch, PackedBatchDataset, Vocabulary
from virnucpro.data.loader import close_workers, collate, make_loader, torch_worker_death
from virnucpro.data.packing import SPECIAL_TOKENS, check_budget, pack_batches
from virnucpro.data.windows import Items, WindowSums, check_overlap, embedded_tokens, split_into_windows
from virnucpro.errors import OtherRunsResults, UserError
from virnucpro.models.fp8 import E4M3, check_fp8_device, recipe_facts
from virnucpro.models.packed_esm2 import PackedESM2, fused_gelu_applies
from virnucpro.models.weights import Weights, resolve_weights
from virnucpro.pipeline.launcher import launch_ranks
from virnucpro.pipeline import output
from virnucpro.pipeline.preemption import Preempted, StopFlag
from virnucpro.settings import auto_precision, with_settings
from virnucpro.pipeline.progress_reporter import InferenceProgressReporter, create_progress_callback
from virnucpro.utils.hardware import capture_hardware_info, matmul_tflops, package_versions
from virnucpro.utils.gpu_monitor import NvitopMonitor, resolve_visible_devices
from virnucpro.utils.phases import PhaseClock, process_start_epoch
from virnucpro.utils.telemetry import TelemetryLogger, aggregate_telemetry_shards, queue_state, summarize

logger = logging.getLogger("virnucpro.pipeline.runner")

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": E4M3}


@dataclass
@with_settings  # the engine settings (virnucpro.settings) as fields with their defaults
class EmbedConfig:
    """One embedding job: its input, OUTDIR and every engine setting."""

    fasta: Path
    outdir: Path
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
            return auto_precision(device.type)
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of auto, {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.precision == "fp8" and (why := check_fp8_device(device)):
            raise UserError(why)
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
                raise UserError(
                    f"--world-size {self.world_size} but only {visible} CUDA device(s) are visible "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
                )
        return self.world_size

    def validate(self) -> None:
        for name in ("token_budget", "buffer_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.num_workers < 0 or self.prefetch_factor < 1:
            raise UserError("--num-workers must be >= 0 and --prefetch-factor >= 1")
        if self.output_dtype not in output.OUTPUT_DTYPES:
            raise UserError(
                f"--output-dtype must be one of {', '.join(output.OUTPUT_DTYPES)}, not {self.output_dtype!r}"
            )


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


def fingerprint(cfg: EmbedConfig, records: Records, weights: Weights, precision: str, layer: int, gelu: str) -> dict:
    """What must match for checkpoint chunks to be reused (throughput knobs may change between reruns).

    The window overlap only when chunking: it changes no other mode's rows (and older results stay valid)."""
    fp = {
        "input_sha256": records.sha256,
        "num_sequences": len(records),
        "weights": weights.provenance,
        "precision": precision,
        "repr_layer": layer,
        "long_sequences": cfg.long_sequences,
        "gelu": gelu,
        "output_dtype": cfg.output_dtype,
        **recipe_facts(precision),
    }
    if chunk_overlap(cfg) is not None:
        fp["window_overlap"] = cfg.window_overlap
    return fp


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


@dataclass
class InFlight:
    """A batch launched on the device whose pooled rows are not read back yet (`event`: None when done)."""

    k: int
    batch: PackedBatch
    rows: torch.Tensor
    event: "torch.cuda.Event | None"
    wait_ms: float


def launch(model: PackedESM2, batch: PackedBatch, device: torch.device, layer: int, k: int, wait_ms: float) -> InFlight:
    """Start batch `k` on the device; on CUDA its rows come back through a pinned buffer and an event."""
    pooled = model.embed(batch.to(device), layer)
    if device.type != "cuda":  # synchronous device: the batch is done
        return InFlight(k, batch, pooled, None, wait_ms)
    rows = torch.empty(pooled.shape, dtype=pooled.dtype, pin_memory=True)
    rows.copy_(pooled, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return InFlight(k, batch, rows, event, wait_ms)


class BatchRecorder:
    """Turns finished batches into output rows (windows summed per sequence) and per-batch telemetry."""

    def __init__(
        self,
        cfg: EmbedConfig,
        global_indices: np.ndarray,
        items: Items,
        writer: output.AsyncChunkWriter,
        telemetry: TelemetryLogger,
        rank: int,
        on_batch: Callable[[dict], None] | None,
        monitor: NvitopMonitor | None,
    ):
        self.cfg, self.global_indices, self.writer, self.telemetry = cfg, global_indices, writer, telemetry
        self.rank, self.on_batch, self.monitor = rank, on_batch, monitor
        self.windows = WindowSums(items) if items.chunked else None
        self.results = ResultBuffer(writer, cfg.checkpoint_every)
        self.last_done = time.perf_counter()

    def finish(self, p: InFlight) -> None:
        """Wait for the batch, hand its complete sequences' rows to the writer, record its metrics."""
        if p.event is not None:
            p.event.synchronize()
        now = time.perf_counter()
        dt = max(now - self.last_done, 1e-9)
        started, self.last_done = self.last_done, now
        positions, rows = p.batch.indices.numpy(), p.rows.numpy()
        if self.windows is not None:
            positions, rows = self.windows.add(positions, rows)
        batch = p.batch
        metrics = {
            "num_sequences": len(positions),  # sequences completed (a batch of windows may complete none)
            "num_tokens": batch.num_tokens,
            "tokens_per_sec": batch.num_tokens / dt,
            "sequences_per_sec": len(positions) / dt,
            "batch_seconds": dt,
            "gpu_util": self.monitor.gpu_util(since=started) if self.monitor is not None else None,
            "packing_efficiency": batch.num_tokens / self.cfg.token_budget,
            "wait_time_ms": p.wait_ms,
            "queue_state": queue_state(p.wait_ms),
        }
        if self.windows is not None:
            metrics["num_windows"] = batch.num_sequences
        depth = self.results.add(self.global_indices[positions], rows)
        if depth is not None:
            metrics["checkpoint_queue_depth"] = depth
        written = self.writer.completed_write_ms()
        if written:
            metrics["checkpoint_write_ms"] = sum(written)
        self.telemetry.record_batch(p.k, metrics)
        if self.on_batch is not None:
            self.on_batch({**metrics, "rank": self.rank})

    def check_complete(self) -> None:
        if self.windows is not None:
            self.windows.check_complete()


def stream_batches(loader, num_batches: int, model, device, layer: int, recorder: BatchRecorder, stop) -> bool:
    """Run the planned batches, the device one batch ahead on CUDA; True when `stop` ended the stream early
    (the batch in flight is still finished). The loader's workers are ended before it returns or raises; a
    worker's death is raised as `WorkerDied`."""
    it = None
    pending: InFlight | None = None
    stopped = False
    try:
        it = iter(loader)
        with torch.inference_mode():
            for k in range(num_batches):
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
                launched = launch(model, batch, device, layer, k, (time.perf_counter() - t0) * 1000)
                if launched.event is None:  # timed now (a lag would shift every time by one)
                    recorder.finish(launched)
                    continue
                if pending is not None:
                    recorder.finish(pending)
                pending = launched
            if pending is not None:
                recorder.finish(pending)
        close_workers(it, failed=False)  # in the try: a death signalled just before it is still a WorkerDied
    except BaseException as exc:  # torch raises a worker's death wherever the main process is (SIGCHLD)
        # Until close_workers sets torch's handler aside, the handler can raise a death again at any call, the
        # first line of close_workers included (2 in 80 kills): so nothing is called before the `try`.
        attempts = 0
        while True:
            try:
                attempts += 1
                wait = DEATH_WAIT_SECONDS if isinstance(exc, Exception) else 0.0  # a second Ctrl-C: no wait
                died = close_workers(it, failed=True, death_wait=wait)
                break
            except RuntimeError as again:
                if attempts == CLOSE_ATTEMPTS or not torch_worker_death(again):
                    raise
        if died is not None and isinstance(exc, Exception):
            raise died from exc
        raise
    return stopped


def chunk_overlap(cfg: EmbedConfig) -> int | None:
    """The window overlap when long sequences are chunked, None when they are kept whole (already truncated)."""
    return cfg.window_overlap if cfg.long_sequences == "chunk" else None


def embed_indices(
    cfg: EmbedConfig,
    seqs: list[bytes],
    global_indices: np.ndarray,
    model: PackedESM2,
    device: torch.device,
    layer: int,
    telemetry: TelemetryLogger,
    rank: int = 0,
    pad_to: int | None = None,
    stop: StopFlag | None = None,
    on_batch: Callable[[dict], None] | None = None,
    monitor: NvitopMonitor | None = None,
    *,
    layout: output.Layout,
    key: str,
) -> None:
    """Embed `seqs` (input positions `global_indices`) on `device`, flushing chunks and recording telemetry.

    Long sequences in chunk mode are packed as windows; a sequence's row is written only once all its windows
    are summed. Between batches the loop checks `stop`: when set, it finishes the batch in flight, flushes every
    finished row to a checkpoint chunk and raises `Preempted` (sequences missing a window are not written).
    """
    items = split_into_windows(seqs, chunk_overlap(cfg))
    batches = pack_batches([len(s) for s in items.seqs], cfg.token_budget, cfg.buffer_size)
    weights = items.weights if items.chunked else None
    dataset = PackedBatchDataset(items.seqs, batches, pad_to=pad_to, weights=weights)
    loader = make_loader(dataset, cfg.num_workers, cfg.prefetch_factor, pin_memory=device.type == "cuda")
    writer = output.AsyncChunkWriter(cfg.outdir / output.PARTIAL_DIR, rank, layout, key)
    recorder = BatchRecorder(cfg, global_indices, items, writer, telemetry, rank, on_batch, monitor)
    try:
        stopped = stream_batches(loader, len(batches), model, device, layer, recorder, stop)
        if not stopped:
            recorder.check_complete()
        recorder.results.flush()
    finally:
        del loader
        writer.close()  # even on an error: what was computed and queued reaches the disk (its error is raised)
    written = writer.completed_write_ms()
    if written and telemetry.batch_metrics:  # writes that ended after the last batch still count
        last = telemetry.batch_metrics[-1]
        last["checkpoint_write_ms"] = last.get("checkpoint_write_ms", 0.0) + sum(written)
    if stopped:
        raise Preempted(
            f"stopped by {stop.signal_name} after {len(telemetry.batch_metrics)} of {len(batches)} "
            f"batches; finished rows are checkpointed"
        )


def build_model(weights: Weights, device: torch.device, precision: str) -> PackedESM2:
    vocab = Vocabulary.esm2()
    return PackedESM2.from_state_dict(
        weights.spec, weights.state_dict, vocab.cls_idx, vocab.eos_idx, device, PRECISIONS[precision]
    )


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
    layout: output.Layout  # where this job's rows go
    key: str  # the run key its checkpoint chunks carry


def load_rank_model(job: RankJob, device: torch.device, weights: Weights | None, clock: PhaseClock):
    """Weights on the rank's device, the model built (and compiled); each step timed as its phase."""
    cfg = job.cfg
    with clock.phase("load_weights"):
        if weights is None or not weights.state_dict:
            weights = resolve_weights(
                cfg.model, cfg.checkpoint, cfg.random_weights, cfg.seed, device, known_sha256=job.weights_sha256
            )
        model = build_model(weights, device, job.precision)
        weights.state_dict = {}
    with clock.phase("compile"):
        if job.compiled:
            model.compile_kernels(tanh_gelu_epilogue=not cfg.exact_gelu)
    return model, weights


def prepare_rank(job: RankJob, device: torch.device, weights: Weights | None, clock: PhaseClock):
    """Model built, warmed up and the FLOP ceiling probed; returns (model, weights, what the telemetry records)."""
    startup_seconds = clock.phases["rank_startup"]
    model, weights = load_rank_model(job, device, weights, clock)
    pad_to = model.batch_tokens(job.cfg.token_budget)
    with clock.phase("warmup"):
        warmup_seconds = warm_up(model, device, job.layer, pad_to)
    with clock.phase("matmul_probe"):
        ceiling = matmul_tflops(device, PRECISIONS[job.precision])  # what this rank's FLOP rate is compared with
    load_peak_gb = None
    if device.type == "cuda":  # from here on, the peak is what the token budget costs, not weight loading
        load_peak_gb = torch.cuda.max_memory_allocated(device) / 1024**3
        torch.cuda.reset_peak_memory_stats(device)
    facts = {
        "startup_seconds": startup_seconds,
        "model_load_seconds": clock.phases["load_weights"] + clock.phases["compile"],
        "warmup_seconds": warmup_seconds,
        "load_peak_memory_gb": load_peak_gb,
        "matmul_tflops": ceiling,
        "model_spec": asdict(weights.spec),
    }
    return model, weights, facts


def rank_telemetry(job: RankJob, device: torch.device, monitor: NvitopMonitor, facts: dict) -> TelemetryLogger:
    """The rank's telemetry logger with its run metadata set."""
    cfg = job.cfg
    telemetry = TelemetryLogger(
        cfg.outdir / "telemetry", run_id=f"rank{job.rank}", target_sequences=cfg.target_sequences
    )
    lengths = np.fromiter((len(x) for x in job.seqs), dtype=np.int64, count=len(job.seqs))
    telemetry.set_run_metadata(
        **job.run_meta,
        rank=job.rank,
        world_size=job.world_size,
        device=str(device),
        shard_sequences=len(job.seqs),
        shard_tokens=int(embedded_tokens(lengths, chunk_overlap(cfg)).sum()),
        compiled=job.compiled,
        gpu_monitor=monitor.identity(),
        hardware=capture_hardware_info(),
        **facts,
    )
    return telemetry


def close_rank_telemetry(
    telemetry: TelemetryLogger, device: torch.device, monitor: NvitopMonitor, clock: PhaseClock, elapsed, preempted
) -> dict:
    """Write `telemetry_rank{r}.json`; returns the rank's summary."""
    with clock.phase("rank_teardown"):
        summary = telemetry.get_summary(elapsed)
        summary["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None
        summary["gpu_monitor"] = monitor.get_statistics() if monitor.available else None
        telemetry.set_run_metadata(preempted=preempted, gpu_samples=monitor.samples)
        telemetry.set_run_metadata(phases={**clock.phases})  # the rank's own phases, for the report
        summary["phases"] = {**clock.phases}
        telemetry.finalize(summary=summary)
    summary["phases"] = {**clock.phases}  # teardown included, for the job's phase accounting
    summary["finished_at"] = time.time()
    return summary


def run_rank(
    job: RankJob, stop: StopFlag, on_batch: Callable[[dict], None] | None = None, weights: Weights | None = None
) -> dict:
    """Load the model on this rank's device, embed its shard, write `telemetry_rank{r}.json`; returns its summary.

    The summary's `phases` time this rank from its launch by the parent to its telemetry being written.
    """
    cfg, device = job.cfg, torch.device(job.device)
    clock = PhaseClock(start_epoch=job.started_at, first_phase="rank_startup")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model, weights, facts = prepare_rank(job, device, weights, clock)
    with clock.phase("monitor_setup"):  # NVML opened, hardware facts read: outside every other phase
        monitor = NvitopMonitor([device.index] if device.type == "cuda" else [], interval=cfg.monitor_interval)
        telemetry = rank_telemetry(job, device, monitor, facts)
    pad_to = model.batch_tokens(cfg.token_budget)
    preempted: Preempted | None = None
    t_start = time.perf_counter()
    with monitor.start():
        try:
            embed_indices(
                cfg,
                job.seqs,
                job.global_indices,
                model,
                device,
                job.layer,
                telemetry,
                job.rank,
                pad_to,
                stop,
                on_batch,
                monitor,
                layout=job.layout,
                key=job.key,
            )
        except Preempted as exc:
            preempted = exc
    elapsed = time.perf_counter() - t_start
    clock.add("loop", elapsed)
    summary = close_rank_telemetry(telemetry, device, monitor, clock, elapsed, preempted is not None)
    if preempted is not None:
        raise preempted
    return summary


def shard_by_tokens(indices: np.ndarray, lengths: np.ndarray, world_size: int) -> list[np.ndarray]:
    """Split `indices` into `world_size` shards of (nearly) equal token count.

    Deal the sequences round-robin in decreasing length: within each round rank r gets no less than rank r+1,
    and no more than rank r+1 got the round before, so any two shards differ by at most the longest
    sequence's tokens (<= 1024, less than one batch, unless chunked) and by at most one sequence in count.
    A sequence goes whole to one rank: all windows of a chunked one (its `lengths` entry: its windows' tokens
    minus 2) are embedded and summed there. Vectorised: 6M sequences take well under a second.
    """
    tokens = lengths[indices].astype(np.int64) + SPECIAL_TOKENS
    order = np.argsort(-tokens, kind="stable")
    return [np.sort(indices[order[r::world_size]]) for r in range(world_size)]


@dataclass
class Prepared:
    """What the parent decided before any rank starts: input, weights' identity, output state."""

    cfg: EmbedConfig
    device: torch.device
    world_size: int
    precision: str
    records: Records
    weights: Weights
    layer: int
    gelu: str
    fingerprint: dict
    key: str
    layout: output.Layout | None = None
    todo: np.ndarray | None = None
    resumed: int = 0
    already_complete: bool = False
    device_start: threading.Thread | None = None  # the in-process rank's device, started while the input is read


def set_compile_cache(directory: str | None) -> None:
    """Point torch.compile's and Triton's caches at a persistent directory (ranks inherit the environment), so
    the second job with the same model and settings loads compiled kernels instead of compiling them."""
    if directory:
        path = Path(directory).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(path / "triton")


def start_device_early(device: torch.device) -> threading.Thread | None:
    """Create the CUDA context, load cuBLAS, read the hardware facts and map the visible GPUs for the monitor
    (NVML) on a thread, so that they overlap reading the input instead of adding to the job's fixed cost. Errors
    are left to the main thread's own first use of the device, which reports them."""
    if device.type != "cuda":
        return None

    def start() -> None:
        try:
            with torch.cuda.device(device):
                a = torch.ones(64, 64, device=device)
                (a @ a).sum().item()
            capture_hardware_info()
            resolve_visible_devices()
        except Exception:  # noqa: BLE001 - reported by the main thread's own first use of the device
            pass

    return background(start, "device-start")


def background(target: Callable[[], None], name: str) -> threading.Thread:
    """`target` started on a thread that the interpreter waits for at exit. Not a daemon: a job that ends early
    (bad input: exit 2; already complete: 0) while a daemon thread is inside a torch op aborts at shutdown
    instead (SIGABRT, exit 134)."""
    thread = threading.Thread(target=target, name=name, daemon=False)
    thread.start()
    return thread


def read_input(cfg: EmbedConfig) -> Records:
    """The validated FASTA, long sequences handled as asked, and a budget that fits its longest packed item."""
    records = read_fasta(cfg.fasta, cfg.long_sequences)
    if records.truncated:
        logger.warning(
            "%d sequence(s) longer than %d residues were truncated to %d (--long-sequences truncate)",
            records.truncated,
            MAX_RESIDUES,
            MAX_RESIDUES,
        )
    if records.chunked:
        logger.warning(
            "%d sequence(s) longer than %d residues are embedded in windows overlapping by %d residues "
            "(--long-sequences chunk)",
            records.chunked,
            MAX_RESIDUES,
            cfg.window_overlap,
        )
    check_budget([min(n, MAX_RESIDUES) for n in records.lengths()], cfg.token_budget)  # a window is <= 1022
    return records


def prepare(cfg: EmbedConfig, clock: PhaseClock, stop: StopFlag) -> Prepared:
    """Validate everything and read the input and the weights' identity, before any output is touched."""
    cfg.validate()
    check_overlap(cfg.window_overlap)
    device = cfg.resolved_device()
    world_size = cfg.resolved_world_size(device)
    precision = cfg.resolved_precision(device)
    output.check_outdir(cfg.outdir)
    device_start = start_device_early(device) if world_size == 1 else None
    with clock.phase("read_input"):
        records = read_input(cfg)
    with clock.phase("resolve_weights"):
        # one rank in this process: a checkpoint is loaded (memory-mapped) once, here; random weights and
        # several ranks: each rank materialises them on its own device
        in_process = world_size == 1
        weights = resolve_weights(
            cfg.model, cfg.checkpoint, cfg.random_weights, cfg.seed, device if in_process else "cpu", materialize=False
        )
    layer = resolve_layer(cfg.repr_layer, weights.spec.num_layers)
    if weights.provenance["weights"] == "random":
        logger.warning("RANDOM WEIGHTS (seed %d): throughput is real, the embeddings are not", cfg.seed)
    if stop.is_set():
        raise Preempted(f"stopped by {stop.signal_name} while loading")
    gelu = gelu_form(cfg, device, precision)
    fp = fingerprint(cfg, records, weights, precision, layer, gelu)
    prep = Prepared(cfg, device, world_size, precision, records, weights, layer, gelu, fp, output.run_key(fp))
    prep.device_start = device_start
    return prep


def prepare_output(prep: Prepared) -> None:
    """Find this run's finished result or partial state (refusing another configuration's), or start anew."""
    cfg, outdir = prep.cfg, prep.cfg.outdir
    final_path, partial = outdir / output.FINAL_FILE, outdir / output.PARTIAL_DIR
    existing = output.existing_fingerprint(final_path)
    if existing is not None and not cfg.overwrite:
        if output.completed(final_path, prep.fingerprint):
            prep.already_complete = True
            return
        changed = sorted(k for k in set(existing) | set(prep.fingerprint) if existing.get(k) != prep.fingerprint.get(k))
        raise OtherRunsResults(
            f"{final_path} is a complete result of another configuration (differs in "
            f"{', '.join(changed)}); use a new output directory or pass --overwrite"
        )
    if cfg.overwrite or (final_path.exists() and existing is None):
        final_path.unlink(missing_ok=True)  # asked for, or not a result of ours at all (torn, foreign)
        output.discard_partial(partial)
    output.check_manifest(partial, prep.fingerprint)
    data = partial / output.DATA_FILE
    if output.data_file_matches(data, prep.fingerprint):
        prep.layout = output.read_layout(data)
    else:
        for stale in partial.glob("chunk_*.h5"):  # records of rows in a data file that is gone
            stale.replace(stale.with_suffix(".orphan"))
        prep.layout = output.create_data_file(
            data, prep.records.ids, prep.weights.spec.embed_dim, cfg.output_dtype, prep.fingerprint
        )
    state = output.scan_partial(partial, len(prep.records), prep.layout, prep.key)
    prep.todo = np.flatnonzero(~state.done)
    prep.resumed = int(state.done.sum())
    if prep.resumed:
        logger.warning(
            "resuming: %d of %d sequences already checkpointed, %d to go",
            prep.resumed,
            len(prep.records),
            len(prep.todo),
        )
    telemetry_dir = outdir / "telemetry"
    telemetry_dir.mkdir(exist_ok=True)
    for stale in telemetry_dir.glob("telemetry_rank*.json"):  # from an earlier attempt, maybe more ranks
        stale.unlink()


def run_meta(prep: Prepared) -> dict:
    cfg, w = prep.cfg, prep.weights
    return {
        "model": w.provenance.get("model"),
        "weights": w.provenance,
        "precision": prep.precision,
        **recipe_facts(prep.precision),
        "gelu": prep.gelu,
        "repr_layer": prep.layer,
        "fasta": str(cfg.fasta),
        "input_sha256": prep.records.sha256,
        "num_input_sequences": len(prep.records),
        "resumed_sequences": prep.resumed,
        "truncated_sequences": prep.records.truncated,
        "chunked_sequences": prep.records.chunked,
        "output_dtype": cfg.output_dtype,
        "engine": {k: v for k, v in asdict(cfg).items() if k not in ("fasta", "outdir", "extra_metadata")},
        "versions": package_versions(),
        **cfg.extra_metadata,
    }


def execute(prep: Prepared, stop: StopFlag, progress_stream=None) -> list[dict]:
    """Embed what is left, one process per device (this process when there is one); the ranks' summaries."""
    cfg, todo, world_size = prep.cfg, prep.todo, prep.world_size
    if todo is None or not len(todo):
        return []
    set_compile_cache(cfg.compile_cache)
    compiled = cfg.resolved_compile(prep.device)
    work = embedded_tokens(np.asarray(prep.records.lengths(), dtype=np.int64), chunk_overlap(cfg)) - SPECIAL_TOKENS
    shards = shard_by_tokens(todo, work, world_size)  # a chunked sequence's windows stay on one rank
    meta, now = run_meta(prep), time.time()
    jobs = [
        RankJob(
            cfg,
            r,
            world_size,
            str(rank_device(prep.device, r, world_size)),
            prep.precision,
            prep.layer,
            compiled,
            prep.weights.provenance.get("sha256"),
            shard,
            [prep.records.seqs[i] for i in shard],
            meta,
            now,
            prep.layout,
            prep.key,
        )
        for r, shard in enumerate(shards)
    ]
    del prep.records.seqs[:]  # the ranks hold their own copies now; keep the ids only
    if stop.is_set():
        raise Preempted(f"stopped by {stop.signal_name} before embedding began")
    with InferenceProgressReporter(
        len(todo), description=f"embedding x{world_size}", stream=progress_stream, interval=cfg.progress_interval
    ) as reporter:
        callback = create_progress_callback(reporter)

        def on_batch(m: dict) -> None:
            callback(0, m["num_sequences"], m)

        if world_size == 1:
            if prep.device_start is not None:  # counted in the rank's start-up
                prep.device_start.join()
            return [run_rank(jobs[0], stop, on_batch, prep.weights)]
        return launch_ranks(run_rank, jobs, stop, on_batch)


def job_summary(prep: Prepared, summaries: list[dict]) -> dict:
    """The merged telemetry of every rank file in OUTDIR (elapsed = slowest rank)."""
    rank_files = sorted((prep.cfg.outdir / "telemetry").glob("telemetry_rank*.json"))
    summary = (
        aggregate_telemetry_shards(rank_files)["global_summary"]
        if rank_files
        else {**summarize([], 0.0, prep.cfg.target_sequences), "note": "everything was already checkpointed"}
    )
    summary["world_size"] = prep.world_size
    summary["per_rank"] = summaries
    peaks = [r["peak_memory_gb"] for r in summaries if r.get("peak_memory_gb") is not None]
    summary["peak_memory_gb"] = max(peaks) if peaks else None
    return summary


def finish_output(prep: Prepared) -> None:
    cfg, w, records = prep.cfg, prep.weights, prep.records
    attrs = {
        "model": w.provenance.get("model"),
        "weights": w.provenance["weights"],
        "weights_provenance": w.provenance,
        "precision": prep.precision,
        **recipe_facts(prep.precision),
        "gelu": prep.gelu,
        "repr_layer": prep.layer,
        "output_dtype": cfg.output_dtype,
        "truncated_count": records.truncated,
        "chunked_count": records.chunked,
        "long_sequences": cfg.long_sequences,
        "window_overlap": chunk_overlap(cfg),
        "input_sha256": records.sha256,
        "input_path": str(cfg.fasta),
        "num_sequences": len(records),
        "versions": package_versions(),
        "fingerprint": prep.fingerprint,
        "world_size": prep.world_size,
    }
    partial = cfg.outdir / output.PARTIAL_DIR
    output.finalize(partial, cfg.outdir / output.FINAL_FILE, len(records), prep.key, attrs)
    output.discard_partial(partial)


def rank_phases(clock: PhaseClock, summaries: list[dict], embed_seconds: float) -> None:
    """Charge the embedding stage to the critical rank's phases (the last to finish), the rest to `rank_wait`."""
    if not summaries:
        clock.add("rank_wait", embed_seconds)
        return
    critical = max(summaries, key=lambda r: r.get("finished_at", 0.0))
    for name, seconds in critical.get("phases", {}).items():
        clock.add(name, seconds)
    clock.add("rank_wait", embed_seconds - sum(critical.get("phases", {}).values()))


def run_embed(
    cfg: EmbedConfig, progress_stream=None, stop: StopFlag | None = None, clock: PhaseClock | None = None
) -> dict:
    """Run one embedding job (one process per device) end to end; returns the merged telemetry summary.

    prepare (input, weights' identity) -> output state (lock, resume or start) -> execute (ranks) -> finish
    (check, stamp, rename: no copy). Raises `Preempted` after a SIGTERM (chunks flushed), `UserError` for bad
    input, `RankFailed` when a rank dies. Rerunning the same command resumes. `stop` is the caller's installed
    signal flag (none: no handler). `summary["phases"]` covers the process's wall time.
    """
    stop = stop if stop is not None else StopFlag()
    clock = clock if clock is not None else PhaseClock(process_start_epoch(), first_phase="python_startup")
    prep = prepare(cfg, clock, stop)
    cfg.outdir.mkdir(parents=True, exist_ok=True)
    with output.OutdirLock(cfg.outdir):
        with clock.phase("prepare_output"):
            prepare_output(prep)
        if prep.already_complete:
            # said once, by the command (`execute_embed` prints it on stdout); here only with -v
            logger.info("%s is already complete for this input and model", cfg.outdir / output.FINAL_FILE)
            output.discard_partial(cfg.outdir / output.PARTIAL_DIR)  # left by a kill after the final rename
            return {**job_summary(prep, []), "already_complete": True}
        t_embed = time.perf_counter()
        summaries = execute(prep, stop, progress_stream)
        rank_phases(clock, summaries, time.perf_counter() - t_embed)
        summary = job_summary(prep, summaries)
        with clock.phase("finalize"):
            finish_output(prep)
    summary["phases"] = clock.as_dict()
    summary["job_wall_seconds"] = clock.wall()
    summary["resumed_sequences"] = prep.resumed
    summary["output_dtype"] = cfg.output_dtype
    return summary


def rank_device(device: torch.device, rank: int, world_size: int) -> torch.device:
    """Rank r uses CUDA ordinal r (as `CUDA_VISIBLE_DEVICES` numbers them); CPU ranks share the CPU."""
    if device.type != "cuda":
        return device
    if world_size > 1:
        return torch.device("cuda", rank)
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
