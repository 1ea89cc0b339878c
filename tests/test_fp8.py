"""`--precision fp8` on its CPU twin: the scaling arithmetic (per-token activation scales, per-channel weight
scales), the model built with E4M3 linear layers against fp32 on the same weights (random, and with injected
outlier channels), and the refusal where no fp8 tensor cores exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.bench import COSINE_GATE, _errors, packed_embed
from virnucpro.data.loader import Vocabulary
from virnucpro.data.synthetic import make_sequences
from virnucpro.models.fp8 import (
    E4M3,
    E4M3_MAX,
    emulated_linear,
    quantise_rows,
    quantise_weight,
    recipe_facts,
    scaled_mm_available,
)
from virnucpro.models.packed_esm2 import PackedESM2
from virnucpro.models.weights import ModelSpec, OutlierStateDict, random_state_dict


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 8),
    st.integers(1, 64),
    st.floats(1e-6, 1e6),
    st.integers(0, 2**31 - 1),
)
def test_each_row_maps_its_maximum_to_448_and_keeps_3_mantissa_bits(rows, cols, magnitude, seed):
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * magnitude
    x8, scale = quantise_rows(x)
    assert x8.dtype == E4M3 and scale.shape == (rows, 1)
    back = x8.float() * scale
    assert torch.isfinite(back).all()
    assert torch.allclose(x8.float().abs().amax(dim=1), torch.full((rows,), E4M3_MAX))  # no saturation, full range
    # E4M3 normals: relative error <= 2^-4; values under the smallest normal (2^-6 of the scale) round absolutely
    tolerance = (x.abs() * 2**-4).clamp_min(scale * 2**-9 / 2 * 1.0001)
    assert ((back - x).abs() <= tolerance).all()


def test_zero_and_huge_rows_stay_finite():
    x = torch.tensor([[0.0, 0.0, 0.0], [1e30, -1e30, 1.0], [1e-30, 0.0, -1e-30]])
    x8, scale = quantise_rows(x)
    back = x8.float() * scale
    assert torch.isfinite(back).all() and torch.equal(back[0], torch.zeros(3))
    assert back[1, 0] == pytest.approx(1e30, rel=2**-4) and back[1, 2] == 0.0  # 1 is below E4M3's range there


@pytest.mark.skipif(not scaled_mm_available(torch.device("cpu")), reason="this torch build has no CPU torch._scaled_mm")
def test_the_emulation_is_the_scaled_gemm_the_gpu_runs():
    """Same scales, same orientation (activation scale per row, weight scale per output channel), same bias:
    a transposed or swapped scale would show here, not first on the device."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 64, generator=gen) * torch.logspace(-2, 2, 37)[:, None]  # rows of very different size
    w = torch.randn(48, 64, generator=gen) * torch.logspace(-1, 1, 48)[:, None]
    bias = torch.randn(48, generator=gen).to(torch.bfloat16)
    (x8, sx), (w8, sw) = quantise_rows(x), quantise_weight(w)
    gpu_like = torch._scaled_mm(x8, w8.t(), sx, sw, bias=bias, out_dtype=torch.bfloat16)
    twin = emulated_linear(x8, sx, w8, sw, bias)
    assert torch.allclose(gpu_like.float(), twin.float(), rtol=2e-2, atol=1e-2)
    exact = x @ w.t() + bias.float()
    assert ((twin.float() - exact).norm() / exact.norm()) < 0.05


def _tiny_pair(state, spec):
    vocab = Vocabulary.esm2()
    fp32 = PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, "cpu", torch.float32)
    fp8 = PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, "cpu", E4M3)
    return fp32, fp8


@pytest.mark.parametrize("outliers", [None, (4, 30.0)])
def test_fp8_model_stays_within_e4m3s_rounding_of_fp32_on_the_same_weights(outliers):
    """E4M3 keeps 3 mantissa bits (2^-4 relative rounding): each GEMM's weights alone put ~4 % relative L2 on
    the pooled embedding of these random models, all four ~8-10 % (cosine ~0.995: below the 0.999 gate, which
    `bench accuracy` reports per model). This bounds the twin's error from both sides: it ran, and it is
    E4M3's rounding, not a scaling bug (a wrong or transposed scale gives errors of order 1)."""
    spec = ModelSpec(4, 128, 8)
    state = dict(random_state_dict(spec, 0))
    if outliers:
        state = OutlierStateDict(state, spec.embed_dim, *outliers, seed=0)
        assert state["layers.1.final_layer_norm.weight"][state.channels].mean() > 20
    fp32, fp8 = _tiny_pair(state, spec)
    assert fp8.layers[0].fc1.weight.dtype == E4M3 and fp8.layers[0].fc1.weight_scale.shape == (1, 4 * 128)
    assert fp8.compute_dtype == torch.bfloat16
    seqs = [s.encode() for s in make_sequences(60, 1, "seed-mix")[1] + make_sequences(60, 1, "short-reads")[1]]
    ref = packed_embed(fp32, seqs, 4096, torch.device("cpu"))
    got = packed_embed(fp8, seqs, 4096, torch.device("cpu"))
    errors = _errors(got, ref, np.array([len(s) for s in seqs]))
    assert errors["finite"] and 0.01 < errors["median"] and errors["max"] < 0.2, errors
    assert errors["cosine_min"] > 0.98 and errors["cosine_ge_gate_fraction"] <= 1.0
    assert not errors["gate_pass"] or errors["cosine_p01"] >= COSINE_GATE


def test_the_recipe_enters_fingerprints_of_fp8_runs_only():
    assert "fp8_recipe" in recipe_facts("fp8") and recipe_facts("bf16") == {}


def test_fp8_is_refused_in_one_line_where_there_are_no_fp8_tensor_cores(tmp_path):
    fasta = tmp_path / "a.faa"
    fasta.write_text(">a\nMKV\n")
    res = subprocess.run(
        [sys.executable, "-m", "virnucpro.cli", "embed", str(fasta), "-o", str(tmp_path / "out")]
        + "--model esm2_t6_8M_UR50D --random-weights --device cpu --precision fp8".split(),
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(Path(__file__).parents[1] / "scripts"), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "compute capability 9.0" in res.stderr
    assert not (tmp_path / "out" / "embeddings.h5").exists()


def test_bench_accuracy_reports_the_gate_for_each_precision_with_injected_outliers(tmp_path):
    """The command a user with real weights runs (here on random ones, CPU, fp8 through the twin)."""
    import json

    out = tmp_path / "acc.json"
    res = subprocess.run(
        [sys.executable, "-m", "virnucpro.cli", "bench", "accuracy", "-o", str(out)]
        + "--model esm2_t6_8M_UR50D --device cpu --num-sequences 6 --precision fp32,bf16,fp8 --outliers 2:20".split(),
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(Path(__file__).parents[1] / "scripts"), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert "2 outlier channels x20" in result["weights"] and result["num_sequences"] == 14
    assert result["fp32"]["gate_pass"] and result["fp32"]["max"] < 1e-4
    assert result["bf16"]["cosine_min"] > 0.999
    assert result["fp8"]["recipe"].startswith("e4m3") and 0 < result["fp8"]["median"] < 0.2
    assert result["fp8"]["vs_reference_on_rounded_weights"]["median"] < result["fp8"]["median"]
