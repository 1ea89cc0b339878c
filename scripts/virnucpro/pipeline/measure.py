"""Time-boxed throughput measurement: what a sweep point, the baseline and the optimal validation report.

One process builds the model once (the runner's own building blocks), warms up until the rate is stable (two
consecutive windows of `warmup_window_seconds` within `stable_tolerance`, bounded by `warmup_max_seconds`),
then measures `repeats` windows of `seconds` each. The batches are the workload's real packed batches, cycled
through the real DataLoader (the point's workers, prefetch, budget and buffer), so a fast GPU never runs out
of input however long the window; the embeddings are read back to the host, as in a run, and discarded.
Repeats are windows inside one job, not separate jobs: one model build and warm-up instead of R, and the
windows see the same process; what they cannot see (drift between jobs) is why a winner must also beat
`min_gain` and is measured again by the optimal validation. That job measures the recommended settings and the
baseline's in one process, windows alternating (`measure_configs`), so that its comparison does not depend on
how fast the sweep's baseline job happened to run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from virnucpro.data.fasta import read_fasta
from virnucpro.data.loader import PackedBatch, PackedBatchDataset, make_loader
from virnucpro.data.packing import SPECIAL_TOKENS, check_budget, pack_batches
from virnucpro.models.fp8 import recipe_facts
from virnucpro.data.windows import split_into_windows
from virnucpro.errors import UserError
from virnucpro.models.weights import resolve_weights
from virnucpro.pipeline.preemption import Preempted, StopFlag
from virnucpro.pipeline.runner import (
    EmbedConfig,
    build_model,
    gelu_form,
    rank_device,
    resolve_layer,
    set_compile_cache,
    warm_up,
)
from virnucpro.utils.gpu_monitor import NvitopMonitor
from virnucpro.utils.hardware import capture_hardware_info, package_versions
from virnucpro.utils.telemetry import percentile

#: Items of one pass of the cycled loader: effectively endless (the sampler walks range() lazily).
ENDLESS = 2**62


@dataclass
class Protocol:
    seconds: float = 3.0  # one measured window
    repeats: int = 3  # measured windows
    warmup_window_seconds: float = 1.0
    warmup_max_seconds: float = 10.0
    stable_tolerance: float = 0.02  # two consecutive warm-up windows within this relative change: stable

    def validate(self) -> None:
        if not self.seconds > 0 or not self.warmup_window_seconds > 0:
            raise UserError("--seconds and --warmup-window must be positive")
        if self.repeats < 1 or self.warmup_max_seconds < 0 or self.stable_tolerance < 0:
            raise UserError("--repeats must be >= 1, --warmup-max and --stable-tolerance >= 0")


class CycledBatches(PackedBatchDataset):
    """The batch plan repeated without end: item k is planned batch k mod len(plan)."""

    def __len__(self) -> int:
        return ENDLESS

    def __getitem__(self, k: int) -> PackedBatch:
        return super().__getitem__(k % len(self.batches))


class FinishedBatches:
    """(finish time, batch, loader wait ms) of each batch, in order. On CUDA the device is kept one batch ahead
    (batch k launched before batch k-1's rows are awaited, as in the runner's loop); iterate it under
    `torch.inference_mode()`. Raises `Preempted` between batches once `stop` is set. `drain()` awaits the batch
    still on the device, so that interleaved windows of two configurations never share the device."""

    def __init__(self, batches: Iterator[PackedBatch], model, device: torch.device, layer: int, stop=None):
        self.batches, self.model, self.device, self.layer, self.stop = batches, model, device, layer, stop
        self.pending = None

    def __iter__(self):
        return self

    def __next__(self) -> tuple[float, PackedBatch, float]:
        while True:
            if self.stop is not None and self.stop.is_set():
                raise Preempted(f"stopped by {self.stop.signal_name} while measuring; rerun to measure again")
            t0 = time.perf_counter()
            batch = next(self.batches)
            wait_ms = (time.perf_counter() - t0) * 1000
            pooled = self.model.embed(batch.to(self.device), self.layer)
            if self.device.type != "cuda":
                return time.perf_counter(), batch, wait_ms
            rows = torch.empty(pooled.shape, dtype=pooled.dtype, pin_memory=True)
            rows.copy_(pooled, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            previous, self.pending = self.pending, (event, batch, wait_ms)
            if previous is not None:
                previous[0].synchronize()
                return time.perf_counter(), previous[1], previous[2]

    def drain(self) -> tuple[float, PackedBatch, float] | None:
        """The batch still on the device, awaited (None when there is none)."""
        if self.pending is None:
            return None
        (event, batch, wait_ms), self.pending = self.pending, None
        event.synchronize()
        return time.perf_counter(), batch, wait_ms

    def close(self) -> None:
        """Drop the loader's iterator: its workers (which ignore SIGTERM) are shut down now, not at exit."""
        self.batches = self.pending = None


