"""`virnucpro` command line: make-fasta, embed, bench, and the workflow's jobs (run-point, analyse-run, ...).

Exit codes: 0 ok; 2 bad input or usage (one line on stderr); 3 out of memory; 74 the output could not be written
(disk full, quota; rerun to resume); 75 stopped by SIGTERM/SIGINT after flushing checkpoints (rerun to resume);
130 a second Ctrl-C (stopped at once); 1 a DataLoader worker that died (one line; rerun to resume), a failed
rank, or anything unexpected (with its traceback, since that is a bug).

This module parses, dispatches to `virnucpro.commands.<name>.run` and maps errors to exit codes; each subcommand
lives in its own module there.
"""

from __future__ import annotations

import errno
import importlib
import logging
import signal
import os
import sys
from typing import NoReturn

from virnucpro import __version__
from virnucpro.argtypes import OneLineParser
from virnucpro.commands import MODULES, help_style
from virnucpro.commands.embed import EXAMPLE as EMBED_EXAMPLE
from virnucpro.errors import EXIT_INTERRUPTED, EXIT_OOM, EXIT_PREEMPTED, EXIT_USAGE, UserError
from virnucpro.errors import host_allocation_failed, memory_limited, thread_out_of_memory

#: Commands that only turn files into files: an OSError there is about a path the user gave (exit 2).
FILE_COMMANDS = {"make-fasta", "sample", "analyse-run", "best-config", "recommend", "report", "merge-telemetry"}
FILE_COMMANDS |= {"scaling"}
FILE_COMMANDS |= {"shard", "gather", "materialise", "embed-report"}
#: Commands whose Ctrl-C keeps checkpointed rows for a rerun.
RESUMABLE = ("embed", "run-point", "embed-shard")


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="virnucpro",
        description=__doc__.splitlines()[0],
        **help_style(f"{EMBED_EXAMPLE}\n  virnucpro embed --help"),
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"virnucpro {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in MODULES:
        importlib.import_module(f"virnucpro.commands.{name}").register(sub)
    return parser


def _stop_during_startup(signum, frame) -> None:
    """Nothing computed yet, nothing to flush: say so (it exited 75 silently) and stop: "rerun to resume"."""
    print(
        f"virnucpro: stopped by {signal.Signals(signum).name} while starting; rerun the same command", file=sys.stderr
    )
    raise SystemExit(EXIT_PREEMPTED)


#: CPython's SystemError for an error it lost (a C function failed and no exception was set).
LOST_ERROR = ("error return without exception set", "without setting an exception")


def _host_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, a shared library that could not be mapped (torch's import under `ulimit -v`), or under a
    memory limit a MemoryError that CPython lost or a thread that could not start: torch's import under
    `ulimit -v 600 MB` ended about 1 run in 200 in "SystemError: error return without exception set" (CPython
    3.11; without a limit that SystemError stays a bug: exit 1 and its traceback); for threads see
    `errors.thread_out_of_memory`."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    text = str(exc)
    if isinstance(exc, SystemError):
        return any(lost in text for lost in LOST_ERROR) and memory_limited()
    if isinstance(exc, RuntimeError):
        return host_allocation_failed(exc) or thread_out_of_memory(exc, memory_limited())
    return isinstance(exc, (ImportError, OSError)) and ("failed to map segment" in text or "allocate memory" in text)


def _system_error(exc: BaseException, command: str | None) -> int | None:
    """The exit code of an ImportError or OSError that is the user's (a path of a file command); None: a bug.
    Out of host memory (`_host_out_of_memory`) is not returned but ended here (`_exit_out_of_memory`)."""
    if _host_out_of_memory(exc):
        _exit_out_of_memory(exc)
    if isinstance(exc, OSError) and command in FILE_COMMANDS:
        where = exc.filename2 or exc.filename
        print(f"virnucpro: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    return None


OOM_HINT = "is a memory limit set, e.g. ulimit -v?"
#: The out-of-memory line when not even the error's name can be formatted: encoded now, while there is memory.
OOM_LINE = f"virnucpro: out of memory ({OOM_HINT})\n".encode()


def _exit_out_of_memory(exc: BaseException) -> NoReturn:
    """Out of host memory: one line on stderr and exit 3 at once, whatever else fails for lack of memory.

    Memory is still exhausted here (the failed import's frames and modules are alive): print() to sys.stderr
    raised MemoryError in about 1 run in 7 under ulimit -v 600 MB, which ended in exit 1 ("lost sys.stderr").
    So the line is formatted with a preallocated fallback, written to fd 2 directly (a line that a failed
    print() left in sys.stderr's buffer is dropped, not flushed, so the line stays one), and the interpreter's
    teardown, which can fail as well, is skipped (os._exit)."""
    line = OOM_LINE
    try:
        error = f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}" if str(exc) else exc.__class__.__name__
        line = f"virnucpro: out of memory ({error}; {OOM_HINT})\n".encode()
    except BaseException:  # MemoryError: the fallback line
        pass
    try:
        sys.stdout.flush()  # what the command printed before (stdout may be block-buffered)
    except BaseException:
        pass
    try:
        os.write(2, line)
    except BaseException:  # nothing is left to report it with
        pass
    os._exit(EXIT_OOM)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_during_startup)  # until `embed` installs its flushing handler
    try:
        return _run(argv)
    except MemoryError as exc:  # raised by a handler of _run (its print, ...): memory is still exhausted
        _exit_out_of_memory(exc)


def _run(argv: list[str] | None) -> int:
    """Parse, dispatch and map the errors to exit codes; out of host memory ends in `_exit_out_of_memory`."""
    command = None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
        return args.handler(args)
    except UserError as exc:
        print(f"virnucpro: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        resumable = "; checkpointed rows are kept, rerun to resume" if command in RESUMABLE else ""
        print(f"virnucpro: interrupted{resumable}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (MemoryError, ImportError, OSError, SystemError, RuntimeError) as exc:
        code = _system_error(exc, command)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
