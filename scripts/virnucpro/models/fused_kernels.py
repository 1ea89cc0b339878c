"""The layer's memory-bound steps as hand-written Triton kernels: residual add + layer norm, key rotation, and
for `--precision fp8` the per-token quantisation of each GEMM's input (fused into the layer norm; alone for the
attention output; with the gelu for fc2's input).

Why: torch.compile made these one fused pass each, but every job paid for it before its first batch -- importing
Dynamo and Inductor, tracing, loading the compiled graphs from the cache: ~6 s of a 3B job's ~19 s of fixed cost
on an H100 (docs/benchmarks/2026-12-07-h100-issue15), which is what splitting a run into many shard jobs
multiplies. A Triton kernel compiled once is loaded from Triton's cache in milliseconds. Each kernel reads its
inputs once and writes its outputs once, as the compiled graphs did; the CPU twins (`packed_esm2.residual_norm`,
`packed_esm2.rotate_k`, `packed_esm2.residual_norm_fp8`, `fp8.quantise_rows`, `packed_esm2.gelu_quantise`) define
what they compute, and docs/benchmarks/fused_kernels_check.py compares the two on
a GPU and in the Triton interpreter on the CPU.
"""

from __future__ import annotations

import torch

from virnucpro.models.fp8 import E4M3, E4M3_MAX, MIN_AMAX

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None


def fused_kernels_available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


if triton is not None:
    MIN_AMAX_C = tl.constexpr(MIN_AMAX)
    E4M3_MAX_C = tl.constexpr(E4M3_MAX)

    @triton.jit
    def _add_layer_norm(x, y, weight, bias, x_out, h_out, scale_out, width, eps, BLOCK: tl.constexpr,
                        QUANT: tl.constexpr):  # fmt: skip
        """One row: s = x + y (fp32), stored; then layer_norm(s) (biased variance, as torch) stored as h's dtype,
        or with QUANT as E4M3 over its own scale (stored in scale_out), as `_quantise_row` does."""
        row = tl.program_id(0).to(tl.int64) * width
        cols = tl.arange(0, BLOCK)
        ok = cols < width
        s = tl.load(x + row + cols, mask=ok, other=0.0).to(tl.float32)
        s += tl.load(y + row + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(x_out + row + cols, s, mask=ok)
        centred = tl.where(ok, s - tl.sum(s, axis=0) / width, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / width + eps)
        w = tl.load(weight + cols, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(bias + cols, mask=ok, other=0.0).to(tl.float32)
        h = centred * rstd * w + b
        if QUANT:
            _quantise_row(h, ok, h_out + row + cols, scale_out + tl.program_id(0))
        else:
            tl.store(h_out + row + cols, h.to(h_out.dtype.element_ty), mask=ok)

    @triton.jit
    def _row_scale(amax, scale_at):
        """The row's scale, max(amax, MIN_AMAX) / 448, stored at scale_at; returns 1 / scale. Multiplying by it
        instead of dividing every value (`div_rn`, ~10x the instructions) is what keeps the wide rows memory-bound;
        it can move a value that lies within one fp32 ulp of an E4M3 rounding boundary by one code."""
        scale = tl.maximum(amax, MIN_AMAX_C) / E4M3_MAX_C
        tl.store(scale_at, scale)
        return 1.0 / scale

    @triton.jit
    def _store_e4m3(v, inv, ok, out_at):
        q = tl.minimum(tl.maximum(v * inv, -E4M3_MAX_C), E4M3_MAX_C)
        tl.store(out_at, q.to(out_at.dtype.element_ty), mask=ok)

    @triton.jit
    def _quantise_row(v, ok, out_at, scale_at):
        """`fp8.quantise_rows` of one fp32 row `v` (masked by `ok`) as E4M3 at out_at, its scale at scale_at."""
        inv = _row_scale(tl.max(tl.where(ok, tl.abs(v), 0.0), axis=0), scale_at)
        _store_e4m3(v, inv, ok, out_at)

    @triton.jit
    def _gelu(v, GELU: tl.constexpr):
        if GELU:
            v = 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))
        return v

    @triton.jit
    def _quantise_rows(x, out, scales, width, HEAD: tl.constexpr, TAIL: tl.constexpr, GELU: tl.constexpr):
        """One row of x as E4M3 with its scale; with GELU, ESM's (erf) gelu of the row first, in fp32. The row is
        held as two power-of-two segments, HEAD (full) + TAIL (masked), not one rounded up: 10,240 = 8,192 + 2,048
        has no idle lanes where one block of 16,384 had 37.5 %, and the gelu made those lanes cost time."""
        row = tl.program_id(0).to(tl.int64) * width
        head = tl.arange(0, HEAD)
        tail = HEAD + tl.arange(0, TAIL)
        ok = tail < width
        v = _gelu(tl.load(x + row + head).to(tl.float32), GELU)
        w = _gelu(tl.load(x + row + tail, mask=ok, other=0.0).to(tl.float32), GELU)
        amax = tl.maximum(tl.max(tl.abs(v), axis=0), tl.max(tl.where(ok, tl.abs(w), 0.0), axis=0))
        inv = _row_scale(amax, scales + tl.program_id(0))
        _store_e4m3(v, inv, head < width, out + row + head)
        _store_e4m3(w, inv, ok, out + row + tail)

    @triton.jit
    def _rotate_keys(qkv, cos, sin, out, qkv_row_stride, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                     HEADS_P: tl.constexpr, HALF_P: tl.constexpr):  # fmt: skip
        """One token: its keys (every head) rotated in fp32 with the token's cos/sin rows, stored as out's dtype."""
        t = tl.program_id(0).to(tl.int64)
        HALF: tl.constexpr = HEAD_DIM // 2
        heads = tl.arange(0, HEADS_P)[:, None]
        half = tl.arange(0, HALF_P)[None, :]
        ok = (heads < HEADS) & (half < HALF)
        k_at = qkv + t * qkv_row_stride + (HEADS + heads) * HEAD_DIM + half
        k1 = tl.load(k_at, mask=ok, other=0.0).to(tl.float32)
        k2 = tl.load(k_at + HALF, mask=ok, other=0.0).to(tl.float32)
        row = t * HEAD_DIM + half
        c1 = tl.load(cos + row, mask=half < HALF, other=0.0)
        c2 = tl.load(cos + row + HALF, mask=half < HALF, other=0.0)
        s1 = tl.load(sin + row, mask=half < HALF, other=0.0)
        s2 = tl.load(sin + row + HALF, mask=half < HALF, other=0.0)
        o_at = out + t * (HEADS * HEAD_DIM) + heads * HEAD_DIM + half
        tl.store(o_at, (k1 * c1 - k2 * s1).to(out.dtype.element_ty), mask=ok)
        tl.store(o_at + HALF, (k2 * c2 + k1 * s2).to(out.dtype.element_ty), mask=ok)


