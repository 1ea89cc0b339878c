"""Packed batches: tokens equal fair-esm's, and nothing is lost or repeated for any worker count."""

from __future__ import annotations

import pytest
import torch

from virnucpro.data.loader import PackedBatchDataset, Vocabulary, collate, make_loader
from virnucpro.data.packing import pack_batches
from virnucpro.data.synthetic import make_sequences


def test_tokens_match_fair_esm_batch_converter():
    from esm.data import Alphabet

    alphabet = Alphabet.from_architecture("ESM-1b")
    seqs = [b"MKTXBZUO", b"A", b"WYV"]
    batch = collate(seqs, [0, 1, 2], Vocabulary.esm2())
    _, _, ref = alphabet.get_batch_converter()([(str(i), s.decode()) for i, s in enumerate(seqs)])
    expected = torch.cat([ref[i, : len(s) + 2] for i, s in enumerate(seqs)])
    assert torch.equal(batch.tokens, expected)
    assert batch.cu_seqlens.tolist() == [0, 10, 13, 18]
    assert batch.positions.tolist() == list(range(10)) + list(range(3)) + list(range(5))
    assert batch.seq_ids.tolist() == [0] * 10 + [1] * 3 + [2] * 5
    assert batch.max_len == 10 and batch.num_tokens == 18


@pytest.mark.parametrize("num_workers", [0, 1, 2, 4])
def test_every_sequence_exactly_once_for_any_worker_count(num_workers):
    _, seqs = make_sequences(1503, 7, "short-reads")
    data = [s.encode() for s in seqs]
    batches = pack_batches([len(s) for s in data], 1024, 300)
    loader = make_loader(PackedBatchDataset(data, batches), num_workers, prefetch_factor=2, pin_memory=False)
    seen = [i for b in loader for i in b.indices.tolist()]
    assert sorted(seen) == list(range(len(data)))
    assert seen == [i for b in batches for i in b]  # plan order kept
