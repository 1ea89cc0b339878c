"""`--long-sequences chunk`: a sequence over ESM-2's window embedded as overlapping windows.

A sequence of L > W residues (W = MAX_RESIDUES = 1022) is cut into windows of exactly W residues starting at
k*s for every k >= 0 with k*s + W < L, where s = W - overlap, plus one last window starting at L - W (ending
exactly at the sequence's end). The last regular start is < L - W, so no window repeats; consecutive starts are
at most s apart, so every residue is covered. Each window is embedded as a sequence of its own (BOS, residues,
EOS, positions from 0), as fair-esm would see it.

Each residue's representation is the mean over the c_r windows containing it, and the sequence's embedding the
mean over its residues: sum over windows w of sum_{r in w} h_{w,r} / (c_r * L). So every window is pooled with
per-residue weights 1 / (c_r * L) and a sequence's row is the sum of its windows' rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from virnucpro.data.fasta import MAX_RESIDUES
from virnucpro.data.packing import SPECIAL_TOKENS
from virnucpro.errors import UserError

#: The window overlap used when none is given (residues shared by consecutive windows).
DEFAULT_OVERLAP = 256


def check_overlap(overlap: int, window: int = MAX_RESIDUES) -> None:
    """An overlap must leave a positive step: 0 <= overlap < window."""
    if not 0 <= overlap < window:
        raise UserError(f"--window-overlap must be between 0 and {window - 1}, not {overlap}")


def window_starts(length: int, overlap: int, window: int = MAX_RESIDUES) -> list[int]:
    """Start residues of the windows covering a sequence of `length` residues (see the module docstring)."""
    check_overlap(overlap, window)
    if length <= window:
        return [0]
    step = window - overlap
    return [*range(0, length - window, step), length - window]


def residue_weights(length: int, starts: Sequence[int], window: int = MAX_RESIDUES) -> list[np.ndarray]:
    """Per window, the weight 1 / (c_r * L) of each of its residues (c_r = windows containing residue r)."""
    counts = np.zeros(length, dtype=np.float64)
    for s in starts:
        counts[s : s + window] += 1
    inverse = 1.0 / (counts * length)
    return [inverse[s : s + window].astype(np.float32) for s in starts]


@dataclass
class Items:
    """What is packed and embedded: whole sequences, or windows of long ones, with the sequence each belongs to.

    `weights[i]` is None for a whole sequence (a plain residue mean) and the window's residue weights otherwise.
    """

    seqs: list[bytes]
    owner: np.ndarray  # (items,) int64: the position, in the caller's sequence list, of each item's sequence
    weights: list[np.ndarray | None]
    windows_per_sequence: np.ndarray  # (sequences,) int64

    @property
    def chunked(self) -> bool:
        return bool(len(self.seqs) != len(self.windows_per_sequence))


def split_into_windows(seqs: Sequence[bytes], overlap: int | None, window: int = MAX_RESIDUES) -> Items:
    """Items for `seqs`: sequences over `window` residues become their windows (consecutive items) when
    `overlap` is given; None keeps every sequence whole (truncation already happened when reading)."""
    items: list[bytes] = []
    owner: list[int] = []
    weights: list[np.ndarray | None] = []
    counts = np.ones(len(seqs), dtype=np.int64)
    for pos, seq in enumerate(seqs):
        if overlap is None or len(seq) <= window:
            items.append(seq)
            owner.append(pos)
            weights.append(None)
            continue
        starts = window_starts(len(seq), overlap, window)
        items.extend(seq[s : s + window] for s in starts)
        owner.extend([pos] * len(starts))
        weights.extend(residue_weights(len(seq), starts, window))
        counts[pos] = len(starts)
    return Items(items, np.asarray(owner, dtype=np.int64), weights, counts)


def embedded_tokens(lengths: np.ndarray, overlap: int | None, window: int = MAX_RESIDUES) -> np.ndarray:
    """Tokens embedded per sequence of `lengths` residues: BOS and EOS per window, overlaps counted twice (a
    sequence's share of the work, for balancing ranks). Vectorised but for the few long sequences."""
    lengths = np.asarray(lengths, dtype=np.int64)
    tokens = lengths + SPECIAL_TOKENS
    if overlap is not None:
        for i in np.flatnonzero(lengths > window):
            tokens[i] = (window + SPECIAL_TOKENS) * len(window_starts(int(lengths[i]), overlap, window))
    return tokens


class WindowSums:
    """Sums window rows per sequence and hands out a sequence's row only when its last window is in.

    Whole sequences pass straight through. What is still open when a run stops is dropped: those sequences
    are in no checkpoint, so a resume recomputes every window of them.
    """

    def __init__(self, items: Items):
        self.owner, self.windows = items.owner, items.windows_per_sequence
        self.remaining = items.windows_per_sequence.copy()
        self.open: dict[int, np.ndarray] = {}

    def add(self, item_indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of embedded items -> (positions of the sequences now complete, their rows)."""
        owners = self.owner[item_indices]
        whole = self.windows[owners] == 1
        self.remaining[owners[whole]] -= 1
        done_pos, done_rows = [owners[whole]], [rows[whole]]
        for pos, row in zip(owners[~whole].tolist(), rows[~whole]):
            acc = self.open.get(pos)
            self.open[pos] = row.astype(np.float32, copy=True) if acc is None else acc + row
            self.remaining[pos] -= 1
            if self.remaining[pos] == 0:
                done_pos.append(np.array([pos], dtype=np.int64))
                done_rows.append(self.open.pop(pos)[None, :].astype(rows.dtype))
        return np.concatenate(done_pos), np.concatenate(done_rows)

    def check_complete(self) -> None:
        """Count in = count out: after a full pass no sequence may be left waiting for a window."""
        if self.open or self.remaining.any():
            waiting = int(np.count_nonzero(self.remaining))
            raise RuntimeError(f"{waiting} sequence(s) still wait for windows after the last batch")
