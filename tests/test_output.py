"""The output, written once: rows in place, chunks that prove their run, kills at any moment, phases, disk peak."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from virnucpro.bench_scale import DiskPeak
from virnucpro.data.fasta import read_fasta, write_fasta
from virnucpro.data.synthetic import make_sequences
from virnucpro.errors import EXIT_IO, OutputError, UserError
from virnucpro.pipeline import output
from virnucpro.pipeline.runner import EmbedConfig, run_embed

KEY = "k" * 32


def make_layout(tmp_path, n=14, dim=3, dtype="float32"):
    fp = {"run": "test"}
    layout = output.create_data_file(tmp_path / output.DATA_FILE, [f"s{i}" for i in range(n)], dim, dtype, fp)
    return layout, output.run_key(fp)


def test_async_writer_puts_rows_in_place_and_scan_verifies_them(tmp_path):
    layout, key = make_layout(tmp_path)
    writer = output.AsyncChunkWriter(tmp_path, 0, layout, key, max_pending=1)
    rng = np.random.default_rng(0)
    rows = {start: rng.standard_normal((4, 3)).astype(np.float32) for start in (8, 0, 4)}
    for start, r in rows.items():
        writer.submit(np.arange(start, start + 4)[::-1].copy(), r[::-1].copy())  # any order of indices
    writer.close()
    assert len(writer.completed_write_ms()) == 3
    state = output.scan_partial(tmp_path, 14, layout, key)
    assert len(state.chunks) == 3 and state.done.tolist() == [True] * 12 + [False] * 2
    got = output.read_rows(layout, np.arange(12))
    assert np.array_equal(got, np.concatenate([rows[0], rows[4], rows[8]]))


def test_corrupt_torn_and_foreign_chunks_are_set_aside(tmp_path):
    layout, key = make_layout(tmp_path, n=6)
    fd = os.open(layout.path, os.O_WRONLY)

    def put(idx, value, chunk_key=key):
        idx = np.array(idx)
        rows = np.full((len(idx), 3), value, np.float32)
        output.write_rows(fd, layout, idx, rows)
        return output.write_chunk(tmp_path, 0, idx, output._digest(idx, rows), chunk_key)

    rotten, torn, foreign, good = put([0, 1], 1.0), put([2, 3], 2.0), put([4], 3.0, "another-run"), put([5], 4.0)
    output.write_rows(fd, layout, np.array([0]), np.full((1, 3), 9.0, np.float32))  # rows changed, record kept
    os.close(fd)
    torn.write_bytes(torn.read_bytes()[:100])
    (tmp_path / "chunk_r0_x.h5.tmp").write_bytes(b"partial")
    state = output.scan_partial(tmp_path, 6, layout, key)
    assert state.chunks == [good] and state.done.tolist() == [False] * 5 + [True]
    assert {p.name for p in tmp_path.glob("*.corrupt")} == {
        rotten.with_suffix(".corrupt").name,
        torn.with_suffix(".corrupt").name,
    }
    assert foreign.with_suffix(".foreign").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_finalize_refuses_missing_ids(tmp_path):
    layout, key = make_layout(tmp_path, n=3)
    writer = output.AsyncChunkWriter(tmp_path, 0, layout, key)
    writer.submit(np.array([0, 2]), np.ones((2, 3), np.float32))
    writer.close()
    with pytest.raises(RuntimeError, match="1 ids missing"):
        output.finalize(tmp_path, tmp_path / "final.h5", 3, key, {})
    assert not (tmp_path / "final.h5").exists() and layout.path.exists()


def test_a_full_disk_is_refused_before_computing(tmp_path, monkeypatch):
    monkeypatch.setattr(output.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(OutputError, match="need 1.07 MB and only 0.001 MB are free"):
        make_layout(tmp_path, n=100, dim=64)


# --- whole runs on the CPU ------------------------------------------------------------------------------------

N = 400


@pytest.fixture(scope="module")
def reads(tmp_path_factory):
    ids, seqs = make_sequences(N, 5, "short-reads")
    path = tmp_path_factory.mktemp("out") / "reads.fa"
    write_fasta(path, ids, seqs)
    return path


def config(reads, outdir, ckpt, **kw):
    base = dict(
        fasta=reads,
        outdir=outdir,
        checkpoint=str(ckpt),
        device="cpu",
        precision="fp32",
        token_budget=512,
        checkpoint_every=60,
        num_workers=0,
        progress_interval=0,
    )
    return EmbedConfig(**{**base, **kw})


def embeddings(outdir):
    with h5py.File(outdir / "embeddings.h5", "r") as f:
        return [x.decode() for x in f["ids"][()]], f["embeddings"][()], dict(f.attrs)


@pytest.fixture(scope="module")
def reference(reads, tiny_checkpoint, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("ref") / "out"
    summary = run_embed(config(reads, outdir, tiny_checkpoint))
    return outdir, summary


def test_result_is_one_file_in_input_order_and_no_partial_state_remains(reads, reference):
    outdir, _ = reference
    ids, emb, attrs = embeddings(outdir)
    assert ids == read_fasta(reads).ids
    assert emb.shape[0] == N and np.isfinite(emb).all() and attrs["complete"]
    assert not (outdir / output.PARTIAL_DIR).exists()


@pytest.mark.parametrize("where", ["before_attrs", "before_rename", "after_rename"])
def test_a_kill_during_finalisation_resumes_to_the_identical_result(
    reads, reference, tiny_checkpoint, tmp_path, monkeypatch, where
):
    """Stop the process at each step of finishing (a BaseException stands for SIGKILL: nothing after it runs),
    then run the same command again: the result equals an uninterrupted run's, and nothing else is left."""

    class Killed(BaseException):
        pass

    real_replace, real_discard, real_file = output.Path.replace, output.discard_partial, h5py.File

    def kill(*a, **k):
        raise Killed()

    if where == "before_attrs":
        monkeypatch.setattr(
            output.h5py, "File", lambda p, mode="r", **k: kill() if mode == "r+" else real_file(p, mode, **k)
        )
    elif where == "before_rename":
        monkeypatch.setattr(
            output.Path,
            "replace",
            lambda self, target: kill() if target.name == "embeddings.h5" else real_replace(self, target),
        )
    else:
        monkeypatch.setattr(output, "discard_partial", kill)
    with pytest.raises(Killed):
        run_embed(config(reads, tmp_path / "out", tiny_checkpoint))
    monkeypatch.undo()
    assert real_discard is output.discard_partial
    run_embed(config(reads, tmp_path / "out", tiny_checkpoint))
    ids, emb, _ = embeddings(tmp_path / "out")
    ref_ids, ref_emb, _ = embeddings(reference[0])
    assert ids == ref_ids and np.array_equal(emb, ref_emb)
    assert not (tmp_path / "out" / output.PARTIAL_DIR).exists()


def cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "virnucpro.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def embed_args(reads, outdir, ckpt, *extra):
    return (
        "embed",
        reads,
        "-o",
        outdir,
        "--checkpoint",
        ckpt,
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--token-budget",
        "512",
        "--checkpoint-every",
        "60",
        "--progress-interval",
        "0",
        *extra,
    )


def test_phases_cover_the_process_wall_time(reads, tiny_checkpoint, tmp_path):
    t0 = time.time()
    res = cli(*embed_args(reads, tmp_path / "o", tiny_checkpoint, "--num-workers", "1"))
    outside = time.time() - t0
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "o" / "status.json").read_text())["summary"]
    phases, wall = summary["phases"], summary["job_wall_seconds"]
    for name in (
        "python_startup",
        "read_input",
        "load_weights",
        "compile",
        "warmup",
        "monitor_setup",
        "loop",
        "finalize",
    ):
        assert name in phases, name
    assert phases["python_startup"] > 0 and phases["loop"] > 0
    assert abs(sum(phases.values()) - wall) <= 0.03 * wall  # `other` included: nothing double-counted
    assert phases["other"] <= 0.03 * wall  # and the named phases leave next to nothing unexplained
    # the process's own wall time from its creation (interpreter start included); only the exit after the status
    # write is outside it, which a loaded machine can stretch to seconds
    # (the process's start is known to /proc's 10-ms clock ticks)
    assert wall <= outside + 0.05 and outside - wall <= max(0.25 * outside, 5.0)


def test_the_process_start_is_read_to_the_clock_tick():
    """psutil's create_time() rounds the boot time to whole seconds (off by up to 1 s: python_startup was
    inflated by ~0.9 s on this machine); the process's start must lie between its parent's spawn and its own
    first line."""
    code = "import time; t = time.time(); from virnucpro.utils.phases import process_start_epoch as s; print(s(), t)"
    before = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    start, first_line = map(float, out)
    assert before - 0.03 <= start <= first_line + 0.03


