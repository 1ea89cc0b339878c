"""FASTA reading and validation.

Every problem is raised as a `UserError` whose message names the file, the record and the line, so the
CLI can print one line and exit 2 before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from virnucpro.data.fasta_stream import READ_ERRORS, iter_lines, open_fasta_bytes
from virnucpro.errors import UserError

#: ESM-2's residue vocabulary as accepted here: the 20 standard amino acids plus the ambiguous X B Z U O.
VALID_RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBZUO"
#: ESM-2 was trained on 1024-token windows: 1022 residues plus BOS and EOS (fair-esm's extract.py truncates here).
MAX_RESIDUES = 1022

_INVALID = re.compile(rb"[^" + VALID_RESIDUES.encode() + rb"]")
_WHITESPACE = re.compile(rb"\s+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BINARY = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")
_NUCLEOTIDES = re.compile(rb"[ACGTUN]+")
#: A protein of this length made of A/C/G/T/U/N letters only is vanishingly unlikely ((6/20)^20 < 1e-10).
NUCLEOTIDE_MIN_LENGTH = 20

logger = logging.getLogger("virnucpro.data.fasta")


@dataclass
class Records:
    """Validated sequences in input order (residues as upper-case ASCII bytes)."""

    ids: list[str]
    seqs: list[bytes]
    sha256: str
    truncated: int = 0
    chunked: int = 0  # sequences over MAX_RESIDUES kept whole, to be embedded in windows

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        return [len(s) for s in self.seqs]


def _describe(byte: int) -> str:
    ch = chr(byte)
    if ch == "*":
        return "'*' (stop codon) inside the sequence"
    if 32 < byte < 127:
        return f"invalid character '{ch}'"
    return f"invalid byte 0x{byte:02x}"


def _before_first_header(path: Path, lineno: int, line: bytes) -> UserError:
    """Name what a file that does not start with '>' most likely is."""
    if lineno == 1 and line.startswith(b"@"):
        return UserError(f"{path}: starts with '@': a FASTQ file? give a protein FASTA ('>' headers)")
    if _BINARY.search(line):
        return UserError(
            f"{path}: line {lineno} holds binary data before the first '>' header: not a FASTA file "
            f"(or compressed in a format other than gzip, bzip2 or xz)"
        )
    return UserError(f"{path}: line {lineno} has text before the first '>' header")


def _record_id(path: Path, lineno: int, header: bytes) -> str:
    """The header's first word, refused if it is empty, not UTF-8, or holds a control character (NUL...)."""
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: header on line {lineno} is not valid UTF-8 text (byte 0x{header[exc.start]:02x})"
        ) from None
    if not text:
        raise UserError(f"{path}: header on line {lineno} has an empty record id")
    rid = text.split()[0]
    if bad := _CONTROL.search(rid):
        what = "a NUL byte" if bad.group() == "\x00" else f"control character 0x{ord(bad.group()):02x}"
        raise UserError(f"{path}: record id {rid!r} on line {lineno} contains {what}")
    return rid


#: What `--long-sequences` may ask for sequences over `max_residues`.
LONG_SEQUENCE_MODES = ("truncate", "error", "chunk")


def iter_records(path: Path, digest) -> Iterator[tuple[int, str, bytes]]:
    """(header line, id, residues) of each record, validated; the bytes read go to `digest`. Streaming: the one
    record parser of `read_fasta` and of the embed target's split (which must not hold 6M records)."""
    current: tuple[int, str] | None = None
    parts: list[bytes] = []

    def finish() -> tuple[int, str, bytes]:
        line, rid = current
        seq = b"".join(parts).upper().rstrip(b"*")
        if not seq:
            raise UserError(f"{path}: record '{rid}' (line {line}) has no sequence")
        if bad := _INVALID.search(seq):
            raise UserError(
                f"{path}: record '{rid}' (line {line}) has {_describe(seq[bad.start()])} at residue {bad.start() + 1}"
            )
        return line, rid, seq

    try:
        with open_fasta_bytes(path) as fh:
            for lineno, line in enumerate(iter_lines(fh, digest, path), start=1):
                if line.startswith(b">"):
                    if current is not None:
                        yield finish()
                    current, parts = (lineno, _record_id(path, lineno, line[1:].strip())), []
                elif current is None:
                    if line.strip():
                        raise _before_first_header(path, lineno, line)
                else:
                    parts.append(_WHITESPACE.sub(b"", line))
            if current is not None:
                yield finish()
    except READ_ERRORS as exc:  # truncated or corrupt compressed data, unreadable files
        raise UserError(f"{path}: cannot read FASTA ({exc.__class__.__name__}: {exc})") from None


