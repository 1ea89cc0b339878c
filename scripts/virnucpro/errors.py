"""Exit codes and the user-facing error type: one line on stderr, no traceback."""

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error (a bug): traceback shown
EXIT_USAGE = 2  # bad input or bad options
EXIT_OOM = 3  # out of memory (CUDA or host); status.json says so
EXIT_IO = 74  # the output could not be written (disk full, quota, read-only); rerun to resume (EX_IOERR)
EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGINT after flushing checkpoints; rerun to resume (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped at once (128 + SIGINT, as shells report it); rerun to resume


class UserError(Exception):
    """A problem with the user's input or options; the message is the whole explanation."""

    exit_code = EXIT_USAGE


class OutputError(UserError):
    """The output could not be written (disk full, quota, a deleted directory): one line, rerun to resume."""

    exit_code = EXIT_IO
