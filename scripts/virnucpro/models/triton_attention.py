"""Rotary + varlen attention in one Triton kernel, reading q, k, v straight from the fused QKV projection.

Why: for short packed sequences (reads of ~50 residues) FlashAttention-2 varlen plus a separate rotary pass cost
17.5 ms of a 164 ms ESM-2 3B batch (H100, 16,384 tokens), three times the bytes they must move; this kernel
takes 7 ms there, and with keys rotated beforehand it is also 10-35 % faster than FlashAttention-2 on longer
segments (docs/benchmarks/attention_crossover.py). It reads q, k and v once from the (T, 3D) projection,
rotates q (and k) in registers (cos/sin from an fp32 table, positions restarting at each sequence, as
fair-esm), and writes o once; one program per (query block, sequence, head), an online softmax over the key
blocks of the same sequence. The CPU twin is `padded_attention` after `rotate_qk` (the tests compare that with
fair-esm); this kernel is checked against it on the GPU by docs/benchmarks/speed_variants.py and on the CPU, in
the Triton interpreter, by docs/benchmarks/triton_interpreter_check.py.
"""

from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

#: Batches whose longest segment is at most this rotate the keys in the kernel; longer ones pass keys rotated
#: once beforehand (rotating each key block again for every query block costs more there).
ROTATE_KEYS_MAX_LEN = 96
#: (query rows, key rows, warps, pipeline stages) per program, for the two cases; the fastest of those measured
#: on an H100 by docs/benchmarks/attention_crossover.py.
SHORT_CONFIG = (64, 32, 4, 2)
LONG_CONFIG = (64, 64, 4, 3)


