"""One spawned process per device, watched by the parent.

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
from typing import TYPE_CHECKING, Callable

from virnucpro.errors import EXIT_OOM, EXIT_PREEMPTED, EXIT_USAGE, UserError, out_of_memory
from virnucpro.pipeline.preemption import Preempted, StopFlag

if TYPE_CHECKING:
    from virnucpro.pipeline.runner import RankJob

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


def _rank_main(job: "RankJob", events, log_level: int, parent_pid: int) -> None:
    """Entry point of a spawned rank: run it, report how it ended, exit with the matching code."""
    logging.basicConfig(level=log_level, format=f"%(levelname)s rank{job.rank} %(name)s: %(message)s")
    import torch

    from virnucpro.pipeline.runner import run_rank

    fault = _injected_fault(job.rank)
    sent = 0

    def send_batch(metrics: dict) -> None:
        nonlocal sent
        events.put(("batch", job.rank, metrics))
        sent += 1
        if fault and sent >= fault[1]:
            if fault[0] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault after {sent} batches ({FAULT_ENV})")

    with StopFlag() as stop:
        die_with_parent(parent_pid, stop)
        try:
            summary = run_rank(job, stop, send_batch)
        except Preempted as exc:
            events.put(("preempted", job.rank, str(exc)))
            code = EXIT_PREEMPTED
        except UserError as exc:
            events.put(("user_error", job.rank, str(exc), exc.exit_code))
            code = exc.exit_code
        except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
            events.put(("oom", job.rank, *out_of_memory(exc)))
            code = EXIT_OOM
        except BaseException as exc:  # a bug: send the traceback, the parent prints it
            events.put(("error", job.rank, f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()}"))
            code = 1
        else:
            events.put(("done", job.rank, summary))
            code = 0
    if os.getppid() != parent_pid:  # nobody reads the queue: waiting for its feeder could block forever
        os._exit(code)
    events.close()
    events.join_thread()  # make sure the last message is out before the process ends
    sys.exit(code)


def launch_ranks(
    jobs: list["RankJob"], stop: StopFlag, on_batch: Callable[[dict], None] | None = None, poll_seconds: float = 0.2
) -> list[dict]:
    """Run each job in its own spawned process; return their summaries in rank order or raise the first failure."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    events = ctx.Queue()
    level = logging.getLogger().getEffectiveLevel()
    procs = [
        ctx.Process(target=_rank_main, args=(job, events, level, os.getpid()), name=f"virnucpro-rank{job.rank}")
        for job in jobs
    ]
    for p in procs:
        p.start()
    summaries: dict[int, dict] = {}
    ended: dict[int, tuple] = {}  # rank -> the message it ended with
    failures: list[BaseException] = []
    stopping_since: float | None = None

    def handle(msg: tuple) -> None:
        kind, rank = msg[0], msg[1]
        if kind == "batch":
            if on_batch is not None:
                on_batch(msg[2])
            return
        ended[rank] = msg
        if kind == "done":
            summaries[rank] = msg[2]
        elif kind != "preempted":
            failures.append(_as_exception(msg))

    def next_message(timeout: float) -> tuple | None:
        try:
            return events.get(timeout=timeout)
        except queue.Empty:
            return None

    try:
        while len(ended) < len(procs):
            msg = next_message(poll_seconds)
            if msg is not None:
                handle(msg)
            for r, p in enumerate(procs):  # a rank that died without a word (SIGKILL, segfault, OOM killer)
                if r in ended or p.exitcode is None:
                    continue
                deadline = time.monotonic() + 1.0  # its last messages may still be in the pipe
                while r not in ended and time.monotonic() < deadline:
                    if (msg := next_message(0.1)) is not None:
                        handle(msg)
                if r not in ended:
                    ended[r] = ("died", r, p.exitcode)
                    if not stop.is_set():
                        failures.append(
                            RankFailed(f"rank {r} died with {_signal_name(p.exitcode)} and reported nothing")
                        )
            if (failures or stop.is_set()) and stopping_since is None:
                stopping_since = time.monotonic()
                if failures:
                    logger.error("a rank failed, stopping the others: %s", str(failures[0]).splitlines()[0])
                for r, p in enumerate(procs):
                    if r not in ended and p.is_alive():
                        os.kill(p.pid, signal.SIGTERM)  # they flush their checkpoints and exit 75
            if stopping_since is not None and time.monotonic() - stopping_since > STOP_GRACE_SECONDS:
                for r, p in enumerate(procs):
                    if p.is_alive():
                        logger.error("rank %d did not stop within %.0f s: killing it", r, STOP_GRACE_SECONDS)
                        p.kill()
                    ended.setdefault(r, ("killed", r))
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    if failures:
        raise failures[0]
    if len(summaries) < len(procs):
        raise Preempted(f"stopped by {stop.signal_name or 'a signal to the ranks'}; finished rows are checkpointed")
    return [summaries[r] for r in range(len(procs))]


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
