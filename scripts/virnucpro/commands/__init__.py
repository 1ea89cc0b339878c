"""The `virnucpro` subcommands, one module each: `register(sub)` adds its parser (ending with
`set_defaults(handler=run)`), `run(args)` calls the package and returns the exit code.

This package holds only what every subcommand's parser shares: the help style and the exit-code epilog.
"""

from __future__ import annotations

import argparse

from virnucpro.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_IO, EXIT_OK, EXIT_OOM, EXIT_PREEMPTED

EXIT_CODES = (
    f"exit codes: {EXIT_OK} ok; 2 bad input or usage (one line on stderr); {EXIT_OOM} out of memory "
    f"(status.json reason: OOM); {EXIT_IO} the output could not be written (disk full, quota; rerun to "
    f"resume); {EXIT_PREEMPTED} stopped by SIGTERM/SIGINT after flushing checkpoints "
    f"(rerun the same command to resume); {EXIT_INTERRUPTED} a second Ctrl-C (stopped at once); "
    f"{EXIT_FAILURE} a DataLoader worker that died (one line; rerun to resume), a failed rank, or an "
    "unexpected error (traceback: a bug)"
)
#: Subcommand modules, in the order `virnucpro --help` lists them.
MODULES = (
    "make_fasta",
    "embed",
    "bench",
    "run_point",
    "analyse_run",
    "sample",
    "measure",
    "best_config",
    "recommend",
    "report",
    "merge_telemetry",
    "scaling",
    "shard",
    "embed_shard",
    "gather",
    "materialise",
    "embed_report",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every option's help (not None or a flag's False: the help says what unset means); the
    epilog (example, exit codes) keeps its line breaks."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def help_style(example: str | None = None) -> dict:
    """Keyword arguments of every (sub)parser: defaults shown, an example and the exit codes as epilog."""
    epilog = (f"example:\n  {example}\n\n" if example else "") + EXIT_CODES
    return {"formatter_class": HelpFormatter, "epilog": epilog}
