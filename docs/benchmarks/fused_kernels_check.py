"""The hand-written Triton kernels of `models.fused_kernels` against their twins, and on a GPU their speed.

Correctness: `add_layer_norm` against `packed_esm2.residual_norm` and `rotate_keys` against `packed_esm2.rotate_k`
(eager torch), at ESM-2 widths (320, 480, 640, 1280, 2560, 5120; heads 20 / 40), y in bf16, fp16 and fp32, including a
single row; the fp8 kernels (`add_layer_norm_fp8`, `quantise_rows` with and without gelu) against
`residual_norm_fp8`, `fp8.quantise_rows` and `gelu_quantise`: scales to 1e-6, at most 1 % of the E4M3 codes
different and those by one step (values within a rounding of a code boundary), an all-zero row included.
Speed (CUDA only): each kernel against the torch.compile'd twin it replaces, at a 3B batch of 16,384 tokens
(CUDA events, median of 50 after warm-up), in GB/s of the bytes each must move. Exits 1 when an output differs
by more than the tolerance. On a machine without a GPU it runs in the Triton interpreter:

    PYTHONPATH=scripts:/work/triton-site TRITON_INTERPRET=1 python docs/benchmarks/fused_kernels_check.py
    python3 docs/benchmarks/fused_kernels_check.py $OUT/fused_kernels.json      # on the device
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial

import torch

from virnucpro.models import fp8
from virnucpro.models.fused_kernels import add_layer_norm, add_layer_norm_fp8, quantise_rows, rotate_keys
from virnucpro.models.packed_esm2 import (
    LAYER_NORM_EPS,
    gelu_quantise,
    residual_norm,
    residual_norm_fp8,
    rotary_inv_freq,
    rotate_k,
)

CUDA = torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET")
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def tables(tokens: int, head_dim: int, max_len: int = 300):
    positions = torch.arange(tokens, device=DEVICE) % max_len
    freqs = positions.float()[:, None] * rotary_inv_freq(head_dim, DEVICE)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return emb.cos(), emb.sin()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def check_add_norm(tokens: int, width: int, dtype: torch.dtype) -> dict:
    g = torch.Generator(device=DEVICE).manual_seed(width + tokens)
    x = torch.randn(tokens, width, device=DEVICE, generator=g) * 3
    y = torch.randn(tokens, width, device=DEVICE, generator=g).to(dtype)
    w = 1 + 0.1 * torch.randn(width, device=DEVICE, generator=g)
    b = 0.1 * torch.randn(width, device=DEVICE, generator=g)
    want_x, want_h = residual_norm(x, y, w, b, dtype)
    got_x, got_h = add_layer_norm(x, y, w, b, dtype, LAYER_NORM_EPS)
    return {"x_rel": rel(got_x, want_x), "h_rel": rel(got_h, want_h), "x_exact": bool(torch.equal(got_x, want_x))}


def reference_codes(want: tuple, values: torch.Tensor) -> torch.Tensor:
    """The twin's E4M3 codes; under the interpreter, the twin's fp32 values (before the cast) cast by a Triton
    kernel instead, since the interpreter's numpy cast rounds differently from torch and from the GPU (it drops
    the carry into the exponent, 124.3 -> 64 not 128, and rounds ties away from zero): what is compared is then
    the kernel's arithmetic, not two casts."""
    if CUDA:
        return want[0]
    import triton
    import triton.language as tl

    @triton.jit
    def cast(src, dst, n, BLOCK: tl.constexpr):
        at = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(dst + at, tl.load(src + at, mask=at < n).to(dst.dtype.element_ty), mask=at < n)

    out = torch.empty_like(want[0])
    cast[(triton.cdiv(values.numel(), 1024),)](values.contiguous(), out, values.numel(), BLOCK=1024)
    return out


def codes_apart(got: tuple, want: tuple, values: torch.Tensor) -> dict:
    """Two (E4M3 rows, scales) pairs: scales' relative difference, share of codes that differ, and how far (in
    E4M3 steps: adjacent codes of one sign are adjacent integers of the bit pattern). `values`: the twin's fp32
    values before its cast (`reference_codes`)."""
    (g8, gs), ws = got, want[1]
    diff = (g8.view(torch.uint8).int() - reference_codes(want, values).view(torch.uint8).int()).abs()
    return {
        "scale_rel": rel(gs, ws),
        "codes_differing": float((diff > 0).float().mean()),
        "max_code_steps": int(diff.max()) if diff.numel() else 0,
    }


