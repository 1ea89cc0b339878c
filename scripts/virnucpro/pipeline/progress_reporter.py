"""Live progress of an embedding job (seed plan 10-01): one display for the whole job, whatever the rank count.

On a terminal it is a rich progress bar (sequences, tokens/s, GPU %, packing %, time remaining). In a
non-interactive log, such as a Slurm job's output file, redrawing a bar would write thousands of carriage
returns, so it prints one compact line every `interval` seconds instead, plus a last one at the end.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from virnucpro.utils.gpu_monitor import NvitopMonitor
    from virnucpro.utils.telemetry import TelemetryLogger

logger = logging.getLogger("virnucpro.pipeline.progress_reporter")


def _hms(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _pct(value: float | None) -> str:
    return "N/A" if value is None else f"{value:.1f}%"


class InferenceProgressReporter:
    """Progress of `total_sequences`, fed by `update()` with cumulative counts and the latest batch's metrics.

    GPU utilisation comes from `monitor` when given (this process's GPUs), else from the batches' `gpu_util`
    (the launcher forwards each rank's); with several ranks the display shows their mean. With `telemetry`,
    each update's batch metrics are also recorded there (for callers that have no logger of their own).
    """

    def __init__(
        self,
        total_sequences: int,
        monitor: "NvitopMonitor | None" = None,
        telemetry: "TelemetryLogger | None" = None,
        *,
        description: str = "embedding",
        stream: IO[str] | None = None,
        interactive: bool | None = None,
        interval: float = 10.0,
    ):
        self.total_sequences = total_sequences
        self.monitor, self.telemetry = monitor, telemetry
        self.description = description
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.interval = interval
        self.sequences = 0
        self.tokens = 0
        self.batches = 0
        self._gpu_by_rank: dict[int, float] = {}
        self._packing: list[float] = []
        self._t0 = time.perf_counter()
        self._last_line = float("-inf")
        self._emitted_at = -1
        self._first: tuple[float, int, int] | None = None  # (time, tokens, sequences) at the first batch
        self.progress: Progress | None = None
        self.task_id = None

    # -- figures shown ------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def tokens_per_sec(self) -> float | None:
        """Rate since the first batch finished (model loading and compilation before it are not throughput)."""
        if self._first is None:
            return None
        t = time.perf_counter() - self._first[0]
        tokens = self.tokens - self._first[1]
        return tokens / t if t > 0 and tokens else None

    def gpu_util(self) -> float | None:
        if self.monitor is not None and self.monitor.available:
            return self.monitor.gpu_util()
        return statistics.fmean(self._gpu_by_rank.values()) if self._gpu_by_rank else None

    def packing_pct(self) -> float | None:
        return 100 * statistics.fmean(self._packing) if self._packing else None

    def eta_seconds(self) -> float | None:
        if self._first is None:
            return None
        t = time.perf_counter() - self._first[0]
        done = self.sequences - self._first[2]
        if done <= 0 or t <= 0:
            return None
        return (self.total_sequences - self.sequences) / (done / t)

    def line(self) -> str:
        """The compact one-line state used in non-interactive logs."""
        done = 100 * self.sequences / self.total_sequences if self.total_sequences else 100.0
        tps = self.tokens_per_sec()
        rate = "?" if tps is None else f"{tps:,.0f}"  # one batch gives no rate yet: unknown, not 0
        return (
            f"[{self.description}] {self.sequences:,}/{self.total_sequences:,} seq ({done:.1f}%) | "
            f"{rate} tok/s | GPU {_pct(self.gpu_util())} | packing {_pct(self.packing_pct())} | "
            f"elapsed {_hms(self.elapsed())} | ETA {_hms(self.eta_seconds())}"
        )

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> "InferenceProgressReporter":
        self._t0 = time.perf_counter()
        if self.interactive:
            self.progress = Progress(
                TextColumn("[bold blue]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("[yellow]{task.fields[tokens_per_sec]:>10,.0f} tok/s"),
                TextColumn("[green]{task.fields[gpu]} GPU"),
                TextColumn("[cyan]{task.fields[packing]} pack"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self.progress.start()
            self.task_id = self.progress.add_task(
                self.description, total=self.total_sequences, tokens_per_sec=0.0, gpu="N/A", packing="N/A"
            )
        else:
            self._emit()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self._refresh()
            self.progress.stop()
        elif self._emitted_at != self.batches:  # the final state, unless that exact line was just printed
            self._emit()

    def _emit(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last_line = time.perf_counter()
        self._emitted_at = self.batches

    def _refresh(self) -> None:
        self.progress.update(
            self.task_id,
            completed=self.sequences,
            tokens_per_sec=self.tokens_per_sec() or 0.0,
            gpu=_pct(self.gpu_util()),
            packing=_pct(self.packing_pct()),
        )

    def update(self, sequences_processed: int, batch_metrics: dict | None = None) -> None:
        """`sequences_processed` is cumulative; `batch_metrics` the batch just finished (tokens, gpu, packing)."""
        self.sequences = sequences_processed
        self.batches += 1
        if batch_metrics:
            self.tokens += int(batch_metrics.get("num_tokens") or 0)
            if batch_metrics.get("gpu_util") is not None:
                self._gpu_by_rank[int(batch_metrics.get("rank", 0))] = float(batch_metrics["gpu_util"])
            if batch_metrics.get("packing_efficiency") is not None:
                self._packing.append(float(batch_metrics["packing_efficiency"]))
            if self.telemetry is not None:
                self.telemetry.record_batch(self.batches - 1, batch_metrics)
        if self._first is None:
            self._first = (time.perf_counter(), self.tokens, self.sequences)
        if self.progress is not None:
            self._refresh()
        elif time.perf_counter() - self._last_line >= self.interval:
            self._emit()


def create_progress_callback(reporter: InferenceProgressReporter) -> Callable[..., None]:
    """Adapter for `callback(batch_idx, num_sequences, batch_metrics=None)`: tracks the cumulative count."""
    done = 0

    def callback(batch_idx: int, num_sequences: int, batch_metrics: dict | None = None) -> None:
        nonlocal done
        done += num_sequences
        reporter.update(done, batch_metrics)

    return callback
