"""The hand-written Triton kernels of `models.fused_kernels` against their twins, and on a GPU their speed.

Correctness: `add_layer_norm` against `packed_esm2.residual_norm` and `rotate_keys` against `packed_esm2.rotate_k`
(eager torch), at ESM-2 widths (320, 480, 640, 1280, 2560, 5120; heads 20 / 40), y in bf16, fp16 and fp32, including a
single row. Speed (CUDA only): each kernel against the torch.compile'd twin it replaces, at a 3B batch of 16,384
tokens (CUDA events, median of 50 after warm-up), in GB/s of the bytes each must move. Exits 1 when an output
differs by more than the tolerance. On a machine without a GPU it runs in the Triton interpreter:

    PYTHONPATH=scripts:/work/triton-site TRITON_INTERPRET=1 python docs/benchmarks/fused_kernels_check.py
    python3 docs/benchmarks/fused_kernels_check.py $OUT/fused_kernels.json      # on the device
"""

from __future__ import annotations

import json
import os
import sys

import torch

from virnucpro.models.fused_kernels import add_layer_norm, rotate_keys
from virnucpro.models.packed_esm2 import LAYER_NORM_EPS, residual_norm, rotary_inv_freq, rotate_k

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


def check_rotate(tokens: int, heads: int, head_dim: int, dtype: torch.dtype) -> dict:
    g = torch.Generator(device=DEVICE).manual_seed(heads * head_dim + tokens)
    qkv = torch.randn(tokens, 3 * heads * head_dim, device=DEVICE, generator=g).to(dtype)
    cos, sin = tables(tokens, head_dim)
    return {"rel": rel(rotate_keys(qkv, cos, sin, heads), rotate_k(qkv, cos, sin, heads))}


def speed(tokens: int = 16384, width: int = 2560, heads: int = 40) -> dict:
    """Milliseconds and GB/s per call, Triton kernel vs the torch.compile'd twin, bf16."""
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
    cases = {
        "add_norm": (norm_bytes, lambda: add_layer_norm(x, y, w, b, torch.bfloat16, LAYER_NORM_EPS),
                     lambda f=torch.compile(residual_norm, dynamic=False): f(x, y, w, b, torch.bfloat16)),
        "rotate_keys": (rot_bytes, lambda: rotate_keys(qkv, cos, sin, heads),
                        lambda f=torch.compile(rotate_k, dynamic=False): f(qkv, cos, sin, heads)),
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