def run_window(
    stream: Iterator,
    seconds: float,
    start: float,
    token_budget: int,
    monitor: NvitopMonitor | None = None,
    drain: bool = False,
) -> dict:
    """Consume finished batches until `seconds` have passed since `start` (a perf_counter time); the window ends
    when the first batch finishing after that does, so it holds whole batches and the next one starts there.
    With `drain`, the batch still on the device is awaited and counted too (interleaved windows)."""
    items = []
    for item in stream:
        items.append(item)
        if item[0] - start >= seconds:
            break
    if drain and (last := stream.drain()) is not None:
        items.append(last)
    end = items[-1][0] if items else start
    tokens = sum(batch.num_tokens for _, batch, _ in items)
    sequences = sum(batch.num_sequences for _, batch, _ in items)
    waits = [wait_ms for _, _, wait_ms in items]
    packing = [batch.num_tokens / token_budget for _, batch, _ in items]
    elapsed = end - start
    utils = [
        s["gpu_util"]
        for s in (monitor.samples if monitor is not None else [])
        if start <= s["at"] <= end and s.get("gpu_util") is not None
    ]
    return {
        "start": start,
        "end": end,
        "seconds": elapsed,
        "batches": len(waits),
        "tokens": tokens,
        "sequences": sequences,
        "tokens_per_sec": tokens / elapsed if elapsed > 0 else None,
        "sequences_per_sec": sequences / elapsed if elapsed > 0 else None,
        "gpu_util": statistics.fmean(utils) if utils else None,
        "p95_wait_ms": percentile(waits, 95),
        "packing_efficiency": statistics.fmean(packing) if packing else None,
    }


def is_stable(previous: float, current: float, tolerance: float) -> bool:
    """Two consecutive warm-up rates agree: the later is within `tolerance` (relative) of the earlier."""
    return previous > 0 and abs(current - previous) <= tolerance * previous


def warm_until_stable(stream: Iterator, protocol: Protocol, token_budget: int, start: float) -> tuple[dict, float]:
    """Warm-up windows until two consecutive rates agree or `warmup_max_seconds` have passed (a window begun
    before the bound is finished). Returns the record and the time measurement starts."""
    rates: list[float] = []
    stable = False
    t0 = start
    while not stable and start - t0 < protocol.warmup_max_seconds:
        window = run_window(stream, protocol.warmup_window_seconds, start, token_budget)
        start = window["end"]
        rates.append(window["tokens_per_sec"] or 0.0)
        stable = len(rates) >= 2 and is_stable(rates[-2], rates[-1], protocol.stable_tolerance)
    return {"stabilised": stable, "seconds": start - t0, "window_tokens_per_sec": rates}, start


