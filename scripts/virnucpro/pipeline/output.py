"""Durable results, written once: rows go straight to their final place in a preallocated `embeddings.h5`.

At the start the parent creates `OUTDIR/.partial/embeddings.h5`: the `ids` in input order and an `embeddings`
dataset (N x D, contiguous, allocated but not filled, so it costs no time and no disk until rows arrive). Each
rank's background writer puts finished rows at their input positions with plain `pwrite`s into that dataset's
byte range (HDF5 is not opened for writing by two processes; the ranks never open it as HDF5 at all), then
`fdatasync`s, then records the batch as a small checkpoint chunk: the input indices, a sha256 of the bytes
written, and the run's key. A chunk therefore proves both that its rows are on disk and that they belong to
this run; a chunk of another run, a torn one, or one whose rows no longer match its digest is set aside and its
sequences are redone, never skipped.

Finishing costs no second copy: check that every id was written exactly once, set the provenance attributes,
fsync and rename the file to `OUTDIR/embeddings.h5`. A kill at any moment leaves either the partial state,
which the same command resumes, or the complete file, which the same command recognises (its fingerprint is
an attribute). Peak disk use is the final file's size.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from virnucpro.errors import OtherRunsResults, OutputError, UserError
from virnucpro.utils.jsonfile import write_json_atomic

logger = logging.getLogger("virnucpro.pipeline.output")

PARTIAL_DIR = ".partial"
MANIFEST = "manifest.json"
DATA_FILE = "embeddings.h5"
FINAL_FILE = "embeddings.h5"
LOCK_FILE = ".lock"
OUTPUT_DTYPES = {"float32": np.float32, "float16": np.float16}


def run_key(fingerprint: dict) -> str:
    """A short digest of a run's fingerprint: what a chunk carries to prove which run it belongs to."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:32]


def _digest(indices: np.ndarray, rows: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(rows).tobytes())
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Make a finished file durable under its final name: fsync it, rename it, fsync the directory."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(final)
    fsync_dir(final.parent)


def io_error(action: str, path: Path, exc: OSError) -> OutputError:
    """One line naming what could not be written where, and what to do (disk full and quota named as such)."""
    why = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
    }.get(exc.errno, exc.strerror or str(exc))
    return OutputError(
        f"cannot {action} {path}: {why}; free space (or fix the path) and rerun the same command to resume"
    )


# --- the output directory: checked before anything is loaded, locked while a run writes it -------------------


def check_outdir(outdir: Path) -> None:
    """Refuse an output directory that cannot work, before the input or the model is loaded; create nothing."""
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"{outdir}: the output directory exists and is not a directory")
    existing = next((p for p in (outdir, *outdir.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UserError(f"{outdir}: cannot create the output directory: {existing} is not a directory")
    try:  # the only sure test of writability (read-only mounts, /proc, ACLs): make and remove a directory
        os.rmdir(tempfile.mkdtemp(prefix=".virnucpro-probe-", dir=existing))
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):  # the storage's state, not the path: exit 74
            raise io_error("write the output directory in", existing, exc) from None
        raise UserError(f"{outdir}: cannot write the output directory ({exc.strerror or exc} in {existing})") from None


class OutdirLock:
    """An exclusive lock on OUTDIR for the whole run: a second run on it gets a clear refusal, not a collision.

    `flock` is released by the kernel when the process dies, so a killed run never leaves a stale lock. On file
    systems without flock support the run goes on with a warning.
    """

    def __init__(self, outdir: Path):
        self.path = outdir / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> "OutdirLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise UserError(
                f"{self.path.parent}: another virnucpro run is writing this output directory "
                f"({holder}); wait for it to end or use another directory"
            ) from None
        except OSError as exc:
            logger.warning("cannot lock %s (%s): make sure no other run writes this directory", self.path, exc)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.ctime()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock; the file stays (removing it would race a waiting run)
            self._fd = None


# --- the preallocated data file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the embeddings dataset's bytes lie in the data file: enough for any process to write rows."""

    path: Path
    offset: int
    rows: int
    dim: int
    dtype: str  # a key of OUTPUT_DTYPES

    @property
    def row_bytes(self) -> int:
        return self.dim * np.dtype(OUTPUT_DTYPES[self.dtype]).itemsize


def size_text(n: int) -> str:
    """Bytes for a message: GB from 1 GB up, else MB with enough digits not to print "0.0" for a small file."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.3g} MB"


def require_free_space(directory: Path, need: int, what: str, advice: str) -> None:
    """Refuse (exit 74, before anything is written) when `directory`'s disk has less than `need` bytes free."""
    free = shutil.disk_usage(directory).free
    if need > free:
        raise OutputError(f"{directory}: {what} {size_text(need)} and only {size_text(free)} are free; {advice}")


def create_data_file(path: Path, ids: list[str], dim: int, dtype: str, fingerprint: dict) -> Layout:
    """Write ids and an allocated, unfilled contiguous `embeddings` dataset; refuse if the disk cannot hold it."""
    n = len(ids)
    need = n * dim * np.dtype(OUTPUT_DTYPES[dtype]).itemsize + sum(map(len, ids)) + (1 << 20)
    require_free_space(
        path.parent, need, "the embeddings need", "free space, use another directory or --output-dtype float16"
    )
    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # the byte range exists now, ...
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # ... without writing N x D zeros first
            space = h5py.h5s.create_simple((n, dim))
            h5py.h5d.create(f.id, b"embeddings", h5py.h5t.py_create(np.dtype(OUTPUT_DTYPES[dtype])), space, dcpl=dcpl)
            f.attrs["fingerprint"] = json.dumps(fingerprint)
            f.attrs["run_key"] = run_key(fingerprint)
            f.attrs["complete"] = False
        publish(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise io_error("create", path, exc) from None
    return read_layout(path)


def read_layout(path: Path) -> Layout:
    with h5py.File(path, "r") as f:
        ds = f["embeddings"]
        offset = ds.id.get_offset()
        if offset is None:
            raise RuntimeError(f"{path}: embeddings dataset has no contiguous storage")
        dtype = next(k for k, v in OUTPUT_DTYPES.items() if np.dtype(v) == ds.dtype)
        return Layout(path, int(offset), ds.shape[0], ds.shape[1], dtype)


def data_file_matches(path: Path, fingerprint: dict) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("run_key") == run_key(fingerprint)
    except Exception:  # missing, torn, not HDF5: start the data file anew
        return False


def write_rows(fd: int, layout: Layout, indices: np.ndarray, rows: np.ndarray) -> None:
    """pwrite `rows` at their input positions; runs of consecutive indices go out as one write."""
    order = np.argsort(indices, kind="stable")
    idx, data = indices[order], np.ascontiguousarray(rows[order])
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(idx)]):
        buf = memoryview(data[start:stop]).cast("B")
        pos, done = layout.offset + int(idx[start]) * layout.row_bytes, 0
        while done < len(buf):
            done += os.pwrite(fd, buf[done:], pos + done)