def triton_available(device: torch.device, dtype: torch.dtype) -> bool:
    return triton is not None and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def padded_head_dims(head_dim: int) -> tuple[int, int]:
    """(half, full) widths the kernel computes with for `head_dim`: powers of two >= 16 (what `tl.arange` and
    `tl.dot` need), the extra columns loaded as zeros by masked loads. 16 -> (16, 16) (half 8 padded: ESM-2
    8M), 24 -> (16, 32) (35M), 32 -> (16, 32), 64 -> (32, 64), 128 -> (64, 128) (15B). Zero columns add
    nothing to q.k and are never stored, so the result is the unpadded attention's."""
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"rotary attention needs an even head dimension, not {head_dim}")

    def pow2(n: int) -> int:
        return max(16, 1 << (n - 1).bit_length())

    return pow2(head_dim // 2), pow2(head_dim)


def launch_grid(max_len: int, segments: int, heads: int, block_m: int) -> tuple[int, int]:
    """(query blocks x segments, heads): segments share grid axis 0 (up to 2^31 - 1 programs) with the query
    blocks, because axes 1 and 2 stop at 65,535 and a large budget of short reads (or the 64-token padding
    segments of a nearly empty batch) holds more segments than that."""
    return -(-max_len // block_m) * segments, heads


if triton is not None:

    @triton.jit
    def _load_rotated(at, pos, mask, cos_table, sin_table, half, HALF: tl.constexpr):
        """The two halves of the q (or k) rows at `at`, rotated in fp32 (cos/sin of each row's position from the
        tables; 1 and 0 in the padded columns) and cast back to the input's dtype for `tl.dot`."""
        x1 = tl.load(at, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(at + HALF, mask=mask, other=0.0).to(tl.float32)
        at_cs = pos[:, None] * HALF + half[None, :]
        cos = tl.load(cos_table + at_cs, mask=mask, other=1.0)
        sin = tl.load(sin_table + at_cs, mask=mask, other=0.0)
        return (x1 * cos - x2 * sin).to(at.dtype.element_ty), (x2 * cos + x1 * sin).to(at.dtype.element_ty)

    @triton.jit
    def _online_softmax_step(
        q1r,
        q2r,
        k1r,
        k2r,
        qkv,
        row_n,
        head,
        dims,
        dim_ok,
        in_n,
        scale_log2,
        m_i,
        l_i,
        acc,
        HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
    ):
        """One key block of the online softmax (base 2, scale folded into `scale_log2`): the running row max
        `m_i`, denominator `l_i` and unnormalised output `acc`, rescaled when the max grows. The values are
        addressed here, after the scores, in the order of the unsplit kernel (same compiled code)."""
        s = tl.dot(q1r, tl.trans(k1r)) + tl.dot(q2r, tl.trans(k2r))
        s = tl.where(in_n[None, :], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(qkv + row_n + (2 * HEADS + head) * HEAD_DIM + dims[None, :], mask=in_n[:, None] & dim_ok, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return m_new, l_i, acc

    @triton.jit
    def _rotary_varlen_attention(
        qkv,
        keys,
        out,
        cu_seqlens,
        cos_table,
        sin_table,
        scale_log2,
        qkv_row_stride,
        key_row_stride,
        out_row_stride,
        m_blocks,
        HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        HALF_P: tl.constexpr,
        DIM_P: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        ROTATE_KEYS: tl.constexpr,
    ):
        """One program: BLOCK_M query rows of one segment and one head, over that segment's key blocks."""
        seq = tl.program_id(0) // m_blocks
        m_block = tl.program_id(0) % m_blocks
        head = tl.program_id(1)
        start32 = tl.load(cu_seqlens + seq)
        seqlen = tl.load(cu_seqlens + seq + 1) - start32
        start = start32.to(tl.int64)  # row x stride passes 2^31 elements at ~280k tokens for ESM-2 3B
        if m_block * BLOCK_M < seqlen:
            HALF: tl.constexpr = HEAD_DIM // 2
            half = tl.arange(0, HALF_P)
            half_ok = (half < HALF)[None, :]
            dims = tl.arange(0, DIM_P)
            dim_ok = (dims < HEAD_DIM)[None, :]
            pos_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
            in_m = (pos_m < seqlen)[:, None]
            q_at = qkv + (start + pos_m)[:, None] * qkv_row_stride + head * HEAD_DIM + half[None, :]
            q1r, q2r = _load_rotated(q_at, pos_m, in_m & half_ok, cos_table, sin_table, half, HALF)
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, DIM_P], tl.float32)
            for n0 in range(0, seqlen, BLOCK_N):
                pos_n = n0 + tl.arange(0, BLOCK_N)
                in_n = pos_n < seqlen
                k_ok = in_n[:, None] & half_ok
                row_n = (start + pos_n)[:, None] * qkv_row_stride
                k_at = keys + (start + pos_n)[:, None] * key_row_stride + head * HEAD_DIM + half[None, :]
                if ROTATE_KEYS:
                    k1r, k2r = _load_rotated(k_at, pos_n, k_ok, cos_table, sin_table, half, HALF)
                else:  # already rotated (long segments: rotating each key block once per query block costs more)
                    k1r = tl.load(k_at, mask=k_ok, other=0.0)
                    k2r = tl.load(k_at + HALF, mask=k_ok, other=0.0)
                m_i, l_i, acc = _online_softmax_step(
                    q1r, q2r, k1r, k2r, qkv, row_n, head, dims, dim_ok, in_n, scale_log2, m_i, l_i, acc, HEADS, HEAD_DIM
                )
            o_at = out + (start + pos_m)[:, None] * out_row_stride + head * HEAD_DIM + dims[None, :]
            tl.store(o_at, (acc / l_i[:, None]).to(out.dtype.element_ty), mask=in_m & dim_ok)


def rotary_tables(inv_freq: torch.Tensor, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position x frequency, (positions, Dh/2) fp32: the same numbers as the unfused path."""
    angle = torch.arange(positions, device=inv_freq.device).float()[:, None] * inv_freq[None, :]
    return angle.cos().contiguous(), angle.sin().contiguous()


def rotary_varlen_attention(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_len: int,
    tables: tuple[torch.Tensor, torch.Tensor],
    heads: int,
    config: tuple[int, int, int, int] | None = None,
    rotated_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """(T, 3D) projection [q | k | v, heads-major] -> (T, H, Dh) attention output; scale 1/sqrt(Dh).

    Every token must lie in a segment of `cu_seqlens` (int32, on the GPU) no longer than `max_len`, and the
    rotary `tables` must have at least `max_len` rows. `rotated_keys` (T, H, Dh), when given, replaces the
    projection's k and is used as it is.
    """
    T, three_d = qkv.shape
    head_dim = three_d // (3 * heads)
    out = torch.empty(T, heads, head_dim, device=qkv.device, dtype=qkv.dtype)
    block_m, block_n, warps, stages = config or (SHORT_CONFIG if rotated_keys is None else LONG_CONFIG)
    grid = launch_grid(max_len, cu_seqlens.numel() - 1, heads, block_m)
    keys = qkv[:, heads * head_dim :] if rotated_keys is None else rotated_keys.view(T, -1)
    cos, sin = tables
    half_p, dim_p = padded_head_dims(head_dim)
    _rotary_varlen_attention[grid](
        qkv,
        keys,
        out,
        cu_seqlens,
        cos,
        sin,
        math.log2(math.e) / math.sqrt(head_dim),
        qkv.stride(0),
        keys.stride(0),
        out.stride(0),
        -(-max_len // block_m),
        HEADS=heads,
        HEAD_DIM=head_dim,
        HALF_P=half_p,
        DIM_P=dim_p,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        ROTATE_KEYS=rotated_keys is None,
        num_warps=warps,
        num_stages=stages,
    )
    return out
