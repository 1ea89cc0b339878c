"""`--world-size N`: token-balanced shards, one process per rank, merged output equal to one process; fail-fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.data.synthetic import make_sequences
from virnucpro.data.fasta import write_fasta
from virnucpro.pipeline import output
from virnucpro.pipeline.launcher import FAULT_ENV
from virnucpro.pipeline.runner import shard_by_tokens


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 1022), min_size=0, max_size=300), st.integers(1, 8))
def test_shards_cover_everything_once_and_balance_tokens(lengths, world_size):
    lengths = np.array(lengths, dtype=np.int64)
    todo = np.arange(len(lengths))[::-1].copy()  # any order of indices must work
    shards = shard_by_tokens(todo, lengths, world_size)
    assert len(shards) == world_size
    joined = np.concatenate(shards)
    assert sorted(joined.tolist()) == sorted(todo.tolist())
    tokens = [int((lengths[s] + 2).sum()) for s in shards]
    longest = int(lengths.max()) + 2 if len(lengths) else 0
    assert max(tokens) - min(tokens) <= longest  # at most one sequence apart: far less than one batch


def embed_cmd(fasta, outdir, ckpt, *extra):
    return [
        sys.executable,
        "-m",
        "virnucpro.cli",
        "embed",
        str(fasta),
        "-o",
        str(outdir),
        "--checkpoint",
        str(ckpt),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--progress-interval",
        "0",
        *map(str, extra),
    ]


@pytest.fixture(scope="module")
def reads_fasta(tmp_path_factory):
    ids, seqs = make_sequences(600, 3, "short-reads")
    path = tmp_path_factory.mktemp("mp") / "reads.fa"
    write_fasta(path, ids, seqs)
    return path


def read_h5(path):
    with h5py.File(path, "r") as f:
        return [x.decode() for x in f["ids"][()]], f["embeddings"][()], dict(f.attrs)


def test_two_processes_equal_one(tmp_path, reads_fasta, tiny_checkpoint):
    one = subprocess.run(
        embed_cmd(reads_fasta, tmp_path / "one", tiny_checkpoint, "--token-budget", "2048"),
        capture_output=True,
        text=True,
    )
    two = subprocess.run(
        embed_cmd(
            reads_fasta,
            tmp_path / "two",
            tiny_checkpoint,
            "--token-budget",
            "2048",
            "--world-size",
            "2",
            "--num-workers",
            "1",
        ),
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    ids1, emb1, _ = read_h5(tmp_path / "one" / "embeddings.h5")
    ids2, emb2, attrs2 = read_h5(tmp_path / "two" / "embeddings.h5")
    assert ids1 == ids2 and len(set(ids2)) == 600
    np.testing.assert_allclose(emb2, emb1, rtol=0, atol=1e-5)
    assert attrs2["world_size"] == 2
    ranks = [json.loads((tmp_path / "two" / "telemetry" / f"telemetry_rank{r}.json").read_text()) for r in (0, 1)]
    shard_tokens = [r["run_metadata"]["shard_tokens"] for r in ranks]
    assert abs(shard_tokens[0] - shard_tokens[1]) <= 2048  # at most one batch's worth
    assert sum(r["summary"]["total_sequences"] for r in ranks) == 600
    status = json.loads((tmp_path / "two" / "status.json").read_text())
    assert status["status"] == "ok" and status["summary"]["num_shards"] == 2
    assert status["summary"]["total_sequences"] == 600
    # one progress display for the job, as compact lines in a non-TTY log
    lines = [ln for ln in two.stderr.splitlines() if ln.startswith("[embedding x2]")]
    assert lines and "600/600 seq (100.0%)" in lines[-1]


@pytest.mark.parametrize("kind", ["crash", "kill"])
def test_a_failing_rank_stops_the_job(tmp_path, reads_fasta, tiny_checkpoint, kind):
    env = {**os.environ, FAULT_ENV: f"1:6:{kind}"}  # rank 1 fails after 6 batches (~60 reads)
    outdir = tmp_path / "out"
    t0 = time.monotonic()
    res = subprocess.run(
        embed_cmd(
            reads_fasta,
            outdir,
            tiny_checkpoint,
            "--token-budget",
            "512",
            "--world-size",
            "2",
            "--num-workers",
            "0",
            "--checkpoint-every",
            "20",
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert time.monotonic() - t0 < 60
    assert res.returncode == 1, res.stderr
    assert "rank 1" in res.stderr
    assert ("injected fault" in res.stderr) if kind == "crash" else ("SIGKILL" in res.stderr)
    assert not (outdir / "embeddings.h5").exists()
    status = json.loads((outdir / "status.json").read_text())
    assert status["status"] == "failed" and "rank 1" in status["reason"]
    if kind == "kill":
        return
    # what was checkpointed before the failure (rank 0 flushes every 20 reads and when stopped) is kept: the rerun
    # resumes exactly that and completes
    checkpointed = int(output.scan_partial(outdir / output.PARTIAL_DIR, 600).done.sum())
    assert checkpointed > 0
    rerun = subprocess.run(
        embed_cmd(
            reads_fasta, outdir, tiny_checkpoint, "--token-budget", "512", "--world-size", "2", "--num-workers", "0"
        ),
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr
    meta = json.loads((outdir / "telemetry" / "telemetry_rank0.json").read_text())["run_metadata"]
    assert meta["resumed_sequences"] == checkpointed
    ids, emb, _ = read_h5(outdir / "embeddings.h5")
    assert len(ids) == 600 and np.isfinite(emb).all()


def test_world_size_beyond_visible_gpus_is_a_usage_error(tmp_path, reads_fasta, tiny_checkpoint):
    res = subprocess.run(
        embed_cmd(reads_fasta, tmp_path / "o", tiny_checkpoint, "--world-size", "0"), capture_output=True, text=True
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--world-size" in res.stderr
    assert not (tmp_path / "o").exists()
