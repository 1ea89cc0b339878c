"""The packer: every sequence exactly once, budgets respected, near-full batches."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.data.packing import pack_batches, packing_efficiency, token_length
from virnucpro.errors import UserError


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 1022), min_size=0, max_size=400),
    budget_extra=st.integers(0, 5000),
    buffer_size=st.integers(1, 500),
)
def test_every_index_once_and_within_budget(lengths, budget_extra, buffer_size):
    budget = max([token_length(n) for n in lengths], default=1) + budget_extra
    batches = pack_batches(lengths, budget, buffer_size)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(b and sum(token_length(lengths[i]) for i in b) <= budget for b in batches)


def test_deterministic():
    rng = random.Random(0)
    lengths = [rng.randint(20, 600) for _ in range(3000)]
    assert pack_batches(lengths, 8192, 1000) == pack_batches(lengths, 8192, 1000)


@pytest.mark.parametrize("low,high", [(45, 55), (50, 1000)])
def test_efficiency_near_one_with_large_buffer(low, high):
    rng = random.Random(1)
    lengths = [rng.randint(low, high) for _ in range(20000)]
    budget = 16384
    batches = pack_batches(lengths, budget, buffer_size=5000)
    effs = [packing_efficiency(b, lengths, budget) for b in batches]
    overall = sum(token_length(n) for n in lengths) / (len(batches) * budget)
    assert overall >= 0.98, overall
    assert sorted(effs)[len(effs) // 2] >= 0.99


def test_budget_smaller_than_longest_sequence_is_refused():
    with pytest.raises(UserError, match="smaller than the longest sequence .*1002 tokens.*#2"):
        pack_batches([10, 1000, 20], 512, 10)


def test_budget_past_int32_offsets_is_refused_before_loading(tmp_path, capsys):
    """Below 2^31 tokens only memory limits a budget (64-bit element offsets; past memory: exit 3); beyond it
    the int32 segment offsets would wrap: refused up front, naming the largest budget."""
    from virnucpro.cli import main

    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKV\n")
    out = tmp_path / "out"
    rc = main(
        ["embed", str(fasta), "-o", str(out), "--random-weights", "--device", "cpu", "--token-budget", str(2**31)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "2,147,483,647" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (out / "embeddings.h5").exists()