def read_rows(layout: Layout, indices: np.ndarray) -> np.ndarray:
    mm = np.memmap(
        layout.path, dtype=OUTPUT_DTYPES[layout.dtype], mode="r", offset=layout.offset, shape=(layout.rows, layout.dim)
    )
    return np.asarray(mm[np.asarray(indices, dtype=np.int64)])


# --- checkpoint chunks: which rows are durable -------------------------------------------------------------


def write_chunk(directory: Path, rank: int, indices: np.ndarray, digest: str, key: str) -> Path:
    """Record rows already fsynced to the data file; atomic (temporary name, fsync, rename)."""
    final = directory / f"chunk_r{rank}_{uuid.uuid4().hex[:12]}.h5"
    tmp = final.with_suffix(".h5.tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("indices", data=np.asarray(indices, dtype=np.int64))
        f.attrs["sha256"] = digest
        f.attrs["run_key"] = key
    publish(tmp, final)
    return final


class AsyncChunkWriter:
    """Writes rows and their chunk records on a background thread so the GPU loop never waits on the disk.

    The queue is bounded (`max_pending` chunks): if the disk falls behind, `submit` blocks rather than letting
    memory grow. A write error is raised in the caller on the next `submit` or on `close`, as an
    `OutputError` naming the file and the reason (disk full, quota) when it is an OS error.
    """

    def __init__(self, directory: Path, rank: int, layout: Layout, key: str, max_pending: int = 4):
        self.directory, self.rank, self.layout, self.key = directory, rank, layout, key
        self._fd = os.open(layout.path, os.O_WRONLY)
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._done_ms: list[float] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=f"chunk-writer-r{rank}", daemon=True)
        self._thread.start()

    def _write(self, indices: np.ndarray, rows: np.ndarray) -> None:
        if os.fstat(self._fd).st_nlink == 0:
            raise OutputError(
                f"{self.layout.path} was deleted while the run was writing it; rerun the same "
                f"command to recompute what is missing"
            )
        rows = np.asarray(rows, dtype=OUTPUT_DTYPES[self.layout.dtype])
        write_rows(self._fd, self.layout, indices, rows)
        os.fdatasync(self._fd)
        self.directory.mkdir(exist_ok=True)
        write_chunk(self.directory, self.rank, indices, _digest(indices, rows), self.key)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._error is None:
                try:
                    t0 = time.perf_counter()
                    self._write(*job)
                    with self._lock:
                        self._done_ms.append((time.perf_counter() - t0) * 1000)
                except OSError as exc:
                    self._error = io_error("write checkpoint rows to", self.layout.path, exc)
                except BaseException as exc:  # surfaced in the main thread
                    self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, indices: np.ndarray, rows: np.ndarray) -> int:
        """Queue a chunk; returns the queue depth it found (0 = the writer was idle)."""
        self._check()
        depth = self._queue.qsize()
        self._queue.put((np.asarray(indices, dtype=np.int64), rows))
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
        os.close(self._fd)
        self._check()


