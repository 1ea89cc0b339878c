"""`--long-sequences chunk`: windows cover every residue, and the result equals fair-esm's own forward over the
same windows (each a separate sequence), averaged per residue over windows, then over residues."""

from __future__ import annotations

import argparse

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.cli import main
from virnucpro.data.fasta import MAX_RESIDUES, read_fasta
from virnucpro.data.windows import WindowSums, embedded_tokens, residue_weights, split_into_windows, window_starts

W = MAX_RESIDUES
ALPHABET = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


# --- window starts -------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6 * W), st.integers(0, W - 1))
def test_windows_cover_every_residue_first_at_0_last_at_the_end(length, overlap):
    starts = window_starts(length, overlap)
    step = W - overlap
    assert starts[0] == 0
    assert starts == sorted(set(starts))  # increasing, no duplicate window
    if length <= W:
        assert starts == [0]
        return
    assert starts[-1] + W == length  # the last window ends exactly at the sequence's end
    assert all(0 <= s and s + W <= length for s in starts)  # every window is a full 1022 residues
    assert all(b - a <= step for a, b in zip(starts, starts[1:]))  # so consecutive windows leave no gap
    assert starts[:-1] == list(range(0, len(starts[:-1]) * step, step))  # the regular ones at k*s
    covered = np.zeros(length, dtype=int)
    for s in starts:
        covered[s : s + W] += 1
    assert (covered >= 1).all()
    weights = residue_weights(length, starts)
    assert abs(sum(float(w.sum()) for w in weights) - 1.0) < 1e-5  # the weights make a mean over residues


@pytest.mark.parametrize(
    "length, overlap, expected",
    [
        (W, 256, [0]),
        (W + 1, 256, [0, 1]),
        (W + (W - 256), 256, [0, W - 256]),  # 1022 + s: the last window is the second regular one
        (2 * W + 17, 0, [0, W, W + 17]),
        (2 * W + 17, 256, [0, 766, 1039]),
    ],
)
def test_window_starts_examples(length, overlap, expected):
    assert window_starts(length, overlap) == expected


def test_embedded_tokens_count_each_window_with_its_bos_and_eos():
    lengths = np.array([5, W, W + 1, 2 * W + 17])
    assert embedded_tokens(lengths, None).tolist() == [7, W + 2, W + 3, 2 * W + 19]
    assert embedded_tokens(lengths, 256).tolist() == [7, W + 2, 2 * (W + 2), 3 * (W + 2)]


def test_window_sums_hand_out_a_sequence_only_with_its_last_window():
    seqs = [b"A" * 5, b"C" * (W + 300), b"D" * 7]
    items = split_into_windows(seqs, 256)
    assert items.owner.tolist() == [0, 1, 1, 2] and items.windows_per_sequence.tolist() == [1, 2, 1]
    sums = WindowSums(items)
    rows = np.arange(8, dtype=np.float32).reshape(4, 2)
    pos, out = sums.add(np.array([1, 0]), rows[[1, 0]])
    assert pos.tolist() == [0] and out.tolist() == [[0.0, 1.0]]  # the long one waits for its second window
    with pytest.raises(RuntimeError, match="2 sequence"):
        sums.check_complete()
    pos, out = sums.add(np.array([3, 2]), rows[[3, 2]])
    assert pos.tolist() == [2, 1] and out.tolist() == [[6.0, 7.0], [2.0 + 4.0, 3.0 + 5.0]]
    sums.check_complete()


def test_chunk_keeps_long_sequences_whole_and_counts_them(tmp_path):
    f = tmp_path / "long.fa"
    f.write_text(f">a\n{'M' * 2000}\n>b\nMKV\n")
    r = read_fasta(f, long_sequences="chunk")
    assert r.lengths() == [2000, 3] and r.chunked == 1 and r.truncated == 0


# --- equal to fair-esm over the same windows ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fair_esm(tiny_checkpoint):
    import esm

    with torch.serialization.safe_globals([argparse.Namespace]):
        model, alphabet = esm.pretrained.load_model_and_alphabet_local(tiny_checkpoint)
    return model.eval(), alphabet.get_batch_converter()