def test_rerun_after_a_kill_between_rename_and_status_says_ok(reads, reference, tmp_path, tiny_checkpoint):
    args = embed_args(reads, tmp_path / "o", tiny_checkpoint)
    assert cli(*args).returncode == 0
    status = tmp_path / "o" / "status.json"
    status.write_text(json.dumps({"status": "failed", "reason": "preempted"}))  # what the kill left behind
    res = cli(*args)
    assert res.returncode == 0 and "nothing to do" in res.stdout
    assert json.loads(status.read_text())["status"] == "ok"


def test_another_configurations_result_is_not_overwritten_without_asking(reads, tmp_path, tiny_checkpoint):
    out = tmp_path / "o"
    assert cli(*embed_args(reads, out, tiny_checkpoint)).returncode == 0
    res = cli(*embed_args(reads, out, tiny_checkpoint, "--output-dtype", "float16"))
    assert res.returncode == 2 and "another configuration" in res.stderr and "output_dtype" in res.stderr
    assert embeddings(out)[1].dtype == np.float32
    res = cli(*embed_args(reads, out, tiny_checkpoint, "--output-dtype", "float16", "--overwrite"))
    assert res.returncode == 0, res.stderr
    assert embeddings(out)[1].dtype == np.float16


def test_float16_output_matches_float32(reads, reference, tiny_checkpoint, tmp_path):
    run_embed(config(reads, tmp_path / "o", tiny_checkpoint, output_dtype="float16"))
    _, half, attrs = embeddings(tmp_path / "o")
    _, full, _ = embeddings(reference[0])
    assert half.dtype == np.float16 and attrs["output_dtype"] == "float16"
    rel = np.linalg.norm(half.astype(np.float32) - full, axis=1) / np.linalg.norm(full, axis=1)
    assert rel.max() <= 1e-3


def test_a_foreign_chunk_in_partial_is_redone(reads, reference, tiny_checkpoint, tmp_path, monkeypatch):
    """A self-consistent chunk of another run (other input) placed in .partial must not become this run's rows."""
    other = tmp_path / "other.fa"
    ids, seqs = make_sequences(N, 99, "short-reads")
    write_fasta(other, ids, seqs)
    calls = {"n": 0}

    def stop_after_first_chunk(*a, **k):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt

    real_write = output.write_chunk
    monkeypatch.setattr(output, "write_chunk", lambda *a, **k: (real_write(*a, **k), stop_after_first_chunk()))
    with pytest.raises(KeyboardInterrupt):
        run_embed(config(other, tmp_path / "other", tiny_checkpoint))
    monkeypatch.undo()
    foreign = sorted((tmp_path / "other" / output.PARTIAL_DIR).glob("chunk_*.h5"))
    assert foreign
    ours = tmp_path / "ours"
    with pytest.raises(KeyboardInterrupt):  # our own run, stopped after one chunk, so .partial exists
        monkeypatch.setattr(output, "write_chunk", lambda *a, **k: (real_write(*a, **k), stop_after_first_chunk()))
        calls["n"] = 0
        run_embed(config(reads, ours, tiny_checkpoint))
    monkeypatch.undo()
    for chunk in foreign:
        (ours / output.PARTIAL_DIR / chunk.name).write_bytes(chunk.read_bytes())
    run_embed(config(reads, ours, tiny_checkpoint))
    assert np.array_equal(embeddings(ours)[1], embeddings(reference[0])[1])


