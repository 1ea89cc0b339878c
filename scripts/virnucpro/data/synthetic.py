"""Deterministic synthetic protein workloads.

`seed-mix` is the length distribution of the upstream validation plan (mean ~218 aa); `short-reads` is the
shape of VirNucPro's real input: random 150-bp reads, six-frame translated, frames with a stop dropped
(mean ~49 aa).
"""

from __future__ import annotations

import numpy as np

from virnucpro.errors import UserError

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
PROFILES = ("seed-mix", "short-reads")

#: (probability, low, high) length bands of the validation plan's mix, inclusive.
SEED_MIX_BANDS = ((0.40, 50, 100), (0.35, 100, 300), (0.20, 300, 500), (0.05, 500, 1000))

_BASES = "TCAG"
_CODE = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"  # standard table, TCAG order
CODON_TABLE = {
    a + b + c: _CODE[16 * i + 4 * j + k]
    for i, a in enumerate(_BASES)
    for j, b in enumerate(_BASES)
    for k, c in enumerate(_BASES)
}
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


def translate(dna: str) -> str:
    """Translate whole codons of `dna` with the standard genetic code ('*' for stops)."""
    return "".join(CODON_TABLE[dna[i : i + 3]] for i in range(0, len(dna) - 2, 3))


def six_frames(read: str) -> list[tuple[str, str]]:
    """The six reading frames of a read as (suffix, protein): F1..F3 forward, R1..R3 reverse complement."""
    rc = read.translate(_COMPLEMENT)[::-1]
    return [(f"F{i + 1}", translate(read[i:])) for i in range(3)] + [(f"R{i + 1}", translate(rc[i:])) for i in range(3)]


def _seed_mix(n: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    probs = [b[0] for b in SEED_MIX_BANDS]
    bands = rng.choice(len(SEED_MIX_BANDS), size=n, p=probs)
    lows = np.array([b[1] for b in SEED_MIX_BANDS])[bands]
    highs = np.array([b[2] for b in SEED_MIX_BANDS])[bands]
    lengths = rng.integers(lows, highs + 1)
    letters = np.frombuffer(AMINO_ACIDS.encode(), dtype=np.uint8)
    residues = letters[rng.integers(0, len(letters), size=int(lengths.sum()))].tobytes().decode()
    ends = np.cumsum(lengths)
    seqs = [residues[e - n_ : e] for e, n_ in zip(ends, lengths)]
    return [f"seq_{i:07d}" for i in range(n)], seqs


#: Codon index (16 a + 4 b + c over TCAG) -> amino-acid byte, and base index (ACGT order) -> TCAG index.
_CODE_BYTES = np.frombuffer(_CODE.encode(), dtype=np.uint8)
_ACGT_TO_TCAG = np.array([2, 1, 3, 0], dtype=np.int64)


def _frames(block: np.ndarray) -> list[np.ndarray]:
    """The six frames of every read in `block` (base indices, ACGT order) as uint8 protein arrays, in
    `six_frames`' order: vectorised, so millions of reads take seconds (the same letters as `translate`)."""
    tcag = _ACGT_TO_TCAG[block]
    rc = _ACGT_TO_TCAG[3 - block[:, ::-1]]  # complement is 3 - k in ACGT order
    out = []
    for strand in (tcag, rc):
        for i in range(3):
            n = (strand.shape[1] - i) // 3
            c = strand[:, i : i + 3 * n].reshape(len(strand), n, 3)
            out.append(_CODE_BYTES[16 * c[:, :, 0] + 4 * c[:, :, 1] + c[:, :, 2]])
    return out


def _short_reads(n: int, rng: np.random.Generator, read_length: int = 150) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    seqs: list[str] = []
    suffixes = ("F1", "F2", "F3", "R1", "R2", "R3")
    read_no = 0
    while len(seqs) < n:
        block = rng.integers(0, 4, size=(1024, read_length))
        frames = _frames(block)
        keep = np.stack([(f != ord("*")).all(axis=1) for f in frames], axis=1)  # (reads, 6), read-major order
        for r, f in zip(*np.nonzero(keep)):
            if len(seqs) >= n:
                break
            ids.append(f"read_{read_no + r:07d}_{suffixes[f]}")
            seqs.append(frames[f][r].tobytes().decode())
        read_no += len(block)
    return ids, seqs


def make_sequences(num_sequences: int, seed: int, profile: str) -> tuple[list[str], list[str]]:
    """Return (ids, sequences) for a profile; the same arguments always give the same records."""
    if num_sequences < 1:
        raise UserError(f"--num-sequences must be at least 1, not {num_sequences}")
    if profile not in PROFILES:
        raise UserError(f"unknown synthetic profile {profile!r}; choose one of {', '.join(PROFILES)}")
    rng = np.random.default_rng(seed)
    return _seed_mix(num_sequences, rng) if profile == "seed-mix" else _short_reads(num_sequences, rng)
