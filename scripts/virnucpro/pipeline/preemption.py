"""Graceful stop on SIGTERM (Slurm preemption, time limit, `scancel`) and Ctrl-C.

The handler only raises a flag; the embedding loop checks it between batches, finishes the batch in flight,
flushes its checkpoint chunk and raises `Preempted`, which the CLI turns into exit code 75
(`EXIT_PREEMPTED`). Rerunning the same command resumes from the chunks. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading

from virnucpro.errors import EXIT_PREEMPTED

logger = logging.getLogger("virnucpro.pipeline.preemption")


class Preempted(Exception):
    """Stopped by a signal after flushing what was computed; the run can be resumed."""

    exit_code = EXIT_PREEMPTED


class StopFlag:
    """Set by SIGTERM/SIGINT while entered (`with StopFlag() as stop:`); handlers live in the main thread only.

    SIGHUP (the terminal or ssh session closed) and SIGUSR1 (Slurm's `--signal=USR1@SECONDS` warning before the
    time limit) are treated like SIGTERM: flush and stop, where their default action would kill mid-chunk."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict = {}

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, signal_name: str = "request") -> None:
        if not self._event.is_set():
            self.signal_name = signal_name
        self._event.set()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if not self.is_set():
            logger.warning("%s received: finishing the current batch, flushing the checkpoint, then stopping", name)
        self.set(name)
        if signum == signal.SIGINT:  # a second Ctrl-C means "now"
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                if sig in (signal.SIGHUP, signal.SIGUSR1) and signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # e.g. started under nohup: the user asked to survive a closed terminal
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
