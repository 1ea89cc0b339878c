# Issue 17 CPU-twin experiment, after fp8_gptq.py: with the weights GPTQ-rounded to E4M3 the remaining error is
# the activations' per-token rounding. Which GEMM's input costs most, and do finer scales (one per 1 x B block
# of a row, as DeepSeek-V3 uses with B = 128) close the gap to the gate (cosine >= 0.999 for >= 99 %)?
# Each GEMM input is rounded here as asked (row: one scale per token; bB: one per 1 x B block; bf16: not
# quantised, as `--precision bf16` holds it; i8row / i8bB: int8 codes instead of E4M3, with int8 GPTQ weights:
# the W8A8 recipe of SmoothQuant-style int8 GEMMs, which Hopper's tensor cores run at fp8's rate), from the same
# values the product's kernels quantise (layer-norm and gelu output in fp32, attention output in bf16), times
# the weights, summed in fp32, out in bf16.
# Run: PYTHONPATH=scripts python docs/benchmarks/2026-12-07-cpu-fp8-gptq/fp8_granularity.py MODEL [K:M]
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import virnucpro.models.fp8 as f8
import virnucpro.models.packed_esm2 as pe

sys.path.insert(0, str(Path(__file__).parent))
from fp8_gptq import GRIDS, NAMES, Twin, gptq, plain, show  # noqa: E402

ROLES = {}  # id(linear layer) -> its name in NAMES
ROUNDING = {}  # name -> "row", "bB", "bf16", "i8row" or "i8bB": how that GEMM's input is rounded
WEIGHTS = {}  # id(linear layer) -> fp32 weight to use instead of its E4M3 codes x scales (the int8 variants)


def round_input(x: torch.Tensor, how: str) -> torch.Tensor:
    """x (T, K) as the GEMM sees it, in fp32: E4M3 codes times one scale per row or per 1 x B block, or bf16."""
    x = x.float()
    if how == "bf16":
        return x.to(torch.bfloat16).float()
    grid = "int8" if how.startswith("i8") else "e4m3"
    how = how.removeprefix("i8")
    t, k = x.shape
    b = k if how == "row" else int(how[1:])
    g = x.reshape(t, k // b, b)
    to_grid, top = GRIDS[grid]
    return to_grid(g, g.abs().amax(-1, keepdim=True).clamp_min(f8.MIN_AMAX) / top).reshape(t, k)


def linear(h, layer):
    """`packed_esm2.linear` for an fp8 layer whose input `h` = (unrounded values, None) is rounded here."""
    x = round_input(h[0], ROUNDING[ROLES[id(layer)]])
    w = WEIGHTS.get(id(layer))
    if w is None:
        w = layer.weight.float() * layer.weight_scale.reshape(-1, 1)
    return F.linear(x, w, layer.bias.float()).to(f8.FP8_COMPUTE_DTYPE)


def unrounded(model):
    """The fp8 `model` with its quantising kernels replaced by ones that hand on the values unrounded."""
    eps = pe.LAYER_NORM_EPS

    def add_norm(x, y, w, b):
        x = x + y.float()
        return x, (F.layer_norm(x, (x.shape[-1],), w, b, eps), None)

    model.kernels = dict(model.kernels, quantise=lambda x: (x, None), add_norm_fp8=add_norm)
    model.kernels["gelu_quantise"] = lambda u: (F.gelu(u.float()), None)
    for layer in model.layers:
        ROLES.update({id(getattr(layer, n)): n for n in NAMES})
    return model


def variants(d: int) -> dict[str, dict[str, str]]:
    """Label -> rounding of each GEMM input; blocks only where they divide both widths (d and 4d)."""
    out = {"all per-token (as --precision fp8)": dict.fromkeys(NAMES, "row")}
    out["all bf16 (fp8 weights only)"] = dict.fromkeys(NAMES, "bf16")
    for n in NAMES:
        out[f"per-token, {n} input bf16"] = {**dict.fromkeys(NAMES, "row"), n: "bf16"}
    out["fp8 MLP only (qkv, out inputs bf16)"] = {**dict.fromkeys(NAMES, "row"), "qkv": "bf16", "out": "bf16"}
    out["fp8 attention projections only (fc1, fc2 inputs bf16)"] = {
        **dict.fromkeys(NAMES, "row"),
        "fc1": "bf16",
        "fc2": "bf16",
    }
    for b in (128, 64, 32):
        if d % b == 0:
            out[f"all 1x{b} blocks"] = dict.fromkeys(NAMES, f"b{b}")
    return out


def int8_variants(d: int) -> dict[str, dict[str, str]]:
    out = {"int8 W8A8, per-token": dict.fromkeys(NAMES, "i8row")}
    for b in (128, 32):
        if d % b == 0:
            out[f"int8 W8A8, 1x{b} blocks"] = dict.fromkeys(NAMES, f"i8b{b}")
    return out


def int8_weights(twin: Twin, model) -> None:
    """WEIGHTS: every projection of `model` as GPTQ-rounded int8 codes x per-output-channel scales."""
    for l32, layer in zip(twin.m32.layers, model.layers):
        for n in NAMES:
            w = getattr(l32, n).weight
            q, _ = gptq(w, twin.hessians[id(w)], grid="int8")
            WEIGHTS[id(getattr(layer, n))] = q


if __name__ == "__main__":
    twin = Twin(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    d = twin.spec.embed_dim
    print(sys.argv[1], "outliers", twin.outliers, "| label, rel L2 median, max, cosine min, share >= 0.999, gate")
    show("bf16 model (the floor)", twin.errors(twin.build(torch.bfloat16)))
    for name, rounding in (("gptq", gptq), ("plain", plain)):
        model = twin.rounded(rounding, f8.E4M3)
        show(f"[{name} weights] product fp8 path", twin.errors(model))
        pe.linear, product_linear = linear, pe.linear
        unrounded(model)
        for label, how in variants(d).items():
            if name == "plain" and "block" not in label and "as --precision" not in label:
                continue
            ROUNDING.update(how)
            show(f"[{name} weights] {label}", twin.errors(model))
        pe.linear = product_linear
    int8_weights(twin, model)
    pe.linear = linear
    for label, how in int8_variants(d).items():
        ROUNDING.update(how)
        show(f"[gptq int8 weights] {label}", twin.errors(model))
