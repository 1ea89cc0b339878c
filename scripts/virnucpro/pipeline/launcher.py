"""One spawned process per device, watched by the parent; each runs the worker it is handed (the launcher
knows nothing of embedding: the runner hands it `run_rank`).

Ranks report over one queue: every finished batch (for the job's single progress display), then `done` with
their summary or `error` with what went wrong. If a rank fails, or dies without a word (SIGKILL, segfault),
the parent stops the others with SIGTERM (they flush their checkpoints), waits a bounded time, and raises
that rank's error: the command never hangs and never assembles a partial result. A SIGTERM to the parent
(Slurm signals the whole job step) is forwarded, and once every rank has flushed the parent raises
`Preempted` too. A rank dies with its parent: if the parent is SIGKILLed (OOM killer, `kill -9`), the kernel
sends the rank SIGTERM (it flushes and exits), so no orphan keeps a GPU.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

from virnucpro.errors import EXIT_FAILURE, EXIT_OK, EXIT_OOM, EXIT_PREEMPTED, EXIT_USAGE, UserError, out_of_memory
from virnucpro.pipeline.preemption import Preempted, StopFlag

logger = logging.getLogger("virnucpro.pipeline.launcher")

#: How long ranks get to flush and exit after being told to stop, before they are killed.
STOP_GRACE_SECONDS = 60.0


class RankFailed(RuntimeError):
    """A rank died or raised; the message names the rank and carries its error."""


class RankOutOfMemory(MemoryError):
    """A rank ran out of memory (CUDA or host)."""

    def __init__(self, message: str, peak_memory_gb: float | None):
        super().__init__(message)
        self.peak_memory_gb = peak_memory_gb


#: How long an orphaned rank (its parent gone) gets to flush and exit before it is ended outright.
ORPHAN_GRACE_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, stop: StopFlag, poll_seconds: float = 0.5) -> None:
    """Make this process stop when `parent_pid` ends: the kernel's parent-death signal (Linux), plus a watchdog
    thread polling os.getppid() where that is unavailable or the parent died before it was armed. The stop is
    a SIGTERM-like flush; after `ORPHAN_GRACE_SECONDS` the process exits regardless."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog alone
        pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        logger.error("the launcher (pid %d) is gone: stopping this rank", parent_pid)
        stop.set("parent exit")
        time.sleep(ORPHAN_GRACE_SECONDS)
        os._exit(EXIT_PREEMPTED)

    threading.Thread(target=watch, name="virnucpro-parent-watchdog", daemon=True).start()


#: Test hook: "RANK:BATCHES:crash|kill" makes that rank raise (or SIGKILL itself) after that many batches.
FAULT_ENV = "VIRNUCPRO_INJECT_RANK_FAULT"


def _injected_fault(rank: int) -> tuple[str, int] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    r, batches, kind = spec.split(":")
    return (kind, int(batches)) if int(r) == rank else None


#: What a rank runs: `worker(job, stop, on_batch) -> summary`; a top-level function (it is pickled for spawn).
Worker = Callable[[Any, StopFlag, Callable[[dict], None]], dict]


def _rank_main(worker: Worker, rank: int, job: Any, events, log_level: int, parent_pid: int) -> None:
    """Entry point of a spawned rank: run the worker, report how it ended, exit with the matching code."""
    logging.basicConfig(level=log_level, format=f"%(levelname)s rank{rank} %(name)s: %(message)s")
    fault = _injected_fault(rank)
    sent = 0

    def send_batch(metrics: dict) -> None:
        nonlocal sent
        events.put(("batch", rank, metrics))
        sent += 1
        if fault and sent >= fault[1]:
            if fault[0] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault after {sent} batches ({FAULT_ENV})")

    with StopFlag() as stop:
        die_with_parent(parent_pid, stop)
        code = _run_and_report(worker, rank, job, stop, send_batch, events)
    if os.getppid() != parent_pid:  # nobody reads the queue: waiting for its feeder could block forever
        os._exit(code)
    events.close()
    events.join_thread()  # make sure the last message is out before the process ends
    sys.exit(code)


