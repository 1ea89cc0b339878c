"""Option types and the parser of the command line: a bad value is refused before anything runs, in one line.

argparse's own error prints the whole usage block first; a Slurm log or a workflow's error summary then shows
a screenful of options instead of the one that was wrong.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from virnucpro.errors import EXIT_USAGE


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _number(kind: Callable, what: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _number(int, "a positive integer", lambda v: v >= 1)
nonnegative_int = _number(int, "an integer >= 0", lambda v: v >= 0)
nonnegative_float = _number(float, "a number >= 0", lambda v: math.isfinite(v) and v >= 0)
positive_float = _number(float, "a number > 0", lambda v: math.isfinite(v) and v > 0)
fraction = _number(float, "a number between 0 and 1", lambda v: 0 <= v <= 1)
percentage = _number(float, "a percentage between 0 and 100", lambda v: 0 < v <= 100)


def _nonempty(message: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str):
        if not text.strip():
            raise argparse.ArgumentTypeError(message)
        return convert(text)

    return parse


#: A name or path that must not be empty: `--checkpoint "$CKPT"` with CKPT unset would else pick defaults.
nonempty = _nonempty("must not be empty", str)
#: An output directory (`-o ""` would else write into the working directory).
nonempty_dir = _nonempty("must name a directory, not an empty string", Path)


def device_name(text: str) -> str:
    """auto, cpu, cuda or cuda:N (whether that device exists is checked when the job starts)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, not {text!r}")
    return text