def too_long(path: Path, rid: str, line: int, residues: int, remedy: str, limit: int = MAX_RESIDUES) -> UserError:
    """The refusal of a sequence over the model's window (`--long-sequences error`), with what to do instead."""
    return UserError(
        f"{path}: record '{rid}' (line {line}) has {residues} residues, over ESM-2's {limit}-residue window ({remedy})"
    )


def _fit_window(path: Path, rid: str, line: int, seq: bytes, records: Records, mode: str, limit: int) -> bytes:
    """A sequence over `limit` residues truncated (counted), kept whole for windows (counted) or refused."""
    if len(seq) <= limit:
        return seq
    if mode == "error":
        remedy = f"use --long-sequences truncate to keep its first {limit}, or chunk to embed it in windows"
        raise too_long(path, rid, line, len(seq), remedy, limit)
    if mode == "chunk":
        records.chunked += 1
        return seq
    records.truncated += 1
    return seq[:limit]


def read_fasta(path: str | Path, long_sequences: str = "truncate", max_residues: int = MAX_RESIDUES) -> Records:
    """Read and validate a FASTA file: plain, gzip, bzip2 or xz; `-` (stdin) and pipes too (see `fasta_stream`).

    A record's id is its header's first word (as Biopython's `record.id`; fair-esm keeps the whole line), kept
    byte for byte: '/', non-ASCII and any length are fine; a repeated id is an error naming both lines.
    Sequences are upper-cased, CR/whitespace removed and one trailing '*' run stripped. Sequences over
    `max_residues` are truncated (counted in `Records.truncated`), kept whole for windowing (`chunk`, counted
    in `Records.chunked`) or refused (`error`).
    """
    path = Path(path)
    if long_sequences not in LONG_SEQUENCE_MODES:
        raise UserError(f"--long-sequences must be one of {', '.join(LONG_SEQUENCE_MODES)}, not {long_sequences!r}")
    digest = hashlib.sha256()
    records, first_line = Records([], [], ""), {}
    for lineno, rid, seq in iter_records(path, digest):
        if rid in first_line:
            raise UserError(f"{path}: duplicate record id '{rid}' (lines {first_line[rid]} and {lineno})")
        first_line[rid] = lineno
        records.ids.append(rid)
        records.seqs.append(_fit_window(path, rid, lineno, seq, records, long_sequences, max_residues))
    if not records.ids:
        raise UserError(f"{path}: empty FASTA file (no '>' records)")
    _warn_if_nucleotides(path, records.seqs)
    records.sha256 = digest.hexdigest()
    return records


def _warn_if_nucleotides(path: Path, seqs: list[bytes]) -> None:
    """DNA reads are valid letters for ESM-2 (A, C, G, T, N are amino acids) but embedding them is meaningless:
    say so when most longer sequences are nucleotide-only (VirNucPro translates reads in six frames first)."""
    longer = [s for s in seqs if len(s) >= NUCLEOTIDE_MIN_LENGTH]
    dna = sum(1 for s in longer if _NUCLEOTIDES.fullmatch(s))
    if longer and dna * 2 > len(longer):
        logger.warning(
            "%s: %d of %d sequences of %d+ residues contain only A/C/G/T/U/N: nucleotide reads? ESM-2 "
            "embeds proteins; translate them first (six frames, e.g. VirNucPro's preprocessing)",
            path,
            dna,
            len(longer),
            NUCLEOTIDE_MIN_LENGTH,
        )


def write_fasta(path: str | Path, ids: list[str], seqs: list[str], width: int = 60) -> None:
    """Write records as a plain FASTA file, wrapped at `width` residues (written to a temporary name first)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give the FASTA file's name")
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as fh:
            for rid, seq in zip(ids, seqs):
                fh.write(f">{rid}\n")
                for i in range(0, len(seq), width):
                    fh.write(seq[i : i + width] + "\n")
        tmp.replace(path)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{path}: cannot write FASTA (a parent of it is a file, not a directory)") from None
    except OSError as exc:  # no permission, disk full: the user's path, not a bug
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write FASTA ({exc.strerror or exc})") from None
