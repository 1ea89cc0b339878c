"""Checkpoint chunks: atomic, checksummed, written in the background; corrupt ones are redone, not skipped."""

from __future__ import annotations

import h5py
import numpy as np

from virnucpro.pipeline import output


def test_async_writer_chunks_and_scan(tmp_path):
    writer = output.AsyncChunkWriter(tmp_path, rank=0, max_pending=1)
    rng = np.random.default_rng(0)
    for start in (0, 4, 8):
        writer.submit(np.arange(start, start + 4), rng.standard_normal((4, 3)).astype(np.float32))
    writer.close()
    assert len(writer.completed_write_ms()) == 3
    state = output.scan_partial(tmp_path, 14)
    assert len(state.chunks) == 3 and state.done.tolist() == [True] * 12 + [False] * 2


def test_corrupt_and_truncated_chunks_are_set_aside(tmp_path):
    a = output.write_chunk(tmp_path, 0, np.array([0, 1]), np.ones((2, 3), np.float32))
    b = output.write_chunk(tmp_path, 0, np.array([2, 3]), np.ones((2, 3), np.float32))
    c = output.write_chunk(tmp_path, 1, np.array([4]), np.ones((1, 3), np.float32))
    with h5py.File(a, "r+") as f:  # silent bit rot: data changed, checksum kept
        f["embeddings"][0, 0] = 5.0
    b.write_bytes(b.read_bytes()[:100])  # a torn write
    (tmp_path / "chunk_r0_x.h5.tmp").write_bytes(b"partial")
    state = output.scan_partial(tmp_path, 5)
    assert state.chunks == [c] and state.done.tolist() == [False] * 4 + [True]
    assert sorted(p.name for p in tmp_path.glob("*.corrupt")) == sorted([a.with_suffix(".corrupt").name,
                                                                         b.with_suffix(".corrupt").name])
    assert not list(tmp_path.glob("*.tmp"))


def test_assemble_refuses_missing_ids(tmp_path):
    output.write_chunk(tmp_path, 0, np.array([0, 2]), np.ones((2, 3), np.float32))
    try:
        output.assemble(tmp_path, tmp_path / "e.h5", ["a", "b", "c"], 3, {})
    except RuntimeError as exc:
        assert "1 ids missing" in str(exc)
    else:
        raise AssertionError("assembly with a missing id must fail")
    assert not (tmp_path / "e.h5").exists() and not (tmp_path / "e.h5.tmp").exists()
