"""Exit codes and the user-facing error type: one line on stderr, no traceback."""

EXIT_OK = 0
EXIT_FAILURE = 1  # a DataLoader worker that died (one line), a failed rank, or an unexpected error (a bug: traceback)
EXIT_USAGE = 2  # bad input or bad options
EXIT_OOM = 3  # out of memory (CUDA or host); status.json says so
EXIT_IO = 74  # the output could not be written (disk full, quota, read-only); rerun to resume (EX_IOERR)
EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGINT after flushing checkpoints; rerun to resume (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped at once (128 + SIGINT, as shells report it); rerun to resume


class UserError(Exception):
    """A problem with the user's input or options; the message is the whole explanation."""

    exit_code = EXIT_USAGE


class OtherRunsResults(UserError):
    """The output directory holds another configuration's results (checkpoints or a finished file): `embed`
    refuses to mix or replace them; a workflow job that owns the directory may discard them instead."""


class OutputError(UserError):
    """The output could not be written (disk full, quota, a deleted directory): one line, rerun to resume."""

    exit_code = EXIT_IO


def memory_limited() -> bool:
    """Whether this process has an address-space or data limit (`ulimit -v`, `ulimit -d`)."""
    import resource

    return any(resource.getrlimit(r)[0] != resource.RLIM_INFINITY for r in (resource.RLIMIT_AS, resource.RLIMIT_DATA))


#: Python's error when a thread cannot be created (pthread_create failed, EAGAIN).
THREAD_NOT_STARTED = "can't start new thread"


def thread_out_of_memory(exc: BaseException, limited: bool) -> bool:
    """A thread that could not start is out of memory under a memory limit (`limited`): its stack could not be
    mapped (the checkpoint writer's thread, 1 run in 20 of `embed` under ulimit -v 740 or 800 MB). Without a
    limit it may be a process-count limit: not memory, a bug to show."""
    return isinstance(exc, RuntimeError) and THREAD_NOT_STARTED in str(exc) and limited


#: torch's RuntimeError when the host allocator's malloc failed (ENOMEM), e.g. a model's weights under a limit.
CPU_ALLOCATION_FAILED = "DefaultCPUAllocator: can't allocate memory"


def host_allocation_failed(exc: BaseException) -> bool:
    """torch could not allocate a CPU tensor: out of host memory, limit or not (it was a traceback, exit 1)."""
    return isinstance(exc, RuntimeError) and CPU_ALLOCATION_FAILED in str(exc)


def out_of_memory(exc: BaseException) -> tuple[str, float | None] | None:
    """(one-line description, peak GPU memory in GB or None) when `exc` is an out-of-memory error (CUDA or
    host, `thread_out_of_memory`, `host_allocation_failed`), else None: the one test for it, used by each rank
    and by the job around them (a rank's error carries the rank's own peak as `peak_memory_gb`)."""
    if thread_out_of_memory(exc, memory_limited()):
        return f"RuntimeError: {THREAD_NOT_STARTED}", None
    if host_allocation_failed(exc):
        return f"RuntimeError: {CPU_ALLOCATION_FAILED}", None
    import torch  # here, not at the top: this module stays importable without torch

    if not isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return None
    peak = getattr(exc, "peak_memory_gb", None)
    if peak is None and torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 1024**3
    return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", peak
