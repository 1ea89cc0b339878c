"""Embeddings equal fair-esm's own forward on the same checkpoint file (fp32, CPU)."""

from __future__ import annotations

import argparse
import gzip

import h5py
import numpy as np
import pytest
import torch

from virnucpro.cli import main

LENGTHS = [1, 2, 3, 17, 64, 300, 1021, 1022]


def _sequences(rng) -> list[str]:
    alphabet = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    seqs = ["".join(rng.choice(alphabet, n)) for n in LENGTHS]
    seqs.append("MKXBZUOAXXC")  # ambiguous residues
    seqs.append("".join(rng.choice(alphabet, 1100)))  # truncated to 1022, as extract.py does
    return seqs


def fair_esm_embeddings(checkpoint, seqs, layer=-1):
    import esm

    with torch.serialization.safe_globals([argparse.Namespace]):
        model, alphabet = esm.pretrained.load_model_and_alphabet_local(checkpoint)
    model.eval()
    layer = layer % (model.num_layers + 1)
    convert = alphabet.get_batch_converter(truncation_seq_length=1022)
    out = []
    with torch.no_grad():
        for i, s in enumerate(seqs):  # one at a time: no padding interplay in the reference
            _, _, toks = convert([(str(i), s)])
            rep = model(toks, repr_layers=[layer])["representations"][layer]
            n = min(len(s), 1022)
            out.append(rep[0, 1 : n + 1].mean(0).numpy())
    return np.stack(out)


def _write(path, ids, seqs):
    path.write_text("".join(f">{i}\n{s}\n" for i, s in zip(ids, seqs)))
    return path


def _embed(fasta, outdir, checkpoint, *extra):
    rc = main(
        [
            "embed",
            str(fasta),
            "-o",
            str(outdir),
            "--checkpoint",
            str(checkpoint),
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--num-workers",
            "0",
            "--token-budget",
            "2048",
            *extra,
        ]
    )
    assert rc == 0
    with h5py.File(outdir / "embeddings.h5", "r") as f:
        return [x.decode() for x in f["ids"][()]], f["embeddings"][()], dict(f.attrs)


def _rel_err(a, b):
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("layer", [-1, 1])
def test_matches_fair_esm(tmp_path, tiny_checkpoint, layer):
    seqs = _sequences(np.random.default_rng(0))
    ids = [f"id{i}<b>&" for i in range(len(seqs))]
    fasta = _write(tmp_path / "in.fa", ids, seqs)
    got_ids, got, attrs = _embed(fasta, tmp_path / "out", tiny_checkpoint, "--repr-layer", str(layer))
    ref = fair_esm_embeddings(tiny_checkpoint, seqs, layer)
    assert got_ids == ids
    err = _rel_err(got, ref)
    assert err.max() <= 1e-4, err
    assert attrs["truncated_count"] == 1 and attrs["weights"] == "checkpoint"
    assert attrs["precision"] == "fp32" and len(attrs["input_sha256"]) == 64


def test_gzip_and_crlf_give_identical_embeddings(tmp_path, tiny_checkpoint):
    seqs = _sequences(np.random.default_rng(1))[:6]
    ids = [f"s{i}" for i in range(len(seqs))]
    plain = _write(tmp_path / "a.fa", ids, seqs)
    crlf = tmp_path / "b.fa"
    crlf.write_bytes(plain.read_bytes().replace(b"\n", b"\r\n"))
    gz = tmp_path / "c.fa.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    results = [_embed(f, tmp_path / f"out_{f.name}", tiny_checkpoint)[1] for f in (plain, crlf, gz)]
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])


def test_rerun_on_complete_output_does_nothing(tmp_path, tiny_checkpoint, capsys):
    fasta = _write(tmp_path / "a.fa", ["a", "b"], ["MKV", "WWC"])
    _embed(fasta, tmp_path / "out", tiny_checkpoint)
    mtime = (tmp_path / "out" / "embeddings.h5").stat().st_mtime_ns
    _embed(fasta, tmp_path / "out", tiny_checkpoint)
    assert "already complete" in capsys.readouterr().out
    assert (tmp_path / "out" / "embeddings.h5").stat().st_mtime_ns == mtime


def test_padded_to_budget_and_compiled_match_fair_esm(tmp_path, tiny_checkpoint):
    """The GPU configuration's shape handling (a trailing pad segment, compiled kernels) on CPU."""
    seqs = _sequences(np.random.default_rng(2))[:7]
    fasta = _write(tmp_path / "in.fa", [f"s{i}" for i in range(len(seqs))], seqs)
    _, got, _ = _embed(fasta, tmp_path / "out", tiny_checkpoint, "--compile", "on")
    err = _rel_err(got, fair_esm_embeddings(tiny_checkpoint, seqs))
    assert err.max() <= 1e-4, err


def test_half_precision_keeps_residual_stream_embeddings_and_norms_fp32(tmp_path, tiny_checkpoint):
    """The CPU twin of the GPU dtype layout: only the linear layers take bf16; the result stays near fp32's."""
    from virnucpro.data.loader import Vocabulary
    from virnucpro.models.packed_esm2 import PackedESM2
    from virnucpro.models.weights import resolve_weights

    weights = resolve_weights(None, str(tiny_checkpoint), False, 0, "cpu")
    vocab = Vocabulary.esm2()
    model = PackedESM2.from_state_dict(
        weights.spec, weights.state_dict, vocab.cls_idx, vocab.eos_idx, "cpu", torch.bfloat16
    )
    dtypes = {
        type(m).__name__: {p.dtype for p in m.parameters(recurse=False)}
        for m in model.modules()
        if any(True for _ in m.parameters(recurse=False))
    }
    assert dtypes == {"Embedding": {torch.float32}, "LayerNorm": {torch.float32}, "Linear": {torch.bfloat16}}
    seqs = _sequences(np.random.default_rng(1))[:7]
    fasta = _write(tmp_path / "in.fa", [f"s{i}" for i in range(len(seqs))], seqs)
    rc = main(
        [
            "embed",
            str(fasta),
            "-o",
            str(tmp_path / "out"),
            "--checkpoint",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "--precision",
            "bf16",
            "--num-workers",
            "0",
            "--token-budget",
            "2048",
        ]
    )
    assert rc == 0
    with h5py.File(tmp_path / "out" / "embeddings.h5", "r") as f:
        got, gelu = f["embeddings"][()], f.attrs["gelu"]
    err = _rel_err(got, fair_esm_embeddings(tiny_checkpoint, seqs))
    assert gelu == "erf" and np.isfinite(got).all() and err.max() < 2e-2, err