def reference(fair_esm, seq: str, overlap: int) -> np.ndarray:
    """fair-esm on each window as a separate sequence; per-residue mean over windows; mean over residues."""
    model, convert = fair_esm
    layer = model.num_layers
    starts = window_starts(len(seq), overlap)
    total = np.zeros((len(seq), model.embed_dim))
    count = np.zeros(len(seq))
    with torch.no_grad():
        for s in starts:
            window = seq[s : s + W]
            _, _, toks = convert([("w", window)])
            rep = model(toks, repr_layers=[layer])["representations"][layer][0, 1 : len(window) + 1].double()
            total[s : s + len(window)] += rep.numpy()
            count[s : s + len(window)] += 1
    return (total / count[:, None]).mean(0)


def embed(tmp_path, tiny_checkpoint, seqs, *extra):
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    out = tmp_path / "out"
    argv = ["embed", fasta, "-o", out, "--checkpoint", tiny_checkpoint, "--device", "cpu", "--precision", "fp32"]
    argv += ["--num-workers", "0", "--token-budget", "2100", "--long-sequences", "chunk", *extra]
    assert main([str(a) for a in argv]) == 0
    with h5py.File(out / "embeddings.h5", "r") as f:
        return [x.decode() for x in f["ids"][()]], f["embeddings"][()], dict(f.attrs)


def rel_err(a, b):
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.parametrize("overlap", [0, 256])
def test_chunk_equals_fair_esm_over_the_same_windows(tmp_path, tiny_checkpoint, fair_esm, overlap):
    rng = np.random.default_rng(overlap)
    lengths = [W + 1, W + (W - overlap), 2 * W + 17, 5, 300, W, 40]  # long ones mixed with short in one batch
    seqs = ["".join(rng.choice(ALPHABET, n)) for n in lengths]
    ids, got, attrs = embed(tmp_path, tiny_checkpoint, seqs, "--window-overlap", str(overlap))
    assert ids == [f"s{i}" for i in range(len(seqs))]
    ref = np.stack([reference(fair_esm, s, overlap) for s in seqs])
    err = rel_err(got.astype(np.float64), ref)
    assert err.max() <= 1e-4, err
    assert attrs["chunked_count"] == 3 and attrs["truncated_count"] == 0
    assert attrs["long_sequences"] == "chunk" and attrs["window_overlap"] == overlap


def test_a_long_sequence_alone_in_its_batches(tmp_path, tiny_checkpoint, fair_esm):
    """A budget of one window per batch: each window is its own batch, summed across batches."""
    seq = "".join(np.random.default_rng(5).choice(ALPHABET, 2 * W + 17))
    fasta = tmp_path / "one.fa"
    fasta.write_text(f">long\n{seq}\n")
    argv = ["embed", fasta, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "--device", "cpu"]
    argv += ["--num-workers", "1", "--token-budget", "1024", "--long-sequences", "chunk", "--checkpoint-every", "1"]
    assert main([str(a) for a in argv]) == 0
    with h5py.File(tmp_path / "out" / "embeddings.h5", "r") as f:
        got = f["embeddings"][0]
    assert rel_err(got.astype(np.float64), reference(fair_esm, seq, 256)) <= 1e-4


@pytest.mark.parametrize("overlap", ["-1", "1022", "5000"])
def test_bad_overlap_is_one_line_exit_2(tmp_path, tiny_checkpoint, capsys, overlap):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKV\n")
    argv = ["embed", fasta, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "--device", "cpu"]
    argv += ["--long-sequences", "chunk", "--window-overlap", overlap]
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--window-overlap" in lines[0] and "Traceback" not in lines[0], lines
    assert not (tmp_path / "out").exists()


# --- kill and resume: a sequence is written whole or not at all ------------------------------------------------


