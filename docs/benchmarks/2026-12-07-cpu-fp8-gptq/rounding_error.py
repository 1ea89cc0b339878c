# Issue 17: the relative error (||round(x) - x|| / ||x||) of rounding one GEMM input to E4M3 or int8 codes with
# one scale per row or per 1 x B block, on rows shaped like ESM-2 3B's (2,560 wide; gelu output 10,240 wide).
# E4M3 is a floating-point format: each value keeps 3 mantissa bits whatever the scale, so finer scales barely
# help; int8's step is the scale's, so a row without outliers keeps ~3x more precision and blocks help it.
# Run: PYTHONPATH=scripts python docs/benchmarks/2026-12-07-cpu-fp8-gptq/rounding_error.py
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from fp8_gptq import GRIDS  # noqa: E402
from fp8_granularity import round_input  # noqa: E402

torch.manual_seed(0)
outliers = torch.where(torch.arange(2560) < 4, 30.0, 1.0)  # 4 channels x30, as `bench accuracy` (b)
rows = {
    "gaussian (2,560)": torch.randn(2048, 2560),
    "gaussian, 4 outlier channels x30": torch.randn(2048, 2560) * outliers,
    "gelu(gaussian) (10,240)": F.gelu(torch.randn(2048, 10240)),
}
print("rows | rounding | relative error", list(GRIDS))
for name, x in rows.items():
    for how in ("row", "b128", "b32", "i8row", "i8b128", "i8b32", "bf16"):
        print(f"{name} | {how} | {float((round_input(x, how) - x).norm() / x.norm()):.4f}")
