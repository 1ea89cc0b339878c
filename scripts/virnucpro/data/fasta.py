"""FASTA reading and validation.

Every problem is raised as a `UserError` whose message names the file, the record and the line, so the
CLI can print one line and exit 2 before anything is written.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from virnucpro.errors import UserError

#: ESM-2's residue vocabulary as accepted here: the 20 standard amino acids plus the ambiguous X B Z U O.
VALID_RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBZUO"
#: ESM-2 was trained on 1024-token windows: 1022 residues plus BOS and EOS (fair-esm's extract.py truncates here).
MAX_RESIDUES = 1022

_INVALID = re.compile(rb"[^" + VALID_RESIDUES.encode() + rb"]")
_WHITESPACE = re.compile(rb"\s+")


@dataclass
class Records:
    """Validated sequences in input order (residues as upper-case ASCII bytes)."""

    ids: list[str]
    seqs: list[bytes]
    sha256: str
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        return [len(s) for s in self.seqs]


def _open_bytes(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _describe(byte: int) -> str:
    ch = chr(byte)
    if ch == "*":
        return "'*' (stop codon) inside the sequence"
    if 32 < byte < 127:
        return f"invalid character '{ch}'"
    return f"invalid byte 0x{byte:02x}"


def read_fasta(path: str | Path, long_sequences: str = "truncate", max_residues: int = MAX_RESIDUES) -> Records:
    """Read and validate a plain or gzip FASTA file.

    Sequences are upper-cased, CR/whitespace removed and one trailing '*' run stripped. Sequences over
    `max_residues` are truncated (counted in `Records.truncated`) or refused when `long_sequences == "error"`.
    """
    path = Path(path)
    if long_sequences not in ("truncate", "error"):
        raise UserError(f"--long-sequences must be 'truncate' or 'error', not {long_sequences!r}")
    if not path.is_file():
        raise UserError(f"{path}: no such FASTA file")
    digest = hashlib.sha256()
    ids: list[str] = []
    seqs: list[bytes] = []
    first_line: dict[str, int] = {}
    truncated = 0
    current_id: str | None = None
    current_line = 0
    parts: list[bytes] = []

    def finish() -> None:
        nonlocal truncated
        if current_id is None:
            return
        seq = b"".join(parts).upper().rstrip(b"*")
        if not seq:
            raise UserError(f"{path}: record '{current_id}' (line {current_line}) has no sequence")
        bad = _INVALID.search(seq)
        if bad:
            what = _describe(seq[bad.start()])
            raise UserError(
                f"{path}: record '{current_id}' (line {current_line}) has {what} at residue {bad.start() + 1}"
            )
        if len(seq) > max_residues:
            if long_sequences == "error":
                raise UserError(
                    f"{path}: record '{current_id}' (line {current_line}) has {len(seq)} residues, over ESM-2's "
                    f"{max_residues}-residue window (use --long-sequences truncate to keep its first {max_residues})"
                )
            seq = seq[:max_residues]
            truncated += 1
        ids.append(current_id)
        seqs.append(seq)

    try:
        with _open_bytes(path) as fh:
            for lineno, raw in enumerate(fh, start=1):
                digest.update(raw)
                line = raw.rstrip(b"\r\n")
                if line.startswith(b">"):
                    finish()
                    header = line[1:].strip()
                    try:
                        text = header.decode("utf-8")
                    except UnicodeDecodeError:
                        raise UserError(f"{path}: header on line {lineno} is not valid UTF-8 text") from None
                    if not text:
                        raise UserError(f"{path}: header on line {lineno} has an empty record id")
                    current_id = text.split()[0]
                    if current_id in first_line:
                        raise UserError(
                            f"{path}: duplicate record id '{current_id}' (lines {first_line[current_id]} and {lineno})"
                        )
                    first_line[current_id] = lineno
                    current_line = lineno
                    parts = []
                elif current_id is None:
                    if line.strip():
                        raise UserError(f"{path}: line {lineno} has text before the first '>' header")
                else:
                    parts.append(_WHITESPACE.sub(b"", line))
            finish()
    except (OSError, EOFError) as exc:  # includes gzip.BadGzipFile (truncated or corrupt gzip)
        raise UserError(f"{path}: cannot read FASTA ({exc.__class__.__name__}: {exc})") from None
    if not ids:
        raise UserError(f"{path}: empty FASTA file (no '>' records)")
    return Records(ids=ids, seqs=seqs, sha256=digest.hexdigest(), truncated=truncated)


def write_fasta(path: str | Path, ids: list[str], seqs: list[str], width: int = 60) -> None:
    """Write records as a plain FASTA file, wrapped at `width` residues (written to a temporary name first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        for rid, seq in zip(ids, seqs):
            fh.write(f">{rid}\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i : i + width] + "\n")
    tmp.replace(path)