def test_second_run_on_the_same_outdir_is_refused_while_the_first_holds_it(reads, tiny_checkpoint, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    with output.OutdirLock(out):
        res = cli(*embed_args(reads, out, tiny_checkpoint))
    assert res.returncode == 2 and "another virnucpro run" in res.stderr and "Traceback" not in res.stderr
    assert not (out / "embeddings.h5").exists()


@pytest.mark.parametrize("case", ["file", "parent_file", "empty", "not_creatable"])
def test_unusable_outdir_is_refused_before_loading(reads, tiny_checkpoint, tmp_path, case):
    (tmp_path / "f").write_text("x")
    outdir = {
        "file": tmp_path / "f",
        "parent_file": tmp_path / "f" / "out",
        "empty": "",
        "not_creatable": "/proc/virnucpro-test/out",
    }[case]
    res = cli(*embed_args(reads, outdir, tiny_checkpoint))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "output directory" in res.stderr or "must name a directory" in res.stderr, res.stderr


def test_a_full_disk_during_checkpoints_exits_promptly_and_a_rerun_resumes(
    reads, reference, tiny_checkpoint, tmp_path, monkeypatch
):
    """ENOSPC from the writer thread with DataLoader workers running: a clear error, no hang; then resume."""
    real = output.write_rows
    state = {"chunks": 0}

    def full_after_a_while(*args):
        state["chunks"] += 1
        if state["chunks"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(output, "write_rows", full_after_a_while)
    out = tmp_path / "o"
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(
            exc=pytest.raises(OutputError, run_embed, config(reads, out, tiny_checkpoint, num_workers=2))
        )
    )
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the run hung after the write error"
    assert "disk is full" in str(result["exc"].value) and result["exc"].value.exit_code == EXIT_IO
    monkeypatch.undo()
    done_before = int(output.scan_partial(out / output.PARTIAL_DIR, N).done.sum())
    assert 0 < done_before < N
    run_embed(config(reads, out, tiny_checkpoint))
    assert np.array_equal(embeddings(out)[1], embeddings(reference[0])[1])


def test_peak_disk_stays_within_1_15x_of_the_final_output(tmp_path, tiny_checkpoint):
    ids, seqs = make_sequences(3000, 8, "short-reads")
    fasta = tmp_path / "r.fa"
    write_fasta(fasta, ids, seqs)
    out = tmp_path / "o"
    with DiskPeak(out, interval=0.005) as disk:  # allocated bytes, telemetry aside, sampled on a thread
        run_embed(config(fasta, out, tiny_checkpoint, checkpoint_every=500))
    final = (out / "embeddings.h5").stat().st_blocks * 512
    assert disk.peak <= 1.15 * final, (disk.peak, final)


def test_a_damaged_manifest_is_a_clear_error(tmp_path):
    (tmp_path / output.MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        output.check_manifest(tmp_path, {"a": 1})


def test_output_deleted_mid_run_is_a_clear_error_and_a_rerun_finishes(
    reads, reference, tiny_checkpoint, tmp_path, monkeypatch
):
    """`.partial` (with the data file) and `telemetry/` removed after the first chunk: a one-line OutputError
    (exit 74) instead of a traceback after all the work, and the rerun recomputes and finishes."""
    import shutil

    out, real = tmp_path / "o", output.write_chunk

    def delete_after_first(directory, *a, **k):
        path = real(directory, *a, **k)
        if (out / "telemetry").exists():
            shutil.rmtree(out / "telemetry")
            shutil.rmtree(out / output.PARTIAL_DIR)
        return path

    monkeypatch.setattr(output, "write_chunk", delete_after_first)
    with pytest.raises(OutputError, match="rerun the same command") as info:
        run_embed(config(reads, out, tiny_checkpoint, checkpoint_every=20))
    assert info.value.exit_code == EXIT_IO
    monkeypatch.undo()
    run_embed(config(reads, out, tiny_checkpoint))
    assert np.array_equal(embeddings(out)[1], embeddings(reference[0])[1])
    assert (out / "telemetry" / "telemetry_rank0.json").exists()


def test_user_errors_are_user_errors():
    assert issubclass(OutputError, UserError)


@pytest.mark.parametrize(
    ("err", "exit_code", "fragment"),
    [(errno.EROFS, 74, "read-only"), (errno.ENOSPC, 74, "disk is full"), (errno.EACCES, 2, "Permission denied")],
)
def test_an_unwritable_output_directory_is_74_for_the_storage_and_2_for_the_path(
    tmp_path, monkeypatch, err, exit_code, fragment
):
    """A read-only mount or a full disk is the storage's state (exit 74, rerun later), as for the same failure
    mid-run; a path the user may not write is a bad option (exit 2). A read-only mount was exit 2."""

    def refuse(**_):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(output.tempfile, "mkdtemp", refuse)
    with pytest.raises(UserError) as caught:
        output.check_outdir(tmp_path / "out")
    assert caught.value.exit_code == exit_code and fragment in str(caught.value), caught.value


def test_sizes_in_messages_are_never_a_bare_zero():
    assert output.size_text(2_048) == "0.00205 MB" and output.size_text(61_440_000_000) == "61.4 GB"
