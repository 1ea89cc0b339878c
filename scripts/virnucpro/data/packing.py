"""Token-budget packing: group sequences into padding-free batches.

Packing runs once, in the main process, over the whole input (workers only tokenize a batch they are handed),
so every sequence comes out exactly once whatever the worker count. Within a lookahead buffer of
`buffer_size` sequences, best-fit-decreasing (first-fit-decreasing that picks the tightest bin) fills bins of
`token_budget` tokens; the least-full bin of each
buffer is not emitted but carried into the next buffer, which lifts packing efficiency close to 1.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from virnucpro.errors import UserError

#: Tokens added to each sequence: BOS (<cls>) and EOS.
SPECIAL_TOKENS = 2
#: The largest budget any model supports: a batch's segment offsets (cu_seqlens) are int32 for the attention
#: kernels. Element offsets inside them are 64-bit, so below this only GPU memory limits the budget (exit 3).
MAX_TOKEN_BUDGET = 2**31 - 1


def token_length(num_residues: int) -> int:
    return num_residues + SPECIAL_TOKENS


def _best_fit_decreasing(items: list[int], sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Longest first, each into the bin with the least room that fits; bins kept sorted by free space."""
    items = sorted(items, key=lambda i: (-sizes[i], i))
    bins: list[list[int]] = []
    free_keys: list[tuple[int, int]] = []  # (free tokens, bin number), sorted
    for i in items:
        need = sizes[i]
        pos = bisect.bisect_left(free_keys, (need, -1))
        if pos < len(free_keys):
            free, b = free_keys.pop(pos)
            bins[b].append(i)
            bisect.insort(free_keys, (free - need, b))
        else:
            bins.append([i])
            bisect.insort(free_keys, (budget - need, len(bins) - 1))
    return bins


def check_budget(residue_lengths: Sequence[int], token_budget: int) -> None:
    """Refuse a budget past the engine's int32 segment offsets, or one that the longest sequence cannot fit into
    (a sequence is never split or dropped)."""
    if token_budget > MAX_TOKEN_BUDGET:
        raise UserError(
            f"token budget {token_budget:,} is larger than the largest this engine supports "
            f"({MAX_TOKEN_BUDGET:,} tokens: batch offsets are 32-bit); lower --token-budget"
        )
    if len(residue_lengths) == 0:
        return
    longest = max(range(len(residue_lengths)), key=residue_lengths.__getitem__)
    need = token_length(int(residue_lengths[longest]))
    if need > token_budget:
        raise UserError(
            f"token budget {token_budget} is smaller than the longest sequence ({need} tokens with BOS/EOS, "
            f"input record #{longest + 1}); raise --token-budget to at least {need}"
        )


def pack_batches(residue_lengths: Sequence[int], token_budget: int, buffer_size: int) -> list[list[int]]:
    """Return batches (lists of input indices) whose token lengths (residues + 2) sum to <= token_budget.

    Deterministic for the same arguments. Each index appears in exactly one batch.
    """
    if token_budget < 1:
        raise UserError(f"token budget must be positive, not {token_budget}")
    if buffer_size < 1:
        raise UserError(f"buffer size must be positive, not {buffer_size}")
    check_budget(residue_lengths, token_budget)
    sizes = [token_length(n) for n in residue_lengths]
    batches: list[list[int]] = []
    carry: list[int] = []
    for start in range(0, len(sizes), buffer_size):
        window = carry + list(range(start, min(start + buffer_size, len(sizes))))
        bins = _best_fit_decreasing(window, sizes, token_budget)
        last_buffer = start + buffer_size >= len(sizes)
        if not last_buffer and len(bins) > 1:
            fill = [sum(sizes[i] for i in b) for b in bins]
            least = min(range(len(bins)), key=lambda b: (fill[b], b))
            carry = bins.pop(least)
        else:
            carry = []
        batches.extend(bins)
    return batches


def packing_efficiency(batch: Sequence[int], residue_lengths: Sequence[int], token_budget: int) -> float:
    """Real tokens in a batch over the budget (1.0 = no slot wasted)."""
    return sum(token_length(residue_lengths[i]) for i in batch) / token_budget
