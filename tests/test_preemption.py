"""Kill and resume: SIGKILL and SIGTERM at random moments, reruns, and a result equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from virnucpro.data.fasta import write_fasta
from virnucpro.data.synthetic import make_sequences
from virnucpro.errors import EXIT_PREEMPTED
from virnucpro.pipeline.output import PARTIAL_DIR, scan_partial

N = 3000


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    ids, seqs = make_sequences(N, 11, "short-reads")
    path = tmp_path_factory.mktemp("kill") / "reads.fa"
    write_fasta(path, ids, seqs)
    return path


def cmd(fasta, outdir, ckpt, world_size=1):
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
        "--token-budget",
        "256",
        "--checkpoint-every",
        "40",
        "--num-workers",
        "1",
        "--world-size",
        str(world_size),
        "--progress-interval",
        "0",
    ]


def checkpointed(outdir) -> int:
    return int(scan_partial(outdir / PARTIAL_DIR, N).done.sum()) if (outdir / PARTIAL_DIR).is_dir() else 0


def start_and_kill(args, outdir, sig, delay_after_first_chunk):
    """Start the job in its own session (like a Slurm step), wait until it has written a new chunk, then signal
    the whole group after a random delay. Returns (exit code, stderr)."""
    partial = outdir / PARTIAL_DIR
    old = set(partial.glob("chunk_*.h5"))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not set(partial.glob("chunk_*.h5")) - old:
        time.sleep(0.02)
    time.sleep(delay_after_first_chunk)
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_random_kills_then_resume_equal_uninterrupted(tmp_path, fasta, tiny_checkpoint):
    ref = subprocess.run(cmd(fasta, tmp_path / "ref", tiny_checkpoint), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr

    rng = random.Random(1234)
    outdir = tmp_path / "killed"
    signals_sent = [signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGTERM]
    progress = []
    for attempt, sig in enumerate(signals_sent):
        world_size = 2 if attempt == 3 else 1  # preemption of a multi-process job too
        before = checkpointed(outdir)
        code, err = start_and_kill(cmd(fasta, outdir, tiny_checkpoint, world_size), outdir, sig, rng.uniform(0, 0.4))
        after = checkpointed(outdir)
        progress.append(after)
        if code == 0:  # finished before the signal landed: nothing left to test in later attempts
            break
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        else:
            assert code == EXIT_PREEMPTED, err
            status = json.loads((outdir / "status.json").read_text())
            assert status["status"] == "failed" and status["reason"] == "preempted" and status["resumable"]
            # everything this attempt computed was flushed before exiting
            done_now = sum(
                json.loads(p.read_text())["summary"]["total_sequences"]
                for p in (outdir / "telemetry").glob("telemetry_rank*.json")
            )
            assert after == before + done_now, (before, done_now, after)
            assert "rerun the same command to resume" in err
        assert not (outdir / "embeddings.h5").exists()
        assert after >= before  # nothing checkpointed is ever lost
    assert 0 < progress[0] < N, "the first kill must land mid-run for this test to mean anything"

    before = checkpointed(outdir)
    final = subprocess.run(cmd(fasta, outdir, tiny_checkpoint), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    meta = json.loads((outdir / "telemetry" / "telemetry_rank0.json").read_text())
    assert meta["run_metadata"]["resumed_sequences"] == before
    assert meta["summary"]["total_sequences"] == N - before  # checkpointed work was not redone

    with h5py.File(tmp_path / "ref" / "embeddings.h5") as a, h5py.File(outdir / "embeddings.h5") as b:
        assert list(a["ids"][()]) == list(b["ids"][()])
        assert len(set(b["ids"][()])) == N
        np.testing.assert_allclose(b["embeddings"][()], a["embeddings"][()], rtol=0, atol=1e-5)
    assert not (outdir / PARTIAL_DIR).exists()