def chunk_cmd(fasta, outdir, ckpt, overlap=100):
    from test_preemption import cmd  # the kill test's command line, with chunking added

    args = cmd(fasta, outdir, ckpt)
    args[args.index("--token-budget") + 1] = "1100"  # one window per batch: a sequence spans several batches
    args[args.index("--checkpoint-every") + 1] = "20"
    extra = ["--buffer-size", "40", "--long-sequences", "chunk", "--window-overlap", str(overlap)]  # windows spread
    return [*args, *extra]


@pytest.fixture(scope="module")
def mixed_fasta(tmp_path_factory):
    from virnucpro.data.fasta import write_fasta
    from virnucpro.data.synthetic import make_sequences

    ids, seqs = make_sequences(300, 5, "short-reads")
    rng = np.random.default_rng(9)
    for k in range(12):  # long sequences spread through the input
        at = 25 * k + 3
        ids.insert(at, f"long_{k}")
        seqs.insert(at, "".join(rng.choice(ALPHABET, int(rng.integers(W + 1, 3 * W)))))
    path = tmp_path_factory.mktemp("chunkkill") / "mixed.fa"
    write_fasta(path, ids, seqs)
    return path


def test_kills_never_leave_a_partial_sequence_and_resume_equals_uninterrupted(tmp_path, mixed_fasta, tiny_checkpoint):
    import random
    import signal
    import subprocess

    from test_preemption import start_and_kill

    from virnucpro.pipeline.output import DATA_FILE, PARTIAL_DIR, read_layout, read_rows, scan_partial

    ref = subprocess.run(chunk_cmd(mixed_fasta, tmp_path / "ref", tiny_checkpoint), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    with h5py.File(tmp_path / "ref" / "embeddings.h5") as f:
        ref_rows, n, ref_ids = f["embeddings"][()], len(f["ids"]), list(f["ids"][()])
        assert f.attrs["chunked_count"] == 12

    out, partial = tmp_path / "killed", tmp_path / "killed" / PARTIAL_DIR
    rng, progress = random.Random(7), []
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
        code, err = start_and_kill(chunk_cmd(mixed_fasta, out, tiny_checkpoint), out, sig, rng.uniform(0, 0.3))
        if code == 0:
            break
        done = scan_partial(partial, n, read_layout(partial / DATA_FILE)).done
        progress.append(int(done.sum()))
        # every checkpointed row is a whole sequence's final row: no long sequence was written from some windows
        np.testing.assert_allclose(
            read_rows(read_layout(partial / DATA_FILE), np.flatnonzero(done)), ref_rows[done], atol=1e-5
        )
    assert progress and 0 < progress[0] < n, "the first kill must land mid-run for this test to mean anything"

    other = subprocess.run(chunk_cmd(mixed_fasta, out, tiny_checkpoint, overlap=200), capture_output=True, text=True)
    assert other.returncode == 2 and "window_overlap" in other.stderr  # another overlap never mixes in

    final = subprocess.run(chunk_cmd(mixed_fasta, out, tiny_checkpoint), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    with h5py.File(out / "embeddings.h5") as f:
        assert list(f["ids"][()]) == ref_ids
        np.testing.assert_allclose(f["embeddings"][()], ref_rows, rtol=0, atol=1e-5)


def test_two_ranks_equal_one_with_chunked_sequences(tmp_path, tiny_checkpoint):
    """Every window of a sequence is summed on the rank that owns the sequence: two processes give one's result."""
    import subprocess

    rng = np.random.default_rng(3)
    lengths = [int(n) for n in rng.integers(20, 200, 40)]
    lengths[5:5] = [W + 1, 3 * W + 5, 2 * W, W + 700]
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">s{i}\n{''.join(rng.choice(ALPHABET, n))}\n" for i, n in enumerate(lengths)))
    rows = []
    for world_size in (1, 2):
        out = tmp_path / f"ws{world_size}"
        args = [*chunk_cmd(fasta, out, tiny_checkpoint), "--world-size", str(world_size)]
        run = subprocess.run(args, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        with h5py.File(out / "embeddings.h5") as f:
            rows.append(f["embeddings"][()])
            assert f.attrs["chunked_count"] == 4 and f.attrs["world_size"] == world_size
    np.testing.assert_allclose(rows[1], rows[0], rtol=0, atol=1e-5)
