"""The launcher runs any picklable worker, one spawned process per rank, and fails fast (toy workers, on CPU)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from virnucpro.errors import EXIT_IO, OutputError, UserError
from virnucpro.pipeline.launcher import RankFailed, launch_ranks
from virnucpro.pipeline.preemption import Preempted, StopFlag


def square_worker(job: tuple[int, str], stop, on_batch) -> dict:
    """Report two batches, then return a summary computed from the job."""
    rank, _ = job
    for _ in range(2):
        on_batch({"rank": rank, "num_sequences": 1})
    return {"rank": rank, "square": rank * rank}


def rank1_fails_worker(job: tuple[int, str], stop, on_batch) -> dict:
    """Rank 1 raises at once; rank 0 waits to be stopped and records that it was."""
    rank, scratch = job
    if rank == 1:
        raise RuntimeError("toy failure")
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    Path(scratch, "rank0_stopped").write_text(str(stop.is_set()))
    raise Preempted("stopped")


def output_error_worker(job: tuple[int, str], stop, on_batch) -> dict:
    """Every rank fails as an unwritable output would."""
    raise OutputError(f"rank {job[0]}: disk full")


def test_two_ranks_return_summaries_in_rank_order(tmp_path):
    batches = []
    with StopFlag() as stop:
        summaries = launch_ranks(square_worker, [(0, str(tmp_path)), (1, str(tmp_path))], stop, batches.append)
    assert summaries == [{"rank": 0, "square": 0}, {"rank": 1, "square": 1}]
    assert sorted(b["rank"] for b in batches) == [0, 0, 1, 1]


def test_a_failing_rank_stops_the_other_and_raises_rankfailed(tmp_path):
    t0 = time.monotonic()
    with StopFlag() as stop, pytest.raises(RankFailed, match=r"rank 1 failed: RuntimeError: toy failure"):
        launch_ranks(rank1_fails_worker, [(0, str(tmp_path)), (1, str(tmp_path))], stop)
    assert (tmp_path / "rank0_stopped").read_text() == "True"  # told to stop (SIGTERM), not left running
    assert time.monotonic() - t0 < 30  # well before the toy's own 30 s deadline


def test_a_rank_user_error_keeps_its_exit_code(tmp_path):
    with StopFlag() as stop, pytest.raises(UserError) as info:
        launch_ranks(output_error_worker, [(0, str(tmp_path)), (1, str(tmp_path))], stop)
    assert info.value.exit_code == EXIT_IO
    assert "disk full" in str(info.value)


def test_a_rank_reports_a_dead_loader_worker_in_one_line_and_a_thread_under_a_memory_limit_as_oom(monkeypatch):
    """A rank's WorkerDied is the whole story (no traceback); "can't start new thread" is out of memory only
    under a memory limit (`errors.thread_out_of_memory`), as in the job around the ranks."""
    import queue
    import signal

    from virnucpro import errors
    from virnucpro.data.loader import WorkerDied
    from virnucpro.errors import EXIT_FAILURE, EXIT_OOM
    from virnucpro.pipeline.launcher import _run_and_report

    def report(exc: BaseException, limited: bool) -> tuple[int, tuple]:
        def worker(job, stop, on_batch):
            raise exc

        monkeypatch.setattr(errors, "memory_limited", lambda: limited)
        events: queue.Queue = queue.Queue()
        code = _run_and_report(worker, 1, None, None, None, events)
        return code, events.get_nowait()

    died = WorkerDied(0, 7, -signal.SIGKILL)
    assert report(died, False) == (EXIT_FAILURE, ("error", 1, str(died)))
    no_thread = RuntimeError("can't start new thread")
    assert report(no_thread, True) == (EXIT_OOM, ("oom", 1, "RuntimeError: can't start new thread", None))
    code, (kind, rank, text) = report(no_thread, False)  # without a limit: a bug, with its traceback
    assert (code, kind, rank) == (EXIT_FAILURE, "error", 1) and "Traceback" in text