def measure_windows(
    stream: Iterator, protocol: Protocol, token_budget: int, monitor: NvitopMonitor | None = None
) -> dict:
    """Warm up, then `protocol.repeats` contiguous measured windows."""
    warmup, start = warm_until_stable(stream, protocol, token_budget, time.perf_counter())
    windows = []
    for _ in range(protocol.repeats):
        windows.append(run_window(stream, protocol.seconds, start, token_budget, monitor))
        start = windows[-1]["end"]
    return {"warmup": warmup, "windows": windows}


def measure_interleaved(arms: list[tuple[FinishedBatches, int]], protocol: Protocol, monitor=None) -> list[dict]:
    """Each (stream, token budget) warmed up until stable in turn, then `protocol.repeats` rounds of one window of
    each, the order reversed every other round (A B, B A, A B, ...): drift over the job (host load, clocks) hits
    every configuration alike, and a steady drift cancels over each two rounds instead of always favouring the
    one measured first. Every window drains its stream, so that none leaves work on the device for the next
    configuration's window."""
    warmups = []
    for stream, budget in arms:
        warmups.append(warm_until_stable(stream, protocol, budget, time.perf_counter())[0])
        stream.drain()
    windows: list[list[dict]] = [[] for _ in arms]
    for r in range(protocol.repeats):
        order = range(len(arms)) if r % 2 == 0 else reversed(range(len(arms)))
        for k in order:
            stream, budget = arms[k]
            windows[k].append(run_window(stream, protocol.seconds, time.perf_counter(), budget, monitor, True))
    return [{"warmup": w, "windows": ws} for w, ws in zip(warmups, windows)]


def _measured_model(cfg: EmbedConfig, device: torch.device, precision: str):
    """The model on `device`, compiled if `cfg` says so, warmed up; (model, weights, layer, compiled, pad_to)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    weights = resolve_weights(cfg.model, cfg.checkpoint, cfg.random_weights, cfg.seed, device)
    layer = resolve_layer(cfg.repr_layer, weights.spec.num_layers)
    model = build_model(weights, device, precision)
    weights.state_dict = {}
    compiled = cfg.resolved_compile(device)
    if compiled:
        set_compile_cache(cfg.compile_cache)
        model.compile_kernels(tanh_gelu_epilogue=not cfg.exact_gelu)
    pad_to = model.batch_tokens(cfg.token_budget)
    warm_up(model, device, layer, pad_to)
    return model, weights, layer, compiled, pad_to


@dataclass
class Arm:
    """One configuration of a measurement job: its model (shared with an earlier arm of the same precision), and
    its own batch plan and DataLoader, built as a sweep point builds them."""

    cfg: EmbedConfig
    precision: str
    model: object
    weights: object
    layer: int
    compiled: bool
    pad_to: int | None
    plan: list
    loader: object
    shared_model: bool


def _arms(cfgs: list[EmbedConfig], device: torch.device, seqs: list[bytes], lengths: list[int]) -> list[Arm]:
    """The arms of `cfgs`. The model is built once per precision: a second precision builds (and keeps) a
    second model, so the job holds both models' weights at once (ESM-2 3B: ~5.7 GB in fp16/bf16, ~11 GB in
    fp32) plus both configurations' activations; a shared compiled model is warmed up for each padded shape."""
    arms: list[Arm] = []
    for cfg in cfgs:
        check_budget(lengths, cfg.token_budget)
        precision = cfg.resolved_precision(device)
        same = next((arm for arm in arms if arm.precision == precision), None)
        if same is None:
            model, weights, layer, compiled, pad_to = _measured_model(cfg, device, precision)
        else:
            model, weights, layer, compiled = same.model, same.weights, same.layer, same.compiled
            pad_to = model.batch_tokens(cfg.token_budget)
            if pad_to != same.pad_to:
                warm_up(model, device, layer, pad_to)
        plan = pack_batches(lengths, cfg.token_budget, cfg.buffer_size)
        loader = make_loader(
            CycledBatches(seqs, plan, pad_to=pad_to),
            cfg.num_workers,
            cfg.prefetch_factor,
            pin_memory=device.type == "cuda",
        )
        arms.append(Arm(cfg, precision, model, weights, layer, compiled, pad_to, plan, loader, same is not None))
    return arms


