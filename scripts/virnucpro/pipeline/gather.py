"""Gathering the shard outputs of the `embed` target into one `embeddings.h5`, without copying the rows.

`ids` is copied (small); `embeddings` is an HDF5 virtual dataset whose pieces are the shards' `embeddings`,
named by paths relative to the gathered file, so moving the results folder as a whole keeps it readable (HDF5
looks for a relative source next to the virtual file first). Before anything is written the shards are checked
against the split's manifest: each embedded exactly its shard file (sha256), its ids are the manifest's in order
(count and digest; on a mismatch the first differing id is named), and all agree on what was computed (model,
weights, precision, ...). A missing source file reads as NaN rows, never as zeros.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from virnucpro.errors import UserError
from virnucpro.pipeline.output import publish, require_free_space
from virnucpro.pipeline.shards import MANIFEST_FORMAT, iter_records
from virnucpro.utils.jsonfile import read_json

#: Attributes every shard must share: what was computed and how it is stored.
SHARED_ATTRS = (
    "model",
    "weights",
    "weights_provenance",
    "precision",
    "gelu",
    "repr_layer",
    "output_dtype",
    "long_sequences",
    "window_overlap",
)


def attr_value(value):
    """An HDF5 attribute as a plain Python value (str, int, float), as JSON and the reports want it."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def read_shard(directory: Path) -> dict:
    """A shard's ids, dataset shape/dtype and attributes (the rows stay on disk)."""
    path = directory / "embeddings.h5"
    if not path.is_file():
        raise UserError(f"{path}: missing; the shard's job has not finished (rerun the workflow)")
    try:
        with h5py.File(path, "r") as f:
            ids = f["ids"].asstr()[()].tolist()
            ds = f["embeddings"]
            return {
                "path": path,
                "ids": ids,
                "shape": tuple(ds.shape),
                "dtype": str(ds.dtype),
                "attrs": {k: attr_value(v) for k, v in f.attrs.items()},
            }
    except (OSError, KeyError) as exc:
        raise UserError(f"{path}: not a finished embeddings file ({exc})") from None


def _expected_ids(fasta: Path) -> list[str]:
    return [rid for _, rid, _ in iter_records(fasta, hashlib.sha256())]


def _id_difference(expected: list[str], got: list[str]) -> str:
    """Name the first difference between two id lists: missing, duplicated or out of order."""
    wanted, present, seen = set(expected), set(got), set()
    for i in range(max(len(expected), len(got))):
        want = expected[i] if i < len(expected) else None
        have = got[i] if i < len(got) else None
        if want == have:
            seen.add(have)
        elif have is not None and have not in wanted:
            return f"unexpected id {have!r} at row {i}"
        elif have in seen:
            return f"id {have!r} appears twice (again at row {i})"
        elif want is not None and want not in present:
            return f"id {want!r} (row {i}) is missing"
        else:
            return f"ids out of input order at row {i}: {have!r} where {want!r} belongs"
    return "the ids differ"


def verify_shard(shard: dict, entry: dict) -> None:
    """Refuse a shard that did not embed exactly its manifest entry, in order."""
    name = f"shard {entry['index']} ({shard['path']})"
    if shard["attrs"].get("input_sha256") != entry["sha256"]:
        raise UserError(f"{name}: embedded another input than {entry['fasta']} (sha256 differs); rerun its job")
    digest = hashlib.sha256()
    for rid in shard["ids"]:
        digest.update(rid.encode() + b"\n")
    if len(shard["ids"]) != entry["sequences"] or digest.hexdigest() != entry["ids_sha256"]:
        expected = _expected_ids(Path(entry["fasta"])) if Path(entry["fasta"]).is_file() else []
        raise UserError(
            f"{name}: {len(shard['ids'])} ids where the manifest has {entry['sequences']}: "
            f"{_id_difference(expected, shard['ids'])}"
        )
    if shard["shape"][0] != len(shard["ids"]):
        raise UserError(f"{name}: {shard['shape'][0]} embedding rows for {len(shard['ids'])} ids")


def check_agreement(shards: list[dict]) -> None:
    """Refuse to gather shards that computed different things (model, weights, precision, dtype, width)."""
    first = shards[0]
    for other in shards[1:]:
        for key in SHARED_ATTRS:
            if first["attrs"].get(key) != other["attrs"].get(key):
                raise UserError(
                    f"{other['path']}: {key} is {other['attrs'].get(key)!r} but {first['path']} has "
                    f"{first['attrs'].get(key)!r}; shards of one output must agree: rerun the embed target with "
                    "--forcerun embed_shard (a shard whose input and settings did not change is reused, not redone)"
                )
        for what, a, b in (("dtype", first["dtype"], other["dtype"]), ("width", first["shape"][1], other["shape"][1])):
            if a != b:
                raise UserError(f"{other['path']}: embedding {what} {b} but {first['path']} has {a}")


def _shard_info(shard: dict, entry: dict, job: dict | None, out_dir: Path) -> dict:
    job = job or {}
    return {
        "index": entry["index"],
        "file": os.path.relpath(shard["path"], out_dir),
        "shard_fasta": entry["fasta"],
        "first": entry["first"],
        "rows": len(shard["ids"]),
        "tokens": entry["tokens"],
        "job_wall_seconds": job.get("job_wall_seconds"),
        "slurm_job_id": job.get("slurm_job_id"),
        "attempts": len(job.get("attempts") or []),
        "resumed_sequences": job.get("resumed_sequences"),
    }


