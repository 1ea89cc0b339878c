"""Reading the JSON files the workflow's small commands are given, refusing wrong ones in one line; and the
one atomic JSON writer every command, telemetry file and report uses.

A missing, truncated or foreign file passed to `best-config`, `scaling`, `merge-telemetry` or `report` is the
user's input, not a bug: say which file and what is wrong with it (exit 2), not a traceback.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any, Callable, Iterable

from virnucpro.errors import UserError


def read_json(path: str | Path, what: str = "JSON file", keys: Iterable[str] = ()) -> Any:
    """Parse `path`; with `keys`, it must be an object holding each of them (else it is not a `what`)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read {what} ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); expected a {what}"
        ) from None
    keys = list(keys)
    if keys:
        missing = [k for k in keys if not isinstance(data, dict) or k not in data]
        if missing:
            raise UserError(f"{path}: not a {what} (no {', '.join(repr(k) for k in missing)})")
    return data


def read_object(path: str | Path | None, what: str, keys: Iterable[str] = ()) -> dict | None:
    """A JSON object from `path` (None for no path) given as option `what`, holding each of `keys` (else it is
    another file, e.g. `{}` or a result where the scaling file belongs); anything else is the user's error."""
    if path is None:
        return None
    data = read_json(path, f"{what} JSON")
    if not isinstance(data, dict):
        raise UserError(f"{what} {path}: not a JSON object")
    missing = [k for k in keys if k not in data]
    if missing:
        raise UserError(f"{path}: not a {what} file (no {', '.join(repr(k) for k in missing)})")
    return data


def write_json_atomic(path: str | Path, payload: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write `payload` as indented JSON under a temporary name, fsync it, rename it over `path`: a reader (or a
    rerun after a kill) sees the old file or the new one, never half of one. `default` as for json.dump."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=default))


def write_text_atomic(path: str | Path, text: str) -> None:
    """`text` to `path` through a temporary file, fsync and rename (see `write_json_atomic`)."""
    path = Path(path)
    # unique across the nodes that share a directory (equal pids on two hosts must not write one temporary file)
    tmp = path.with_name(f"{path.name}.tmp.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when writing or renaming failed


def check_output_paths(*paths: Path | None) -> None:
    """Each output path (None: not asked for) names a file that can be written: not a directory, its folder
    existing or creatable. Checked before anything is written, so a bad third path leaves no first file."""
    for path in filter(None, paths):
        if path.is_dir():
            raise UserError(f"{path}: is a directory; give the name of the file to write")
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"{path}: cannot be written ({parent} is not a writable directory)")
