"""`virnucpro embed`: FASTA in, packed ESM-2 forward, `embeddings.h5` + telemetry out.

The loop keeps the device one batch ahead of the host: batch k is launched before batch k-1's pooled rows are
read back (through a pinned buffer and a CUDA event), so the host never waits on the GPU in between. Results
are flushed to checkpoint chunks every `checkpoint_every` sequences; a rerun with the same options resumes
from them and recomputes only what no valid chunk holds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from virnucpro.data.fasta import MAX_RESIDUES, Records, read_fasta
from virnucpro.data.loader import PackedBatchDataset, Vocabulary, collate, make_loader
from virnucpro.data.packing import check_budget, pack_batches
from virnucpro.errors import UserError
from virnucpro.models.packed_esm2 import PackedESM2
from virnucpro.models.weights import Weights, resolve_weights
from virnucpro.pipeline import output
from virnucpro.utils.hardware import capture_hardware_info, package_versions
from virnucpro.utils.telemetry import TelemetryLogger, queue_state

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
    repr_layer: int = -1
    target_sequences: int = 6_000_000
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


def fingerprint(cfg: EmbedConfig, records: Records, weights: Weights, precision: str, layer: int) -> dict:
    """What must match for checkpoint chunks to be reused (throughput knobs may change between reruns)."""
    return {"input_sha256": records.sha256, "num_sequences": len(records), "weights": weights.provenance,
            "precision": precision, "repr_layer": layer, "long_sequences": cfg.long_sequences}


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
    """Run one throwaway batch so compilation and kernel selection stay out of the timed loop; seconds taken."""
    t0 = time.perf_counter()
    batch = collate([b"M" * 100], [0], Vocabulary.esm2(), pad_to).to(device)
    with torch.inference_mode():
        model.embed(batch, layer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def embed_indices(cfg: EmbedConfig, records: Records, todo: np.ndarray, model: PackedESM2, device: torch.device,
                  layer: int, telemetry: TelemetryLogger, rank: int = 0, pad_to: int | None = None) -> None:
    """Embed records[todo] on `device`, flushing chunks and recording per-batch telemetry."""
    lengths = records.lengths()
    sub_lengths = [lengths[i] for i in todo]
    batches = [[int(todo[j]) for j in b] for b in pack_batches(sub_lengths, cfg.token_budget, cfg.buffer_size)]
    dataset = PackedBatchDataset(records.seqs, batches, pad_to=pad_to)
    loader = make_loader(dataset, cfg.num_workers, cfg.prefetch_factor, pin_memory=device.type == "cuda")
    writer = output.AsyncChunkWriter(cfg.outdir / output.PARTIAL_DIR, rank)
    results = ResultBuffer(writer, cfg.checkpoint_every)
    cuda = device.type == "cuda"
    last_done = time.perf_counter()
    pending = None

    def finish(p) -> None:
        nonlocal last_done
        k, batch, rows, event, wait_ms = p
        if event is not None:
            event.synchronize()
        now = time.perf_counter()
        dt = max(now - last_done, 1e-9)
        last_done = now
        metrics = {
            "num_sequences": batch.num_sequences,
            "num_tokens": batch.num_tokens,
            "tokens_per_sec": batch.num_tokens / dt,
            "sequences_per_sec": batch.num_sequences / dt,
            "batch_seconds": dt,
            "gpu_util": None,
            "packing_efficiency": batch.num_tokens / cfg.token_budget,
            "wait_time_ms": wait_ms,
            "queue_state": queue_state(wait_ms),
        }
        depth = results.add(batch.indices.numpy(), rows.numpy())
        if depth is not None:
            metrics["checkpoint_queue_depth"] = depth
        written = writer.completed_write_ms()
        if written:
            metrics["checkpoint_write_ms"] = sum(written)
        telemetry.record_batch(k, metrics)

    try:
        it = iter(loader)
        with torch.inference_mode():
            for k in range(len(batches)):
                t0 = time.perf_counter()
                batch = next(it)
                wait_ms = (time.perf_counter() - t0) * 1000
                pooled = model.embed(batch.to(device), layer)
                event = None
                if cuda:
                    rows = torch.empty(pooled.shape, dtype=pooled.dtype, pin_memory=True)
                    rows.copy_(pooled, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                else:
                    rows = pooled
                if pending is not None:
                    finish(pending)
                pending = (k, batch, rows, event, wait_ms)
            if pending is not None:
                finish(pending)
        results.flush()
    finally:
        writer.close()  # even on an error: what was computed and queued reaches the disk
    written = writer.completed_write_ms()
    if written and telemetry.batch_metrics:  # writes that ended after the last batch still count
        last = telemetry.batch_metrics[-1]
        last["checkpoint_write_ms"] = last.get("checkpoint_write_ms", 0.0) + sum(written)


def build_model(weights: Weights, device: torch.device, precision: str) -> PackedESM2:
    vocab = Vocabulary.esm2()
    return PackedESM2.from_state_dict(weights.spec, weights.state_dict, vocab.cls_idx, vocab.eos_idx, device,
                                      PRECISIONS[precision])


def run_embed(cfg: EmbedConfig) -> dict:
    """Run one single-process embedding job end to end; returns the telemetry summary."""
    cfg.validate()
    device = cfg.resolved_device()
    precision = cfg.resolved_precision(device)
    records = read_fasta(cfg.fasta, cfg.long_sequences)
    if records.truncated:
        logger.warning("%d sequence(s) longer than %d residues were truncated to %d (--long-sequences truncate)",
                       records.truncated, MAX_RESIDUES, MAX_RESIDUES)
    check_budget(records.lengths(), cfg.token_budget)  # before any output exists
    t_load = time.perf_counter()
    weights = resolve_weights(cfg.model, cfg.checkpoint, cfg.random_weights, cfg.seed, device)
    layer = resolve_layer(cfg.repr_layer, weights.spec.num_layers)
    if weights.provenance["weights"] == "random":
        logger.warning("RANDOM WEIGHTS (seed %d): throughput is real, the embeddings are not", cfg.seed)

    outdir = cfg.outdir
    final_path = outdir / "embeddings.h5"
    fp = fingerprint(cfg, records, weights, precision, layer)
    if output.completed(final_path, fp):
        logger.warning("%s is already complete for this input and model; nothing to do", final_path)
        return {**(output.read_summary(outdir) or {}), "already_complete": True}
    outdir.mkdir(parents=True, exist_ok=True)
    partial = outdir / output.PARTIAL_DIR
    output.check_manifest(partial, fp)
    state = output.scan_partial(partial, len(records))
    todo = np.flatnonzero(~state.done)
    if state.done.any():
        logger.info("resuming: %d of %d sequences already checkpointed", int(state.done.sum()), len(records))

    model = build_model(weights, device, precision)
    del weights.state_dict
    compiled = cfg.resolved_compile(device)
    pad_to = cfg.token_budget if compiled else None
    if compiled:
        model.compile_kernels()
    load_seconds = time.perf_counter() - t_load
    warmup_seconds = warm_up(model, device, layer, pad_to)
    if device.type == "cuda":  # from here on, the peak is what the token budget costs, not weight loading
        load_peak_gb = torch.cuda.max_memory_allocated(device) / 1024**3
        torch.cuda.reset_peak_memory_stats(device)
    else:
        load_peak_gb = None

    telemetry = TelemetryLogger(outdir / "telemetry", run_id="rank0", target_sequences=cfg.target_sequences)
    run_meta = {
        "model": weights.provenance.get("model"), "weights": weights.provenance, "precision": precision,
        "repr_layer": layer, "device": str(device), "world_size": 1, "rank": 0,
        "fasta": str(cfg.fasta), "input_sha256": records.sha256, "num_input_sequences": len(records),
        "resumed_sequences": int(state.done.sum()), "truncated_sequences": records.truncated,
        "engine": {k: v for k, v in asdict(cfg).items() if k not in ("fasta", "outdir", "extra_metadata")},
        "model_load_seconds": load_seconds, "warmup_seconds": warmup_seconds, "load_peak_memory_gb": load_peak_gb, "compiled": compiled, "hardware": capture_hardware_info(), "versions": package_versions(),
        **cfg.extra_metadata,
    }
    telemetry.set_run_metadata(**run_meta)
    t_start = time.perf_counter()
    embed_indices(cfg, records, todo, model, device, layer, telemetry, pad_to=pad_to)
    elapsed = time.perf_counter() - t_start
    summary = telemetry.get_summary(elapsed)
    summary["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None
    telemetry.finalize(summary=summary)

    attrs = {
        "model": weights.provenance.get("model"), "weights": weights.provenance["weights"],
        "weights_provenance": weights.provenance, "precision": precision, "repr_layer": layer,
        "truncated_count": records.truncated, "input_sha256": records.sha256, "input_path": str(cfg.fasta),
        "num_sequences": len(records), "versions": package_versions(), "fingerprint": fp,
    }
    output.assemble(partial, final_path, records.ids, model.spec.embed_dim, attrs)
    output.discard_partial(partial)
    return summary
