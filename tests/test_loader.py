"""Packed batches: tokens equal fair-esm's, and nothing is lost or repeated for any worker count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.data.loader import PAD_SEGMENT, PackedBatchDataset, Vocabulary, collate, make_loader
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


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=20), st.integers(0, 2000))
def test_padding_fills_the_budget_in_short_segments_after_the_real_ones(lengths, extra):
    seqs = [b"A" * n for n in lengths]
    real = sum(n + 2 for n in lengths)
    batch = collate(seqs, range(len(seqs)), Vocabulary.esm2(), pad_to=real + extra)
    cu = batch.cu_seqlens.tolist()
    assert cu[-1] == real + extra and batch.num_tokens == real and batch.num_sequences == len(seqs)
    assert cu[: len(seqs) + 1] == [0, *np.cumsum([n + 2 for n in lengths])]  # real segments untouched, first
    pads = np.diff(cu[len(seqs) :])
    assert (pads > 0).all() and (pads <= PAD_SEGMENT).all() and pads.sum() == extra
    assert batch.max_len == max(max(n + 2 for n in lengths), *(pads.tolist() or [0]))
    assert (batch.tokens[real:] == Vocabulary.esm2().padding_idx).all()


@pytest.mark.parametrize("num_workers", [0, 1, 2, 4])
def test_every_sequence_exactly_once_for_any_worker_count(num_workers):
    _, seqs = make_sequences(1503, 7, "short-reads")
    data = [s.encode() for s in seqs]
    batches = pack_batches([len(s) for s in data], 1024, 300)
    loader = make_loader(PackedBatchDataset(data, batches), num_workers, prefetch_factor=2, pin_memory=False)
    seen = [i for b in loader for i in b.indices.tolist()]
    assert sorted(seen) == list(range(len(data)))
    assert seen == [i for b in batches for i in b]  # plan order kept


def test_pooling_weights_only_in_batches_with_a_window():
    seqs = [b"MKV", b"A" * 5, b"W" * 4]
    window = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    vocab = Vocabulary.esm2()
    assert collate(seqs, [0, 1], vocab, weights=[None, None, window]).weights is None  # plain: segment mean
    batch = collate(seqs, [2, 0], vocab, pad_to=20, weights=[None, None, window])
    expected = [0.0, *window.tolist(), 0.0, 0.0, *[1 / 3] * 3, 0.0] + [0.0] * 9  # BOS/EOS/padding weigh nothing
    assert batch.weights.shape == batch.tokens.shape
    np.testing.assert_allclose(batch.weights.numpy(), expected, rtol=1e-7)
    assert torch.equal(batch.to(torch.device("cpu")).weights, batch.weights)  # moved with the batch
