"""The four ESM-2 3B GEMM shapes of one 16,384-token batch, in the layouts and calls cuBLAS could get (issue 6).

Run on the GPU machine:  python docs/benchmarks/gemm_layouts.py
F.linear(x, W, b) hands cuBLAS a transposed weight ("TN"); addmm(b, x, Wt) with Wt stored (K, N) is "NN".
Median of do_bench (CUDA events), TFLOP/s; fresh random inputs (not zeros).
"""

import torch
import torch.nn.functional as F
import triton.testing

T, D = 16384, 2560
shapes = {"qkv": (D, 3 * D), "out": (D, D), "fc1": (D, 4 * D), "fc2": (4 * D, D)}
torch.manual_seed(0)
for dtype in (torch.bfloat16, torch.float16):
    print(dtype)
    for name, (k, n) in shapes.items():
        x = torch.randn(T, k, device="cuda", dtype=dtype)
        w = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
        wt = w.t().contiguous()
        b = torch.randn(n, device="cuda", dtype=dtype)
        flop = 2 * T * k * n
        runs = {
            "linear TN +bias": lambda: F.linear(x, w, b),
            "addmm NN +bias": lambda: torch.addmm(b, x, wt),
            "mm TN": lambda: x @ w.t(),
            "mm NN": lambda: x @ wt,
        }
        if name == "fc1":
            runs["addmm_activation TN gelu"] = lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True)
            runs["addmm_activation NN gelu"] = lambda: torch._addmm_activation(b, x, wt, use_gelu=True)
        for label, fn in runs.items():
            ms = triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
            print(f"  {name:4s} {label:26s} {ms:7.3f} ms {flop / ms / 1e9:7.0f} TFLOP/s", flush=True)
