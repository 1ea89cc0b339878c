"""How fast can fp8 on the four linear layers make ESM-2 3B on this H100? A bound from recorded measurements.

Issue 17 asks for >= 140,000 tokens/s (short reads) and >= 130,000 (seed mix) with the four linear layers of each
block in fp8. This script needs no GPU: it reads one warm H100's recorded run (`2026-12-07-h100-fp8-triton/`:
the bf16 and fp8 GEMM rates at the 3B shapes from `device_checks.json`, and `bench engines`' bf16 and fp8 rates
from `engines.json`) and splits a bf16 layer's measured time into its four GEMMs and everything else
(attention, norms, gelu, rotary, pooling). Swapping in fp8 GEMMs and keeping the rest gives the bound:

    fp8 layer time >= sum(fp8 GEMM times) + (bf16 layer time - sum(bf16 GEMM times))

under three assumptions about the fp8 GEMMs: as `torch._scaled_mm` ran at these shapes with quantisation free;
the same with the Triton quantisation passes' measured time added (as separate passes: the engine fuses the
first into add + layer norm, so this is pessimistic there); and every GEMM at the 8192^3 fp8 ceiling with
quantisation free (no kernel reaches that at these shapes).

    python3 docs/benchmarks/fp8_bound.py [RUN_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HIDDEN, FFN, LAYERS = 2560, 10240, 36
SHAPES = {"qkv": (HIDDEN, 3 * HIDDEN), "out_proj": (HIDDEN, HIDDEN), "fc1": (HIDDEN, FFN), "fc2": (FFN, HIDDEN)}
BUDGET = 16384  # the token budget `bench engines` ran, and the GEMM table's row count


def gemm_ms(tokens: int, layer: str, tflops: float) -> float:
    k, n = SHAPES[layer]
    return 2 * tokens * k * n / (tflops * 1e12) * 1e3


def main(run_dir: Path) -> None:
    gemm = json.loads((run_dir / "device_checks.json").read_text())["gemm"]
    rows = {r["layer"]: r for r in gemm["layers"] if r["tokens"] == BUDGET}
    engines = json.loads((run_dir / "engines.json").read_text())
    ours = {(r["dtype"], r["workload"]): r for r in engines["runs"] if r["kind"] == "virnucpro"}
    bf16 = sum(gemm_ms(BUDGET, name, r["bf16_tflops"]) for name, r in rows.items())
    fp8 = sum(gemm_ms(BUDGET, name, r["fp8_tflops"]) for name, r in rows.items())
    quantise = sum(r["quantise_triton_us"] for r in rows.values()) / 1e3
    peak = sum(gemm_ms(BUDGET, name, gemm["ceiling_fp8_rowwise_tflops"]) for name in rows)
    print(f"{gemm['device']}, {BUDGET} tokens a batch: one layer's four GEMMs bf16 {bf16:.3f} ms, "
          f"fp8 {fp8:.3f} ms ({bf16 / fp8:.2f}x), at the fp8 ceiling {peak:.3f} ms; Triton quantise {quantise:.3f} ms")
    print("workload     bf16 measured    layer  rest | fp8 bound: measured GEMMs, +quantise, at ceiling | fp8 measured")
    for workload in ("short-reads", "seed-mix"):
        for label, key in (("whole loop", None), ("steady", "avg_tokens_per_sec")):
            run = ours[("bf16", workload)]
            rate = run["steady"][key] if key else run["tokens_per_sec"]
            tokens = BUDGET * run["steady"]["avg_packing_efficiency"]
            layer = tokens / rate / LAYERS * 1e3
            rest = layer - bf16
            bounds = [tokens / ((g + rest) / 1e3 * LAYERS) for g in (fp8, fp8 + quantise, peak)]
            measured = ours[("fp8", workload)]
            fp8_rate = measured["steady"][key] if key else measured["tokens_per_sec"]
            print(f"{workload:11s}  {label:10s} {rate:8,.0f}  {layer:5.2f} {rest:5.2f} | "
                  + "  ".join(f"{b:8,.0f}" for b in bounds) + f" | {fp8_rate:8,.0f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "2026-12-07-h100-fp8-triton")
