"""Ids kept byte for byte in `ids` (issue 15 item 4): '/', very long, non-ASCII, description after the id."""

from __future__ import annotations

import h5py
import pytest

from virnucpro.cli import main

ODD_IDS = [
    "sp/P12345/VIRUS_1",  # would be an HDF5 group path if used as a name
    "/leading/slash",
    "x" * 10_000,
    "séquence_δ_🦠",
    "emoji🦠only",
    "quotes'\"<&>;$(x)",
    "trailing.dot.",
]


def embed(tmp_path, tiny_checkpoint, fasta_text: str) -> int:
    fasta = tmp_path / "in.fa"
    fasta.write_bytes(fasta_text.encode("utf-8"))
    argv = ["embed", fasta, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, "--device", "cpu"]
    try:
        return main([str(a) for a in [*argv, "--num-workers", "0"]])
    except SystemExit as exc:
        return exc.code


def test_odd_ids_are_written_byte_exact_in_input_order(tmp_path, tiny_checkpoint):
    headers = [*ODD_IDS, "with_description  a free text\tdescription / with slash"]
    text = "".join(f">{h}\nMKVL{'A' * i}\n" for i, h in enumerate(headers))
    assert embed(tmp_path, tiny_checkpoint, text) == 0
    expected = [*ODD_IDS, "with_description"]  # the id is the header's first word; the description is dropped
    with h5py.File(tmp_path / "out" / "embeddings.h5", "r") as f:
        raw = list(f["ids"][()])
        assert list(f.keys()) == ["embeddings", "ids"]  # no id became a group or a dataset
        assert f["embeddings"].shape[0] == len(expected)
    assert raw == [i.encode("utf-8") for i in expected]  # the UTF-8 bytes, unchanged, in input order
    assert [r.decode("utf-8") for r in raw] == expected


@pytest.mark.parametrize(
    "text, message",
    [
        (">a/b\nMKV\n>c\nMKV\n>a/b desc\nMKV\n", "duplicate record id 'a/b' (lines 1 and 5)"),
        (">séquence_δ_🦠\nMKV\n>séquence_δ_🦠\nMKV\n", "duplicate record id 'séquence_δ_🦠' (lines 1 and 3)"),
    ],
)
def test_duplicate_ids_are_refused_in_one_line(tmp_path, tiny_checkpoint, capsys, text, message):
    """Two records with one id cannot be told apart downstream: refused before anything is written."""
    assert embed(tmp_path, tiny_checkpoint, text) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out" / "embeddings.h5").exists()
