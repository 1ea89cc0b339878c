"""File digests, and a checkpoint's digest remembered between jobs.

Every job records the sha256 of its weights (provenance, and the resume fingerprint). Hashing ran at 1.26 GB/s
on this project's CPU machine, so ESM-2 3B's 5.7 GB checkpoint costs ~4.5 s and 15B's 30 GB ~24 s, paid again by
every shard job of `snakemake embed` and every sweep point: a fixed cost per job. `remembered_sha256` keeps each
file's digest in a small JSON file under the user's cache directory (`VIRNUCPRO_CACHE_DIR`, else
`$XDG_CACHE_HOME/virnucpro`, else `~/.cache/virnucpro`; a cluster's home directory is shared by its nodes), keyed
by the resolved path and stamped with the file's size, modification and change times and inode (not the device
number: a network file system's differs from node to node): a file that is replaced, rewritten, copied or
touched is hashed again. A cache that cannot be read or written is ignored (the digest is computed). Whoever can
write the cache directory can change the digest a job records: keep it private (the default is).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from virnucpro.utils.jsonfile import write_json_atomic

logger = logging.getLogger("virnucpro.utils.digests")

CACHE_FILE = "sha256.json"


def sha256_file(path: Path, block: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where digests are remembered (see the module's docstring)."""
    if os.environ.get("VIRNUCPRO_CACHE_DIR"):
        return Path(os.environ["VIRNUCPRO_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "virnucpro"


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_cache(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remembered_sha256(path: str | Path) -> str:
    """The sha256 of `path`, from the cache when the file is unchanged since it was hashed, else computed (and
    remembered)."""
    path = Path(path).resolve()
    key, stamp = str(path), _stamp(path)
    try:
        file = cache_dir() / CACHE_FILE
    except RuntimeError:  # no home directory to find: nothing to remember in
        return sha256_file(path)
    entry = _read_cache(file).get(key)
    if isinstance(entry, dict) and entry.get("stat") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(path)
    if _stamp(path) != stamp:  # changed while it was read: the digest is of no one version, keep it out
        return digest
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        cache = _read_cache(file)  # again: another job may have added a file meanwhile
        cache[key] = {"stat": stamp, "sha256": digest}
        write_json_atomic(file, cache)
    except OSError as exc:
        logger.info("cannot remember the digest of %s in %s: %s", path, file, exc)
    return digest