def gather(manifest_path: Path, shard_dirs: list[Path], out: Path) -> dict:
    """Verify the shards against the manifest and write `out` (ids + virtual `embeddings`); return its attrs."""
    manifest = read_json(manifest_path, "shard manifest", keys=("format", "shards"))
    if manifest["format"] != MANIFEST_FORMAT:
        raise UserError(f"{manifest_path}: manifest format {manifest['format']!r}, expected {MANIFEST_FORMAT!r}")
    entries = manifest["shards"]
    if len(shard_dirs) != len(entries):
        raise UserError(f"{len(shard_dirs)} shard directories given, the manifest lists {len(entries)} shards")
    shards = [read_shard(Path(d)) for d in shard_dirs]
    for shard, entry in zip(shards, entries):
        verify_shard(shard, entry)
    check_agreement(shards)
    ids = [rid for s in shards for rid in s["ids"]]
    if len(ids) != manifest["num_sequences"]:
        raise UserError(f"the shards hold {len(ids)} ids, the input {manifest['num_sequences']}")
    jobs = [_read_job(Path(d)) for d in shard_dirs]
    out = Path(out)
    attrs = provenance(manifest, shards, entries, jobs, out.parent)
    _write(out, ids, shards, attrs)
    return attrs


def _read_job(directory: Path) -> dict | None:
    path = directory / "job.json"
    return read_json(path, "shard job record") if path.is_file() else None


def provenance(manifest: dict, shards: list[dict], entries: list[dict], jobs: list, out_dir: Path) -> dict:
    first = shards[0]["attrs"]
    settings = [(j or {}).get("settings") for j in jobs]
    return {
        **{k: first.get(k) for k in SHARED_ATTRS},
        "input_path": manifest["input"],
        "input_sha256": manifest["input_sha256"],
        "num_sequences": manifest["num_sequences"],
        "truncated_count": sum(int(s["attrs"].get("truncated_count") or 0) for s in shards),
        "chunked_count": sum(int(s["attrs"].get("chunked_count") or 0) for s in shards),
        "configuration": settings[0] if all(s == settings[0] for s in settings) else settings,
        "shards": [_shard_info(s, e, j, out_dir) for s, e, j in zip(shards, entries, jobs)],
        "versions": first.get("versions"),
        "gathered": True,
    }


def _write(out: Path, ids: list[str], shards: list[dict], attrs: dict) -> None:
    n, dim, dtype = len(ids), shards[0]["shape"][1], np.dtype(shards[0]["dtype"])
    layout = h5py.VirtualLayout(shape=(n, dim), dtype=dtype)
    row = 0
    for s in shards:
        rows = s["shape"][0]
        layout[row : row + rows] = h5py.VirtualSource(os.path.relpath(s["path"], out.parent), "embeddings", (rows, dim))
        row += rows
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_virtual_dataset("embeddings", layout, fillvalue=np.nan)
        for name, value in attrs.items():
            f.attrs[name] = json.dumps(value) if value is None or isinstance(value, (dict, list)) else value
    publish(tmp, out)


def materialise(src: Path, dst: Path, block_rows: int = 1 << 16) -> int:
    """A self-contained copy of a gathered file, to move or share on its own: the virtual rows read (every
    shard file in place: a row of a missing one reads as NaN, refused) and written as one contiguous dataset,
    `ids` and the attributes as they are; streamed in blocks, so memory holds one block. Returns the rows."""
    if not src.is_file():
        raise UserError(f"{src}: not a file")
    if dst.exists() and dst.resolve() == src.resolve():
        raise UserError(f"{dst}: is the gathered file itself; name another path")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        with h5py.File(src, "r") as s:
            if not isinstance(s.get("embeddings"), h5py.Dataset) or not isinstance(s.get("ids"), h5py.Dataset):
                raise UserError(f"{src}: no `ids` and `embeddings` datasets: not an embeddings file")
            rows = s["embeddings"]
            require_free_space(
                dst.parent, rows.size * rows.dtype.itemsize, "the copy needs", "free space or name another path"
            )
            with h5py.File(tmp, "w") as d:
                d.create_dataset("ids", data=s["ids"][()], dtype=h5py.string_dtype("utf-8"))
                out = d.create_dataset("embeddings", shape=rows.shape, dtype=rows.dtype)
                for start in range(0, rows.shape[0], block_rows):
                    block = rows[start : start + block_rows]
                    missing = np.flatnonzero(np.isnan(block).all(axis=1)) if block.dtype.kind == "f" else []
                    if len(missing):
                        raise UserError(
                            f"{src}: row {start + int(missing[0])} reads as NaN: a shard file it points to is "
                            "missing or moved (keep results/embed together, or gather again)"
                        )
                    out[start : start + len(block)] = block
                for name, value in s.attrs.items():
                    d.attrs[name] = value
                d.attrs["materialised_from"] = str(src)
        publish(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return rows.shape[0]
