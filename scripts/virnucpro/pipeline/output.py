"""Durable results: checkpoint chunks while running, one `embeddings.h5` at the end.

Each rank flushes finished embeddings as chunk files under `OUTDIR/.partial/`: written to a temporary name,
fsynced, renamed. A chunk carries a sha256 of its arrays, so a truncated or corrupt chunk is detected and its
sequences are redone, never skipped. Chunks hold input indices next to their rows, so ids can never drift from
embeddings. The final file is assembled in input order, checked (every id exactly once) and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from virnucpro.errors import UserError

logger = logging.getLogger("virnucpro.pipeline.output")

PARTIAL_DIR = ".partial"
MANIFEST = "manifest.json"


def _digest(indices: np.ndarray, embeddings: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def write_chunk(directory: Path, rank: int, indices: np.ndarray, embeddings: np.ndarray) -> Path:
    """Write one chunk atomically; the name is unique across ranks and reruns."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"chunk_r{rank}_{uuid.uuid4().hex[:12]}.h5"
    tmp = final.with_suffix(".h5.tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("indices", data=np.asarray(indices, dtype=np.int64))
        f.create_dataset("embeddings", data=np.asarray(embeddings, dtype=np.float32))
        f.attrs["sha256"] = _digest(indices, embeddings)
        f.flush()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(final)
    fsync_dir(directory)
    return final


class AsyncChunkWriter:
    """Writes chunks on a background thread so the GPU loop never waits on the disk.

    The queue is bounded (`max_pending` chunks): if the disk falls behind, `submit` blocks rather than letting
    memory grow. A write error is raised in the caller on the next `submit` or on `close`.
    """

    def __init__(self, directory: Path, rank: int, max_pending: int = 4):
        self.directory, self.rank = directory, rank
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._done_ms: list[float] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=f"chunk-writer-r{rank}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._error is None:
                try:
                    t0 = time.perf_counter()
                    write_chunk(self.directory, self.rank, *job)
                    with self._lock:
                        self._done_ms.append((time.perf_counter() - t0) * 1000)
                except BaseException as exc:  # surfaced in the main thread
                    self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, indices: np.ndarray, rows: np.ndarray) -> int:
        """Queue a chunk; returns the queue depth it found (0 = the writer was idle)."""
        self._check()
        depth = self._queue.qsize()
        self._queue.put((indices, rows))
        return depth

    def completed_write_ms(self) -> list[float]:
        """Write times (ms) of chunks finished since the last call."""
        with self._lock:
            done, self._done_ms = self._done_ms, []
        return done

    def close(self) -> None:
        """Wait for every queued chunk to be on disk."""
        self._queue.put(None)
        self._thread.join()
        self._check()


def read_chunk(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The chunk's (indices, embeddings), or None if it is unreadable or fails its checksum."""
    try:
        with h5py.File(path, "r") as f:
            indices, embeddings = f["indices"][()], f["embeddings"][()]
            expected = f.attrs["sha256"]
    except Exception:  # truncated, zero-length, not HDF5: all mean "redo these sequences"
        return None
    if len(indices) != len(embeddings) or _digest(indices, embeddings) != expected:
        return None
    return indices, embeddings


@dataclass
class PartialState:
    chunks: list[Path]
    done: np.ndarray  # bool per input index


def scan_partial(directory: Path, num_sequences: int) -> PartialState:
    """Find valid chunks; set aside corrupt ones (renamed *.corrupt) so their sequences get redone."""
    done = np.zeros(num_sequences, dtype=bool)
    chunks: list[Path] = []
    if not directory.is_dir():
        return PartialState(chunks, done)
    for tmp in directory.glob("*.tmp*"):
        tmp.unlink(missing_ok=True)  # a write interrupted before its rename
    for path in sorted(directory.glob("chunk_*.h5")):
        content = read_chunk(path)
        if content is None or (len(content[0]) and (content[0].max() >= num_sequences or content[0].min() < 0)):
            logger.warning("checkpoint chunk %s is corrupt; its sequences will be recomputed", path.name)
            path.replace(path.with_suffix(".corrupt"))
            continue
        indices = content[0]
        if done[indices].any():  # a duplicate can only come from a crash between write and bookkeeping: drop it
            logger.warning("checkpoint chunk %s repeats finished sequences; ignoring it", path.name)
            path.replace(path.with_suffix(".duplicate"))
            continue
        done[indices] = True
        chunks.append(path)
    return PartialState(chunks, done)


def check_manifest(directory: Path, fingerprint: dict) -> None:
    """Refuse to mix partial results of a different configuration into this run."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())
        if old != fingerprint:
            changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise UserError(
                f"{directory.parent}: holds partial results of a different run (differs in {', '.join(changed)}); "
                f"use a new output directory or delete {directory}"
            )
    else:
        write_json_atomic(path, fingerprint)


def completed(out_path: Path, fingerprint: dict) -> bool:
    """True if `out_path` is a finished result of exactly this configuration."""
    if not out_path.is_file():
        return False
    try:
        with h5py.File(out_path, "r") as f:
            return json.loads(f.attrs["fingerprint"]) == json.loads(json.dumps(fingerprint))
    except Exception:
        return False


def read_summary(outdir: Path) -> dict | None:
    try:
        return json.loads((outdir / "status.json").read_text()).get("summary")
    except (OSError, ValueError):
        return None


def discard_partial(directory: Path) -> None:
    """Remove checkpoint chunks once the final file holds them (they would double the disk use)."""
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()


def assemble(directory: Path, out_path: Path, ids: list[str], embed_dim: int, attrs: dict,
             rows_per_block: int = 65536) -> None:
    """Write `out_path` (ids + embeddings in input order) from the chunks; every id must appear exactly once."""
    state_chunks = sorted(directory.glob("chunk_*.h5"))
    n = len(ids)
    seen = np.zeros(n, dtype=np.int64)
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            ds = f.create_dataset("embeddings", shape=(n, embed_dim), dtype=np.float32,
                                  chunks=(min(n, max(1, rows_per_block // max(1, embed_dim // 64))), embed_dim))
            for path in state_chunks:
                content = read_chunk(path)
                if content is None:
                    raise RuntimeError(f"checkpoint chunk {path} became unreadable during assembly")
                indices, rows = content
                np.add.at(seen, indices, 1)
                order = np.argsort(indices, kind="stable")
                ds[indices[order]] = rows[order]  # h5py needs increasing indices
            missing = int((seen == 0).sum())
            repeated = int((seen > 1).sum())
            if missing or repeated:
                raise RuntimeError(f"assembly check failed: {missing} ids missing, {repeated} ids repeated")
            for key, value in attrs.items():
                f.attrs[key] = json.dumps(value) if value is None or isinstance(value, (dict, list)) else value
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written result behind
        raise
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(out_path)
    fsync_dir(out_path.parent)