def _run_and_report(worker: Worker, rank: int, job: Any, stop: StopFlag, send_batch, events) -> int:
    """Run the worker; put on the queue the message that says how it ended; return the rank's exit code."""
    from virnucpro.data.loader import WorkerDied

    try:
        summary = worker(job, stop, send_batch)
    except Preempted as exc:
        events.put(("preempted", rank, str(exc)))
        return EXIT_PREEMPTED
    except WorkerDied as exc:  # how the worker ended is the whole story: no traceback
        events.put(("error", rank, str(exc)))
        return EXIT_FAILURE
    except UserError as exc:
        events.put(("user_error", rank, str(exc), exc.exit_code))
        return exc.exit_code
    except BaseException as exc:
        oom = out_of_memory(exc)  # CUDA or host memory, or a thread that could not start under a memory limit
        if oom is not None:
            events.put(("oom", rank, *oom))
            return EXIT_OOM
        # a bug: send the traceback, the parent prints it
        events.put(("error", rank, f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()}"))
        return EXIT_FAILURE
    events.put(("done", rank, summary))
    return EXIT_OK


class _Watch:
    """The parent's side: what each rank said, how it ended, the failures, and when stopping the others began."""

    def __init__(self, procs: list, events, stop: StopFlag, on_batch: Callable[[dict], None] | None):
        self.procs, self.events, self.stop, self.on_batch = procs, events, stop, on_batch
        self.summaries: dict[int, dict] = {}
        self.ended: dict[int, tuple] = {}  # rank -> the message it ended with
        self.failures: list[BaseException] = []
        self.stopping_since: float | None = None

    def running(self) -> bool:
        return len(self.ended) < len(self.procs)

    def handle(self, msg: tuple) -> None:
        kind, rank = msg[0], msg[1]
        if kind == "batch":
            if self.on_batch is not None:
                self.on_batch(msg[2])
            return
        self.ended[rank] = msg
        if kind == "done":
            self.summaries[rank] = msg[2]
        elif kind != "preempted":
            self.failures.append(_as_exception(msg))

    def receive(self, timeout: float) -> None:
        try:
            self.handle(self.events.get(timeout=timeout))
        except queue.Empty:
            pass

    def reap_silent(self) -> None:
        """Mark ranks that died without a word (SIGKILL, segfault, OOM killer) once their pipe is drained."""
        for r, p in enumerate(self.procs):
            if r in self.ended or p.exitcode is None:
                continue
            deadline = time.monotonic() + 1.0  # its last messages may still be in the pipe
            while r not in self.ended and time.monotonic() < deadline:
                self.receive(0.1)
            if r not in self.ended:
                self.ended[r] = ("died", r, p.exitcode)
                if not self.stop.is_set():
                    self.failures.append(
                        RankFailed(f"rank {r} died with {_signal_name(p.exitcode)} and reported nothing")
                    )

    def stop_others(self) -> None:
        """After a failure or a signal, SIGTERM the ranks still running (they flush checkpoints and exit 75)."""
        if not (self.failures or self.stop.is_set()) or self.stopping_since is not None:
            return
        self.stopping_since = time.monotonic()
        if self.failures:
            logger.error("a rank failed, stopping the others: %s", str(self.failures[0]).splitlines()[0])
        for r, p in enumerate(self.procs):
            if r not in self.ended and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    def kill_after_grace(self) -> None:
        if self.stopping_since is None or time.monotonic() - self.stopping_since <= STOP_GRACE_SECONDS:
            return
        for r, p in enumerate(self.procs):
            if p.is_alive():
                logger.error("rank %d did not stop within %.0f s: killing it", r, STOP_GRACE_SECONDS)
                p.kill()
            self.ended.setdefault(r, ("killed", r))

    def result(self) -> list[dict]:
        if self.failures:
            raise self.failures[0]
        if len(self.summaries) < len(self.procs):
            raise Preempted(
                f"stopped by {self.stop.signal_name or 'a signal to the ranks'}; finished rows are checkpointed"
            )
        return [self.summaries[r] for r in range(len(self.procs))]


def launch_ranks(
    worker: Worker,
    jobs: list,
    stop: StopFlag,
    on_batch: Callable[[dict], None] | None = None,
    poll_seconds: float = 0.2,
) -> list[dict]:
    """Run `worker(jobs[r], stop, on_batch)` in spawned process r; return the summaries in rank order or raise
    the first failure (RankFailed, RankOutOfMemory, a rank's UserError with its exit code, or Preempted)."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    events = ctx.Queue()
    level = logging.getLogger().getEffectiveLevel()
    procs = [
        ctx.Process(target=_rank_main, args=(worker, r, job, events, level, os.getpid()), name=f"virnucpro-rank{r}")
        for r, job in enumerate(jobs)
    ]
    for p in procs:
        p.start()
    watch = _Watch(procs, events, stop, on_batch)
    try:
        while watch.running():
            watch.receive(poll_seconds)
            watch.reap_silent()
            watch.stop_others()
            watch.kill_after_grace()
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return watch.result()


def _signal_name(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit {exitcode}"


def _as_exception(msg: tuple) -> BaseException:
    kind, rank = msg[0], msg[1]
    if kind == "user_error":
        error = UserError(msg[2])
        error.exit_code = msg[3] if len(msg) > 3 else EXIT_USAGE  # e.g. 74 for an output that cannot be written
        return error
    if kind == "oom":
        return RankOutOfMemory(f"rank {rank}: {msg[2]}", msg[3])
    return RankFailed(f"rank {rank} failed: {msg[2]}")