def _workload(records, lengths, plan, token_budget: int) -> dict:
    """What the measured batches hold: the input's sequences and tokens, its batches and their packing."""
    plan_tokens = int(sum(lengths)) + SPECIAL_TOKENS * len(lengths)
    return {
        "sequences": len(records),
        "windows": len(lengths),  # = sequences unless --long-sequences chunk split some into windows
        "tokens": plan_tokens,
        "batches": len(plan),
        "packing_efficiency": plan_tokens / (len(plan) * token_budget),
        "input_sha256": records.sha256,
    }


def measure_configs(cfgs: list[EmbedConfig], protocol: Protocol, stop: StopFlag | None = None) -> list[dict]:
    """Measure each of `cfgs` (same input, model and device; different engine settings) in this one process:
    one configuration in contiguous windows; several interleaved (`measure_interleaved`), in the order given.
    Returns one measurement each; `peak_memory_gb` is the job's, over all of them."""
    t_start = time.perf_counter()
    protocol.validate()
    for cfg in cfgs:
        cfg.validate()
        if cfg.world_size not in (None, 1):
            raise UserError("a throughput measurement is one process on one device: --world-size must be 1")
    cfg = cfgs[0]
    device = rank_device(cfg.resolved_device(), 0, 1)  # "cuda" -> the current CUDA device, with its index
    records = read_fasta(cfg.fasta, cfg.long_sequences)
    # With --long-sequences chunk the engine embeds windows: measure those (a window counts as a sequence here).
    seqs = split_into_windows(records.seqs, cfg.window_overlap if cfg.long_sequences == "chunk" else None).seqs
    lengths = [len(s) for s in seqs]
    arms = _arms(cfgs, device, seqs, lengths)
    monitor = NvitopMonitor([device.index] if device.type == "cuda" else [])
    startup = time.perf_counter() - t_start
    streams = [FinishedBatches(iter(arm.loader), arm.model, device, arm.layer, stop) for arm in arms]
    try:
        with monitor.start(), torch.inference_mode():
            if len(arms) == 1:
                results = [measure_windows(streams[0], protocol, cfg.token_budget, monitor)]
            else:
                results = measure_interleaved(
                    [(stream, arm.cfg.token_budget) for stream, arm in zip(streams, arms)], protocol, monitor
                )
    finally:
        for stream in streams:
            stream.close()  # drops the last reference to the loader's iterator: its workers (which ignore
        del streams  # SIGTERM) are shut down now, not at exit
    peak = torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None
    common = {
        "protocol": asdict(protocol),
        "startup_seconds": startup,
        "device": str(device),
        "gpu_monitor": monitor.identity(),
        "peak_memory_gb": peak,
        "hardware": capture_hardware_info(),
        "versions": package_versions(),
    }
    workloads = [_workload(records, lengths, arm.plan, arm.cfg.token_budget) for arm in arms]
    return [
        {**result, **common, **_arm_facts(arm, device, workload, k, len(arms))}
        for k, (arm, result, workload) in enumerate(zip(arms, results, workloads))
    ]


def _arm_facts(arm: Arm, device: torch.device, workload: dict, position: int, arms: int) -> dict:
    """What one configuration's measurement records besides its windows: precision, model, workload, and where
    it stood among interleaved ones."""
    return {
        "precision": arm.precision,
        **recipe_facts(arm.precision),
        "gelu": gelu_form(arm.cfg, device, arm.precision),
        "compiled": arm.compiled,
        "weights": arm.weights.provenance,
        "model_spec": asdict(arm.weights.spec),
        "workload": workload,
        **({"interleaved": {"position": position, "of": arms, "shared_model": arm.shared_model}} if arms > 1 else {}),
    }