def row_segments(width: int) -> tuple[int, int]:
    """(head, tail): the powers of two `_quantise_rows` holds a row of `width` in, the largest <= width and the
    smallest (at least 16) covering the rest; of ESM-2's widths (D, 4D) only 480 and 1,920 leave lanes idle."""
    head = _pow2(width + 1) // 2
    return head, max(16, _pow2(width - head))


def _row_warps(block: int) -> int:
    return min(16, max(1, block // 256))


def add_layer_norm(x, y, ln_w, ln_b, out_dtype: torch.dtype, eps: float):
    """`packed_esm2.residual_norm` in one pass: (x + y in fp32, layer_norm(x + y) as `out_dtype`); x, y are (T, D)."""
    x_out, h, _ = _launch_add_layer_norm(x, y, ln_w, ln_b, out_dtype, eps)
    return x_out, h


def add_layer_norm_fp8(x, y, ln_w, ln_b, eps: float):
    """`packed_esm2.residual_norm_fp8` in one pass: (x + y in fp32, (layer_norm(x + y) as E4M3, its (T, 1) scales))."""
    x_out, h8, scale = _launch_add_layer_norm(x, y, ln_w, ln_b, E4M3, eps)
    return x_out, (h8, scale)


def _launch_add_layer_norm(x, y, ln_w, ln_b, h_dtype: torch.dtype, eps: float):
    """(x_out, h, scales): E4M3 `h_dtype` quantises each row with its scale, any other dtype leaves scales None."""
    x, y = x.contiguous(), y.contiguous()
    rows, width = x.shape
    quant = h_dtype == E4M3
    x_out = torch.empty(rows, width, device=x.device, dtype=torch.float32)
    h = torch.empty(rows, width, device=x.device, dtype=h_dtype)
    scale = torch.empty(rows, 1, device=x.device, dtype=torch.float32) if quant else None
    if rows:
        block = _pow2(width)
        _add_layer_norm[(rows,)](x, y, ln_w, ln_b, x_out, h, h if scale is None else scale, width, eps,
                                 BLOCK=block, QUANT=quant, num_warps=_row_warps(block))  # fmt: skip
    return x_out, h, scale


def quantise_rows(x, gelu: bool = False):
    """`fp8.quantise_rows` (with `gelu`: `packed_esm2.gelu_quantise`) in one pass over (T, K) `x`: (x8, (T, 1)
    scales)."""
    x = x.contiguous()
    rows, width = x.shape
    x8 = torch.empty(rows, width, device=x.device, dtype=E4M3)
    scale = torch.empty(rows, 1, device=x.device, dtype=torch.float32)
    if rows:
        head, tail = row_segments(width)
        _quantise_rows[(rows,)](x, x8, scale, width, HEAD=head, TAIL=tail, GELU=gelu, num_warps=_row_warps(head))
    return x8, scale


def rotate_keys(qkv, cos, sin, heads: int):
    """`packed_esm2.rotate_k` in one pass: the keys of the (T, 3D) projection rotated, (T, H, Dh) in its dtype;
    cos and sin are the batch's (T, 1, Dh) fp32 tables."""
    qkv = qkv.contiguous()
    rows, three_d = qkv.shape
    head_dim = three_d // (3 * heads)
    out = torch.empty(rows, heads, head_dim, device=qkv.device, dtype=qkv.dtype)
    if rows:
        _rotate_keys[(rows,)](
            qkv,
            cos.contiguous(),
            sin.contiguous(),
            out,
            qkv.stride(0),
            HEADS=heads,
            HEAD_DIM=head_dim,
            HEADS_P=_pow2(heads),
            HALF_P=_pow2(head_dim // 2),
            num_warps=4,
        )
    return out
