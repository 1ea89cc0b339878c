"""Two short GPU checks that belong to no workflow run, written as one JSON file:

1. fp8 GEMMs at ESM-2 3B's real shapes (issue 17's "measure before choosing"): bf16 `F.linear` against
   `torch._scaled_mm` in E4M3 with row-wise scales (per-token activation scale, per-channel weight scale), at
   16k/32k-token batches, with the 8192^3 ceilings of both measured in the same run, and what quantising the
   activations (amax per row, scale, cast) costs next to the fp8 GEMM it feeds: compiled, and as the engine's
   Triton kernel (`fused_kernels.quantise_rows`). Beside them, int8 (W8A8: per-token int8 activations,
   per-channel int8 weights, `torch._int_mm` into int32, the scales applied after), which the CPU twin found
   3.7x more accurate than E4M3 on rows without outliers (benchmarks README, 2026-12-08): is it as fast?
2. `--long-sequences chunk` on CUDA: `virnucpro embed` of long random proteins (1,100-3,000 residues) on CUDA fp32
   and bf16 against the same command on CPU fp32 (which the CPU test suite holds equal to fair-esm's forward over
   the same windows), relative L2 per sequence.

Usage (device, repository root, fair-esm on PYTHONPATH): python docs/benchmarks/device_checks.py OUT.json
The quantisation and the scaled GEMM are the engine's own (`virnucpro.models.fp8`), so this measures what
`--precision fp8` runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from virnucpro.data.fasta import write_fasta  # noqa: E402
from virnucpro.models.fp8 import fp8_linear, quantise_rows, quantise_weight  # noqa: E402
from virnucpro.models.fused_kernels import quantise_rows as triton_quantise  # noqa: E402
from virnucpro.models.weights import write_fairesm_checkpoint  # noqa: E402

D, FFN = 2560, 10240
SHAPES = {"qkv": (3 * D, D), "out_proj": (D, D), "fc1": (FFN, D), "fc2": (D, FFN)}  # (N, K) of each linear


def bench(fn, iters: int = 30) -> float:
    """Median seconds of one call, CUDA events, after 5 warm-up calls."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return float(np.median(times))


def int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of `x` as int8 codes with its own fp32 scale (amax / 127): the int8 twin of `quantise_rows`."""
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127
    return (x.float() / scale).round().clamp(-127, 127).to(torch.int8), scale


def int8_linear(x8, sx, w8, sw, bias) -> torch.Tensor:
    """(x8 * sx) @ (w8 * sw)^T + bias in bf16: `torch._int_mm` (int32 accumulate), then the scales in one pass."""
    acc = torch._int_mm(x8, w8.t())
    out = acc.float() * sx * sw.reshape(1, -1)
    return (out if bias is None else out + bias.float()).to(torch.bfloat16)


def int8_row(x, w, bias, t_bf16: float, flop: int) -> dict:
    """The int8 GEMM's rate alone and with its scaling pass, or the error that stopped it (recorded)."""
    try:
        (x8, sx), (w8, sw) = int8_rows(x), int8_rows(w)
        t_raw = bench(lambda: torch._int_mm(x8, w8.t()))
        t_scaled = bench(lambda: int8_linear(x8, sx, w8, sw, bias))
        ref = F.linear(x.float(), w.float())
        got = int8_linear(x8, sx, w8, sw, None).float()
        return {
            "int8_tops": flop / t_raw / 1e12,
            "int8_scaled_tflops": flop / t_scaled / 1e12,
            "int8_scaled_speedup": t_bf16 / t_scaled,
            "int8_rel_l2": float((got - ref).norm() / ref.norm()),
        }
    except Exception as exc:  # recorded: the point of the check
        return {"int8_error": f"{type(exc).__name__}: {exc}"[:300]}


