"""Whether the `embed` target's input changed behind Snakemake's back (stdlib only: the workflow imports it)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def input_changed_unseen(manifest_path: Path, path: Path) -> str | None:
    """Why the split's input differs from what `manifest_path` split although Snakemake will not redo it (its
    modification time is not newer than the manifest: `cp -p`, `rsync -a`, an untarred copy), or None.
    Same size and time as at the split: unchanged (no read); otherwise the content's sha256 decides."""
    try:
        manifest = json.loads(Path(manifest_path).read_text())
        stat, manifest_mtime = os.stat(path), os.stat(manifest_path).st_mtime_ns
    except (OSError, ValueError):
        return None  # no split yet, or no input yet: nothing to compare
    if (stat.st_size, stat.st_mtime_ns) == (manifest.get("input_size"), manifest.get("input_mtime_ns")):
        return None
    if stat.st_mtime_ns > manifest_mtime or "input_sha256" not in manifest:
        return None  # newer than the split: Snakemake redoes the split itself (or nothing to compare with)
    if file_sha256(path) == manifest.get("input_sha256"):
        return None
    return (
        f"{path} changed since results/embed was split from it, but its modification time is older than the "
        f"split's, so Snakemake would keep the old embeddings: `touch {path}` to embed it again"
    )


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
