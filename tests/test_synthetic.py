"""Synthetic workloads are deterministic and have the advertised shape."""

from __future__ import annotations

import statistics

import pytest

from virnucpro.data.synthetic import SEED_MIX_BANDS, make_sequences, six_frames, translate
from virnucpro.errors import UserError


def test_same_seed_same_records_other_seed_differs():
    assert make_sequences(50, 3, "seed-mix") == make_sequences(50, 3, "seed-mix")
    assert make_sequences(50, 3, "seed-mix") != make_sequences(50, 4, "seed-mix")
    assert make_sequences(30, 3, "short-reads") == make_sequences(30, 3, "short-reads")


def test_seed_mix_bands():
    ids, seqs = make_sequences(4000, 0, "seed-mix")
    lengths = [len(s) for s in seqs]
    assert len(set(ids)) == 4000 and min(lengths) >= 50 and max(lengths) <= 1000
    share_short = sum(50 <= n <= 100 for n in lengths) / len(lengths)
    assert abs(share_short - SEED_MIX_BANDS[0][0]) < 0.04
    assert 190 < statistics.fmean(lengths) < 250


def test_short_reads_are_stop_free_six_frame_translations():
    ids, seqs = make_sequences(600, 1, "short-reads")
    assert all("*" not in s for s in seqs)
    assert all(i.rsplit("_", 1)[1] in {"F1", "F2", "F3", "R1", "R2", "R3"} for i in ids)
    assert 48 <= statistics.fmean(len(s) for s in seqs) <= 50
    assert len(set(ids)) == len(ids)


def test_translation_and_frames():
    assert translate("ATGGCCTAA") == "MA*"
    frames = dict(six_frames("ATGAAACCC"))
    assert frames["F1"] == "MKP" and frames["R1"] == "GFH"


def test_bad_arguments():
    with pytest.raises(UserError):
        make_sequences(0, 1, "seed-mix")
    with pytest.raises(UserError, match="unknown synthetic profile"):
        make_sequences(5, 1, "long-reads")
