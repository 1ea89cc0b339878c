"""FASTA parsing and the one-line, exit-2 errors for bad input."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import subprocess
import sys
import threading

import pytest

from virnucpro.data.fasta import read_fasta
from virnucpro.errors import UserError


def test_multiline_crlf_lowercase_stop_and_ambiguous(tmp_path):
    f = tmp_path / "a.fa"
    f.write_bytes(b">s1 description here\r\nmkta\r\nyiak*\r\n>s2\r\nXBZUO\r\n\r\n>s3\nAC DE\n")
    r = read_fasta(f)
    assert r.ids == ["s1", "s2", "s3"]
    assert r.seqs == [b"MKTAYIAK", b"XBZUO", b"ACDE"]
    assert r.truncated == 0


def test_gzip_detected_by_content_and_same_digest(tmp_path):
    text = b">a\nMKV\n>b\nWWW\n"
    plain = tmp_path / "x.fa"
    plain.write_bytes(text)
    gz = tmp_path / "x.fasta"  # no .gz suffix on purpose
    gz.write_bytes(gzip.compress(text))
    a, b = read_fasta(plain), read_fasta(gz)
    assert (a.ids, a.seqs, a.sha256) == (b.ids, b.seqs, b.sha256)


def test_long_sequences_truncated_and_counted_or_refused(tmp_path):
    f = tmp_path / "long.fa"
    f.write_text(">long\n" + "A" * 1500 + "\n>ok\n" + "C" * 1022 + "\n")
    r = read_fasta(f)
    assert [len(s) for s in r.seqs] == [1022, 1022] and r.truncated == 1
    with pytest.raises(UserError, match="'long'.*1500 residues"):
        read_fasta(f, long_sequences="error")


BAD_INPUTS = {
    "empty": (b"", "empty FASTA"),
    "whitespace only": (b"\n  \n", "empty FASTA"),
    "text before header": (b"MKV\n>a\nMKV\n", "line 1 has text before the first '>'"),
    "no sequence": (b">a\n>b\nMKV\n", "record 'a' (line 1) has no sequence"),
    "no sequence at end": (b">a\nMKV\n>b\n", "record 'b' (line 3) has no sequence"),
    "only stop": (b">a\n*\n", "record 'a' (line 1) has no sequence"),
    "duplicate ids": (b">a\nMKV\n>a x\nMKV\n", "duplicate record id 'a' (lines 1 and 3)"),
    "digit": (b">a\nMK3V\n", "record 'a' (line 1) has invalid character '3' at residue 3"),
    "inner stop": (b">a\nMK*V\n", "record 'a' (line 1) has '*' (stop codon) inside the sequence at residue 3"),
    "binary junk": (b">a\nMK\x00\xffV\n", "record 'a' (line 1) has invalid byte 0x00 at residue 3"),
    "gap": (b">a\nMK-V\n", "invalid character '-'"),
    "empty id": (b">\nMKV\n", "line 1 has an empty record id"),
    "corrupt gzip": (b"\x1f\x8b\x08\x00garbage", "cannot read FASTA"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_named_error(tmp_path, name):
    content, message = BAD_INPUTS[name]
    f = tmp_path / "bad.fa"
    f.write_bytes(content)
    with pytest.raises(UserError) as info:
        read_fasta(f)
    assert message in str(info.value)
    assert str(f) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["empty", "duplicate ids", "inner stop", "binary junk", "text before header"])
def test_bad_input_cli_exit_2_one_line_no_output(tmp_path, name):
    content, message = BAD_INPUTS[name]
    f = tmp_path / "bad.fa"
    f.write_bytes(content)
    out = tmp_path / "out"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "virnucpro.cli",
            "embed",
            str(f),
            "-o",
            str(out),
            "--model",
            "esm2_t6_8M_UR50D",
            "--random-weights",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such FASTA file"):
        read_fasta(tmp_path / "nope.fa")


# --- what users hand over instead of a plain FASTA (issue 18) --------------------------------------------------

TEXT = b">a desc\nMKV\nLL\n>b\nWWC\n"


READABLE = {
    "utf-8 BOM": b"\xef\xbb\xbf" + TEXT,
    "old-Mac CR endings": TEXT.replace(b"\n", b"\r"),
    "bzip2": bz2.compress(TEXT),
    "xz": lzma.compress(TEXT),
    "multi-member gzip (bgzip)": gzip.compress(TEXT[:14]) + gzip.compress(TEXT[14:]),  # kept working
}


@pytest.mark.parametrize("name", sorted(READABLE))
def test_readable_variants_give_the_same_records(tmp_path, name):
    f = tmp_path / "in.fa"
    f.write_bytes(READABLE[name])
    r = read_fasta(f)
    assert (r.ids, r.seqs) == (["a", "b"], [b"MKVLL", b"WWC"])


def test_cr_and_crlf_split_across_read_chunks(tmp_path, monkeypatch):
    from virnucpro.data import fasta_stream

    monkeypatch.setattr(fasta_stream, "CHUNK", 3)  # every line end straddles a chunk boundary somewhere
    for ending in (b"\r", b"\r\n", b"\n"):
        f = tmp_path / "in.fa"
        f.write_bytes(TEXT.replace(b"\n", ending))
        r = read_fasta(f)
        assert (r.ids, r.seqs) == (["a", "b"], [b"MKVLL", b"WWC"]), ending


REFUSED = {
    "utf-16 with BOM": (">a\nMKV\n".encode("utf-16"), "UTF-16-encoded text"),
    "utf-16 without BOM": (">a\nMKV\n".encode("utf-16-le"), "UTF-16-encoded text"),
    "utf-32": (">a\nMKV\n".encode("utf-32"), "UTF-32-encoded text"),
    "zstd": (b"\x28\xb5\x2f\xfd" + b"\x00" * 20, "zstd-compressed"),
    "zip": (b"PK\x03\x04" + b"\x00" * 20, "a zip archive"),
    "hdf5": (b"\x89HDF\r\n\x1a\n" + b"\x00" * 20, "an HDF5 file"),
    "fastq": (b"@r1\nACGT\n+\nIIII\n", "a FASTQ file?"),
    "binary": (b"\x01\x02garbage\n>a\nMKV\n", "binary data before the first '>' header"),
    "corrupt bzip2": (b"BZh91AY&SY" + b"\x00" * 30, "cannot read FASTA"),
    "truncated xz": (lzma.compress(TEXT)[:20], "cannot read FASTA"),
    "nul in id": (b">a\x00b\nMKV\n", "record id 'a\\x00b' on line 1 contains a NUL byte"),
    "control character in id": (b">a\x07b\nMKV\n", "contains control character 0x07"),
    "non-utf-8 id": (b">caf\xe9\nMKV\n", "header on line 1 is not valid UTF-8 text (byte 0xe9)"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unreadable_variants_are_refused_by_name(tmp_path, name):
    content, message = REFUSED[name]
    f = tmp_path / "in.fa"
    f.write_bytes(content)
    with pytest.raises(UserError) as info:
        read_fasta(f)
    assert message in str(info.value) and str(f) in str(info.value) and "\n" not in str(info.value)


def test_directory_is_named_as_such(tmp_path):
    with pytest.raises(UserError, match="is a directory, not a FASTA file"):
        read_fasta(tmp_path)


def test_a_pipe_is_read(tmp_path):
    fifo = tmp_path / "reads.fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as fh:
            fh.write(gzip.compress(TEXT))  # compressed, through a pipe: sniffed without seeking

    writer = threading.Thread(target=feed, daemon=True)  # daemon: a reader that never opens must not hang pytest
    writer.start()
    r = read_fasta(fifo)
    writer.join()
    assert (r.ids, r.seqs) == (["a", "b"], [b"MKVLL", b"WWC"])
    assert r.sha256 == hashlib.sha256(TEXT).hexdigest()


def test_nucleotide_reads_are_warned_about(tmp_path, caplog):
    f = tmp_path / "dna.fa"
    f.write_text(">r1\nACGTACGTTAGCTAGCATCGATCGA\n>r2\nTTGACNNACGTAGCTAGCTAGGCAT\n>p\nMKVLAAGHTRWQ\n")
    with caplog.at_level("WARNING"):
        read_fasta(f)
    assert "2 of 2 sequences of 20+ residues contain only A/C/G/T/U/N" in caplog.text
    caplog.clear()
    f.write_text(">p\nMKVLAAGHTRWQACGTMKVLAAG\n")
    with caplog.at_level("WARNING"):
        read_fasta(f)
    assert "nucleotide" not in caplog.text
