"""Attention over packed sequences (no padding between them).

On CUDA with fp16/bf16, `torch.nn.attention.varlen.varlen_attn` (FlashAttention-2 inside). Everywhere else,
a correct path that scatters the packed tokens into a padded (B, H, L, D) block and uses SDPA with a
key-padding mask: the CPU twin that the tests compare with fair-esm.
"""

from __future__ import annotations

import importlib.util
from functools import cache

import torch
import torch.nn.functional as F

#: torch >= 2.10 has it; imported at the first call, because importing it imports Dynamo (~1.5 s a job) and the
#: fused Triton attention is the default path.
_HAS_VARLEN = importlib.util.find_spec("torch.nn.attention.varlen") is not None


def varlen_available(device: torch.device, dtype: torch.dtype) -> bool:
    return _HAS_VARLEN and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


@cache
def _varlen_attn():
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int
) -> torch.Tensor:
    """(T, H, D) packed q/k/v -> (T, H, D). Positional arguments only: their order is the same in torch
    2.10-2.13 while the keyword arguments changed."""
    return _varlen_attn()(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len)


def padded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_len: int,
    positions: torch.Tensor,
    seq_ids: torch.Tensor,
) -> torch.Tensor:
    """Reference path: scatter into (B, H, max_len, D), SDPA with a key mask, gather back to (T, H, D)."""
    T, H, D = q.shape
    B = cu_seqlens.numel() - 1
    slot = seq_ids * max_len + positions

    def pad(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(B * max_len, H, D)
        out[slot] = x
        return out.view(B, max_len, H, D).transpose(1, 2)

    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(positions.dtype)
    key_ok = torch.arange(max_len, device=q.device)[None, :] < lengths[:, None]  # (B, L)
    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=key_ok[:, None, None, :])
    return out.transpose(1, 2).reshape(B * max_len, H, D)[slot]