def pre_cast(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`fp8.quantise_rows`'s values just before its cast."""
    return (v.float() / scale).clamp(-fp8.E4M3_MAX, fp8.E4M3_MAX)


def check_fp8(tokens: int, width: int) -> dict:
    g = torch.Generator(device=DEVICE).manual_seed(7 * width + tokens)
    x = torch.randn(tokens, width, device=DEVICE, generator=g) * 3
    x[0, :4] *= 40  # outlier channels in the first row
    y = torch.randn(tokens, width, device=DEVICE, generator=g).bfloat16()
    w = 1 + 0.1 * torch.randn(width, device=DEVICE, generator=g)
    b = 0.1 * torch.randn(width, device=DEVICE, generator=g)
    want_x, want_h = residual_norm_fp8(x, y, w, b)
    got_x, got_h = add_layer_norm_fp8(x, y, w, b, LAYER_NORM_EPS)
    normed = torch.nn.functional.layer_norm(want_x, (width,), w, b, LAYER_NORM_EPS)
    a = torch.randn(tokens, width, device=DEVICE, generator=g).bfloat16()
    a[-1] = 0  # an all-zero row: scale MIN_AMAX / 448, codes 0
    q, gq = fp8.quantise_rows(a), gelu_quantise(a)
    return {
        "add_norm_fp8": {
            "x_exact": bool(torch.equal(got_x, want_x)),
            **codes_apart(got_h, want_h, pre_cast(normed, want_h[1])),
        },
        "quantise": codes_apart(quantise_rows(a), q, pre_cast(a, q[1])),
        "gelu_quantise": codes_apart(
            quantise_rows(a, gelu=True), gq, pre_cast(torch.nn.functional.gelu(a.float()), gq[1])
        ),
    }


def check_rotate(tokens: int, heads: int, head_dim: int, dtype: torch.dtype) -> dict:
    g = torch.Generator(device=DEVICE).manual_seed(heads * head_dim + tokens)
    qkv = torch.randn(tokens, 3 * heads * head_dim, device=DEVICE, generator=g).to(dtype)
    cos, sin = tables(tokens, head_dim)
    return {"rel": rel(rotate_keys(qkv, cos, sin, heads), rotate_k(qkv, cos, sin, heads))}


def speed(tokens: int = 16384, width: int = 2560, heads: int = 40) -> dict:
    """Milliseconds and GB/s per call, Triton kernel vs the torch.compile'd twin, bf16 (fp8: the quantisations of
    the qkv/fc1 input fused with the layer norm, of the attention output, and of fc1's output with the gelu)."""
    from device_checks import bench  # beside this file: median seconds of a call, CUDA events

    def median_ms(f) -> float:
        return bench(f, iters=50) * 1e3

    x = torch.randn(tokens, width, device=DEVICE)
    y = torch.randn(tokens, width, device=DEVICE).bfloat16()
    w, b = torch.ones(width, device=DEVICE), torch.zeros(width, device=DEVICE)
    qkv = torch.randn(tokens, 3 * width, device=DEVICE).bfloat16()
    cos, sin = tables(tokens, width // heads)
    norm_bytes = tokens * width * (4 + 2 + 4 + 2)
    rot_bytes = tokens * width * (2 + 2) + 2 * cos.numel() * 4
    attn, up = (
        torch.randn(tokens, width, device=DEVICE).bfloat16(),
        torch.randn(tokens, 4 * width, device=DEVICE).bfloat16(),
    )
    compiled = partial(torch.compile, dynamic=False)
    cases = {
        "add_norm": (norm_bytes, lambda: add_layer_norm(x, y, w, b, torch.bfloat16, LAYER_NORM_EPS),
                     lambda f=compiled(residual_norm): f(x, y, w, b, torch.bfloat16)),
        "rotate_keys": (rot_bytes, lambda: rotate_keys(qkv, cos, sin, heads),
                        lambda f=compiled(rotate_k): f(qkv, cos, sin, heads)),
        "add_norm_fp8": (tokens * width * (4 + 2 + 4 + 1), lambda: add_layer_norm_fp8(x, y, w, b, LAYER_NORM_EPS),
                         lambda f=compiled(residual_norm_fp8): f(x, y, w, b)),
        "quantise": (attn.numel() * 3, lambda: quantise_rows(attn), lambda f=compiled(fp8.quantise_rows): f(attn)),
        "gelu_quantise": (up.numel() * 3, lambda: quantise_rows(up, gelu=True),
                          lambda f=compiled(gelu_quantise): f(up)),
    }  # fmt: skip
    out = {}
    for name, (nbytes, triton_f, compiled_f) in cases.items():
        t, c = median_ms(triton_f), median_ms(compiled_f)
        out[name] = {"triton_ms": t, "compiled_ms": c, "triton_gbs": nbytes / t / 1e6, "compiled_gbs": nbytes / c / 1e6}
    return out


def main() -> int:
    tol = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}
    result, worst = {"device": str(DEVICE), "interpreter": not CUDA, "add_norm": {}, "rotate_keys": {}}, []
    for width in (320, 480, 640, 1280, 2560, 5120):
        for name, dtype in DTYPES.items():
            for tokens in (1, 37):
                r = check_add_norm(tokens, width, dtype)
                result["add_norm"][f"{width}/{name}/{tokens}"] = r
                worst.append((r["h_rel"] > tol[dtype] or r["x_rel"] > 1e-6, f"add_norm {width} {name} {tokens}", r))
    for heads, head_dim in ((20, 16), (20, 24), (40, 64), (40, 128)):
        for name in ("bf16", "fp16"):
            r = check_rotate(37, heads, head_dim, DTYPES[name])
            result["rotate_keys"][f"{heads}x{head_dim}/{name}"] = r
            worst.append((r["rel"] > tol[DTYPES[name]], f"rotate_keys {heads}x{head_dim} {name}", r))
    result["fp8"] = {}
    for width in (320, 2560, 10240):
        for tokens in (1, 37):
            r = check_fp8(tokens, width)
            result["fp8"][f"{width}/{tokens}"] = r
            for name, c in r.items():
                bad = c["scale_rel"] > 1e-6 or c["codes_differing"] > 0.01 or c["max_code_steps"] > 1
                worst.append((bad or not c.get("x_exact", True), f"{name} {width} {tokens}", c))
    if CUDA:
        result["speed_3b_16384_tokens"] = speed()
    failed = [f"{what}: {r}" for bad, what, r in worst if bad]
    result["failed"] = failed
    text = json.dumps(result, indent=1)
    print(text)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            fh.write(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