def gemm_rows() -> dict:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=g)
    flop = 2 * n**3
    out["ceiling_bf16_tflops"] = flop / bench(lambda: a @ b) / 1e12
    (a8, sa), (b8, sb) = quantise_rows(a), quantise_weight(b)
    out["ceiling_fp8_rowwise_tflops"] = flop / bench(lambda: fp8_linear(a8, sa, b8, sb, None)) / 1e12
    one = torch.ones((), device=dev)
    out["ceiling_fp8_tensorwise_tflops"] = (
        flop / bench(lambda: torch._scaled_mm(a8, b8.t(), one, one, out_dtype=torch.bfloat16)) / 1e12
    )
    out["ceiling_int8"] = int8_row(a, b, None, flop / out["ceiling_bf16_tflops"] / 1e12, flop)
    quant = torch.compile(quantise_rows)
    rows = []
    for tokens in (16384, 32768):
        for name, (nout, k) in SHAPES.items():
            x = torch.randn(tokens, k, device=dev, dtype=torch.bfloat16, generator=g)
            w = torch.randn(nout, k, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
            bias = torch.zeros(nout, device=dev, dtype=torch.bfloat16)
            w8, sw = quantise_weight(w)
            x8, sx = quant(x)
            fl = 2 * tokens * nout * k
            t_bf16 = bench(lambda x=x, w=w, bias=bias: F.linear(x, w, bias))
            t_fp8 = bench(lambda x8=x8, w8=w8, sx=sx, sw=sw, bias=bias: fp8_linear(x8, sx, w8, sw, bias))
            t_quant = bench(lambda x=x: quant(x))
            t_triton = bench(lambda x=x: triton_quantise(x))  # what an fp8 job runs since 2026-12-07, late
            ref = F.linear(x.float(), w.float())
            got = fp8_linear(x8, sx, w8, sw, None).float()
            rows.append(
                {
                    "tokens": tokens,
                    "layer": name,
                    "bf16_tflops": fl / t_bf16 / 1e12,
                    "fp8_tflops": fl / t_fp8 / 1e12,
                    "quantise_us": t_quant * 1e6,
                    "fp8_plus_quantise_speedup": t_bf16 / (t_fp8 + t_quant),
                    "quantise_triton_us": t_triton * 1e6,
                    "fp8_plus_triton_quantise_speedup": t_bf16 / (t_fp8 + t_triton),
                    "fp8_rel_l2": float((got - ref).norm() / ref.norm()),
                    **int8_row(x, w, bias, t_bf16, fl),
                }
            )
    out["layers"] = rows
    return out


def long_fasta(path: Path, n: int = 32) -> None:
    rng = np.random.default_rng(1)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    seqs = ["".join(rng.choice(letters, size=int(rng.integers(1100, 3000)))) for _ in range(n)]
    write_fasta(path, [f"long{i}" for i in range(n)], seqs)


def embed(fasta: Path, out: Path, device: str, precision: str, checkpoint: Path) -> np.ndarray:
    options = f"--checkpoint {checkpoint} --device {device} --precision {precision} "
    options += "--long-sequences chunk --window-overlap 256 --token-budget 8192 --num-workers 0"
    cmd = [sys.executable, "-m", "virnucpro.cli", "embed", str(fasta), "-o", str(out), *options.split()]
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")]))}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    print(f"embed {device} {precision}: {time.perf_counter() - start:.1f} s", flush=True)
    with h5py.File(out / "embeddings.h5") as h5:
        ids = [i.decode() if isinstance(i, bytes) else i for i in h5["ids"][:]]
        order = np.argsort(ids)
        return h5["embeddings"][:][order].astype(np.float64)


def chunk_rows() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "long.faa"
        long_fasta(fasta)
        # one checkpoint file for both devices: --random-weights draws them with each device's own generator
        # (the first run of this check, on 2026-12-07, compared two different models: rel L2 ~1.42)
        ckpt = write_fairesm_checkpoint(Path(tmp) / "esm2_t12_35M_check.pt", num_layers=12, embed_dim=480, heads=20)
        ref = embed(fasta, Path(tmp) / "cpu", "cpu", "fp32", ckpt)
        out = {}
        for precision in ("fp32", "bf16"):
            got = embed(fasta, Path(tmp) / f"cuda_{precision}", "cuda", precision, ckpt)
            rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
            out[precision] = {
                "sequences": len(rel),
                "max_rel_l2": float(rel.max()),
                "median_rel_l2": float(np.median(rel)),
            }
        return out


def main() -> None:
    result = {"gemm": gemm_rows()}
    print(json.dumps(result["gemm"], indent=1), flush=True)
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1))  # kept if the chunk check is cut short
    result["chunk_vs_cpu_fp32"] = chunk_rows()
    print(json.dumps(result["chunk_vs_cpu_fp32"], indent=1), flush=True)
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
