"""Attention on the GPU for every ESM-2 head dimension and any batch: which path runs, and the fused kernel's
padding and launch arithmetic, checked in plain torch (the kernel itself runs on the device machine:
docs/benchmarks/2026-11-25-h100-issue18/gpu_checks.py)."""

from __future__ import annotations

import pytest
import torch

from virnucpro.models import packed_esm2
from virnucpro.models.packed_esm2 import FA2_MAX_SEGMENTS, attention_path, rotary_inv_freq
from virnucpro.models.triton_attention import launch_grid, padded_head_dims
from virnucpro.models.weights import ARCHITECTURES

CUDA = torch.device("cuda")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_padded_widths_fit_every_esm2_head_dim(name):
    head_dim = ARCHITECTURES[name].head_dim
    half_p, dim_p = padded_head_dims(head_dim)
    for width, need in ((half_p, head_dim // 2), (dim_p, head_dim)):
        assert width >= max(need, 16) and width & (width - 1) == 0 and width < 2 * max(need, 16)


def test_odd_head_dim_is_refused():
    with pytest.raises(ValueError, match="even head dimension"):
        padded_head_dims(15)


@pytest.mark.parametrize("head_dim", [16, 24])
def test_zero_padded_halves_give_the_unpadded_attention(head_dim):
    """What the kernel computes for 8M/35M: q and k halves (and v) zero-padded to the padded widths by masked
    loads, cos 1 / sin 0 in the padding, the output's padded columns dropped."""
    gen = torch.Generator().manual_seed(0)
    L, half = 37, head_dim // 2
    half_p, dim_p = padded_head_dims(head_dim)
    q, k, v = (torch.randn(L, head_dim, generator=gen, dtype=torch.float64) for _ in range(3))
    angle = torch.arange(L, dtype=torch.float64)[:, None] * rotary_inv_freq(head_dim).double()[None, :]
    cos, sin = angle.cos(), angle.sin()

    def rotate(x):  # fair-esm's rotary on halves
        x1, x2 = x[:, :half], x[:, half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)

    expected = torch.softmax(rotate(q) @ rotate(k).T / head_dim**0.5, -1) @ v

    def pad(x, width, fill=0.0):
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=fill)

    cos_p, sin_p = pad(cos, half_p, 1.0), pad(sin, half_p)
    (q1, q2), (k1, k2) = ((pad(x[:, :half], half_p), pad(x[:, half:], half_p)) for x in (q, k))
    q1r, q2r = q1 * cos_p - q2 * sin_p, q2 * cos_p + q1 * sin_p
    k1r, k2r = k1 * cos_p - k2 * sin_p, k2 * cos_p + k1 * sin_p
    scores = (q1r @ k1r.T + q2r @ k2r.T) / head_dim**0.5
    got = (torch.softmax(scores, -1) @ pad(v, dim_p))[:, :head_dim]
    torch.testing.assert_close(got, expected)


def test_segments_go_on_the_unbounded_grid_axis():
    """Grid axes 1 and 2 stop at 65,535: 100,000 short segments (or a nearly empty batch's 64-token padding
    segments at a large budget) must not land there."""
    axis0, axis1 = launch_grid(max_len=3, segments=100_000, heads=40, block_m=64)
    assert (axis0, axis1) == (100_000, 40)
    assert launch_grid(max_len=1024, segments=7, heads=20, block_m=64) == (16 * 7, 20)


@pytest.fixture
def gpu_kernels(monkeypatch):
    def set_(triton: bool, varlen: bool) -> None:
        monkeypatch.setattr(
            packed_esm2,
            "triton_available",
            lambda d, t: triton and d.type == "cuda" and t in (torch.float16, torch.bfloat16),
        )
        monkeypatch.setattr(
            packed_esm2,
            "varlen_available",
            lambda d, t: varlen and d.type == "cuda" and t in (torch.float16, torch.bfloat16),
        )

    return set_


def test_fused_kernel_when_asked_and_available(gpu_kernels):
    gpu_kernels(triton=True, varlen=True)
    assert attention_path(CUDA, torch.bfloat16, 10, fused_requested=True) == "triton"
    assert attention_path(CUDA, torch.float16, 10, fused_requested=False) == "varlen"
    assert attention_path(CUDA, torch.float32, 10, fused_requested=True) == "padded"
    assert attention_path(torch.device("cpu"), torch.bfloat16, 10, fused_requested=True) == "padded"


def test_more_segments_than_flash_attention_can_launch(gpu_kernels):
    gpu_kernels(triton=True, varlen=True)
    assert attention_path(CUDA, torch.bfloat16, FA2_MAX_SEGMENTS, fused_requested=False) == "varlen"
    assert attention_path(CUDA, torch.bfloat16, FA2_MAX_SEGMENTS + 1, fused_requested=False) == "triton"
    gpu_kernels(triton=False, varlen=True)
    assert attention_path(CUDA, torch.bfloat16, FA2_MAX_SEGMENTS + 1, fused_requested=True) == "padded"