def _chunk_content(path: Path) -> tuple[np.ndarray, str, str] | None:
    try:
        with h5py.File(path, "r") as f:
            return f["indices"][()], str(f.attrs["sha256"]), str(f.attrs.get("run_key", ""))
    except Exception:  # truncated, zero-length, not HDF5: all mean "redo these sequences"
        return None


@dataclass
class PartialState:
    chunks: list[Path]
    done: np.ndarray  # bool per input index


def _set_aside(path: Path, why: str, suffix: str) -> None:
    logger.warning("checkpoint chunk %s %s; its sequences will be recomputed", path.name, why)
    path.replace(path.with_suffix(suffix))


def scan_partial(
    directory: Path, num_sequences: int, layout: Layout | None = None, key: str | None = None, verify_rows: bool = True
) -> PartialState:
    """Find the chunks whose rows are this run's and intact; set the others aside so their sequences are redone.

    `layout`/`key` None: only count what the chunks claim (progress probes in tests). `verify_rows` reads the
    recorded rows back and checks their digest (on resume); finishing trusts what this run's writers wrote.
    """
    done = np.zeros(num_sequences, dtype=bool)
    chunks: list[Path] = []
    if not directory.is_dir():
        return PartialState(chunks, done)
    for tmp in directory.glob("*.tmp*"):
        tmp.unlink(missing_ok=True)  # a write interrupted before its rename
    for path in sorted(directory.glob("chunk_*.h5")):
        content = _chunk_content(path)
        if content is None:
            _set_aside(path, "is unreadable", ".corrupt")
            continue
        indices, digest, chunk_key = content
        if key is not None and chunk_key != key:
            _set_aside(path, "belongs to another run", ".foreign")
            continue
        if len(indices) and (indices.max() >= num_sequences or indices.min() < 0):
            _set_aside(path, "names sequences outside the input", ".corrupt")
            continue
        if done[indices].any():  # a duplicate can only come from a crash between write and bookkeeping
            _set_aside(path, "repeats finished sequences", ".duplicate")
            continue
        if layout is not None and verify_rows and _digest(indices, read_rows(layout, indices)) != digest:
            _set_aside(path, "does not match the rows on disk", ".corrupt")
            continue
        done[indices] = True
        chunks.append(path)
    return PartialState(chunks, done)


def check_manifest(directory: Path, fingerprint: dict) -> None:
    """Refuse to mix partial results of a different configuration into this run."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path}: not valid JSON (damaged?); delete {directory} to start this run afresh") from None
        if old != json.loads(json.dumps(fingerprint)):
            changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise OtherRunsResults(
                f"{directory.parent}: holds partial results of a different run (differs in {', '.join(changed)}); "
                f"use a new output directory, delete {directory}, or pass --overwrite"
            )
    else:
        write_json_atomic(path, fingerprint)


def existing_fingerprint(out_path: Path) -> dict | None:
    """The fingerprint of a finished result at `out_path`, None if there is none (or it is unreadable)."""
    if not out_path.is_file():
        return None
    try:
        with h5py.File(out_path, "r") as f:
            return json.loads(f.attrs["fingerprint"])
    except Exception:
        return None


def completed(out_path: Path, fingerprint: dict) -> bool:
    """True if `out_path` is a finished result of exactly this configuration."""
    return existing_fingerprint(out_path) == json.loads(json.dumps(fingerprint))


def discard_partial(directory: Path) -> None:
    """Remove the checkpoint records once the final file is in place."""
    shutil.rmtree(directory, ignore_errors=True)


def finalize(directory: Path, out_path: Path, num_sequences: int, key: str, attrs: dict) -> None:
    """Check every id was written exactly once, stamp the provenance, fsync and rename into `out_path`.

    No row is copied. Until the rename the result is `.partial/embeddings.h5`, which nobody takes as finished.
    """
    data = directory / DATA_FILE
    if not data.is_file():
        raise OutputError(
            f"{data} disappeared during the run (was {directory} deleted?); rerun the same command "
            f"to recompute what is missing"
        )
    seen = np.zeros(num_sequences, dtype=np.int64)
    for path in sorted(directory.glob("chunk_*.h5")):
        content = _chunk_content(path)
        if content is None or content[2] != key:
            raise RuntimeError(f"checkpoint chunk {path} became unreadable or foreign while finishing")
        np.add.at(seen, content[0], 1)
    missing, repeated = int((seen == 0).sum()), int((seen > 1).sum())
    if missing or repeated:
        raise RuntimeError(f"output check failed: {missing} ids missing, {repeated} ids repeated")
    try:
        with h5py.File(data, "r+") as f:
            for name, value in attrs.items():
                f.attrs[name] = json.dumps(value) if value is None or isinstance(value, (dict, list)) else value
            f.attrs["complete"] = True
        publish(data, out_path)
    except OSError as exc:
        raise io_error("finish", data, exc) from None
