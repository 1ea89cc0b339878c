"""A FASTA's bytes, whatever a user points at: a plain, gzip, bzip2 or xz file, stdin (`-`) or a pipe (`<(...)`).

Formats are told by content, not by name, and those we cannot read are refused by name (a "text before the
first header" error would send the user looking in the wrong place). Lines may end in LF, CRLF or a lone CR
(old Mac); a UTF-8 byte-order mark is skipped; UTF-16/32 text is refused by name. Everything is read once,
front to back, so pipes work.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from virnucpro.errors import UserError

#: Leading bytes of the containers a user may hand us instead of a FASTA.
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x89HDF\r\n\x1a\n", "HDF5"),
)
_OPENERS = {"gzip": lambda f: gzip.GzipFile(fileobj=f), "bzip2": bz2.BZ2File, "xz": lzma.LZMAFile}
_REFUSED = {
    "zstd": "zstd-compressed: decompress it first (zstd -d) or pass <(zstd -dc FILE)",
    "zip": "a zip archive (or a PyTorch .pt file), not a FASTA file",
    "7z": "a 7z archive: extract it first",
    "HDF5": "an HDF5 file (an embeddings.h5?), not a FASTA file",
}
_UTF8_BOM = b"\xef\xbb\xbf"
#: What a corrupt or truncated compressed stream raises besides OSError/EOFError.
READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
CHUNK = 1 << 20


class _Rewound(io.RawIOBase):
    """A stream whose first bytes were read to sniff its format: serves them again, then the rest."""

    def __init__(self, head: bytes, raw) -> None:
        self._head, self._raw = head, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._raw.readinto(buf)


def _read_up_to(fh, n: int) -> bytes:
    data = b""
    while len(data) < n and (more := fh.read(n - len(data))):
        data += more
    return data


@contextmanager
def open_fasta_bytes(path: Path):
    """Yield a binary stream of the (decompressed) content of `path`; `-` is stdin."""
    if str(path) == "-":
        raw, owned = sys.stdin.buffer, False
    else:
        if path.is_dir():
            raise UserError(f"{path}: is a directory, not a FASTA file")
        if not path.exists():
            raise UserError(f"{path}: no such FASTA file")
        raw, owned = open(path, "rb"), True
    try:
        head = _read_up_to(raw, 8)
        kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
        if kind in _REFUSED:
            raise UserError(f"{path}: {_REFUSED[kind]}")
        stream = io.BufferedReader(_Rewound(head, raw), CHUNK)
        yield _OPENERS[kind](stream) if kind else stream
    finally:
        if owned:
            raw.close()


def _check_encoding(chunk: bytes, path: Path) -> bytes:
    """The first chunk without a UTF-8 BOM; UTF-16/32 text refused by name."""
    if chunk.startswith(_UTF8_BOM):
        return chunk[len(_UTF8_BOM) :]
    if chunk[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        name = "UTF-32"
    elif chunk[:2] in (b"\xff\xfe", b"\xfe\xff", b">\x00", b"\x00>"):
        name = "UTF-16"
    else:
        return chunk
    raise UserError(
        f"{path}: {name}-encoded text; convert it to ASCII/UTF-8 first (iconv -f {name} -t UTF-8 {path} > out.fa)"
    )


def iter_lines(stream, digest, path: Path) -> Iterator[bytes]:
    """Lines without their ends (LF, CRLF or a lone CR); every byte read is fed to `digest` (BOM included)."""
    tail = b""
    first = True
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        if first:
            chunk, first = _check_encoding(chunk, path), False
        buf, held = tail + chunk, b""
        if buf.endswith(b"\r"):  # maybe the first half of a CRLF split between chunks
            buf, held = buf[:-1], b"\r"
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        tail = lines.pop() + held
        yield from lines
    if last := tail.rstrip(b"\r"):
        yield last
