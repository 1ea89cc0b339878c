"""`virnucpro sample`: a seeded subset of a FASTA (input order kept), and the description of a FASTA that the
workflow records as its input info (path, sha256, counts, provenance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from virnucpro.data.fasta import Records, read_fasta, write_fasta
from virnucpro.errors import UserError


def sample_fasta(source: Path, output: Path, num_sequences: int, seed: int) -> Records:
    """Write `num_sequences` sequences of `source` (all if fewer), chosen with `seed`, in input order, to
    `output`; return the written file's records."""
    records = read_fasta(source)
    if num_sequences is None or num_sequences < 1:
        raise UserError("sample: --num-sequences must be a positive count")
    k = min(num_sequences, len(records))
    chosen = np.sort(np.random.default_rng(seed).choice(len(records), size=k, replace=False))
    write_fasta(output, [records.ids[i] for i in chosen], [records.seqs[i].decode() for i in chosen])
    return read_fasta(output)


def shown_path(path: Path) -> str:
    return "<stdin>" if str(path) == "-" else str(Path(path).resolve())


def describe(records: Records, path: Path, parent: Path | None, source: str, profile, profile_seed) -> dict:
    """The input info of a FASTA: where it is, what it holds and where it came from."""
    lengths = records.lengths()
    return {
        "path": shown_path(path),
        "sha256": records.sha256,
        "num_sequences": len(records),
        "mean_length": sum(lengths) / len(lengths),
        "source": source,
        "profile": profile,
        "seed": profile_seed,
        "parent": shown_path(parent) if parent is not None else None,
        "example_ids": records.ids[:3],
        "truncated": records.truncated,
    }
