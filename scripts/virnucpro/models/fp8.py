"""`--precision fp8`: the four linear layers of every block (qkv, out, fc1, fc2) as E4M3 GEMMs on Hopper's fp8
tensor cores; everything else as in bf16 (fp32 residual stream, layer norms and embeddings; bf16 attention).

The recipe (recorded as `FP8_RECIPE` in the output's attributes and the resume fingerprint): **per-token scales
for the activations** (each row of a GEMM's input divided by its own absolute maximum / 448, computed on the fly:
with the layer norm for qkv and fc1, with the gelu for fc2, in a pass of its own over the attention output; on a
GPU as hand-written Triton kernels, `fused_kernels`) and **per-output-channel scales for the weights** (once, at
load), the product accumulated in fp32 by `torch._scaled_mm` with both scales
and the bias applied in its epilogue, output bf16.

Why this granularity: trained transformers carry a few hidden channels of much larger magnitude than the rest
(systematic across tokens and layers). A per-tensor activation scale lets those channels set the scale of every
token; a per-token one confines an outlier token's damage to its own row, and E4M3's exponent (values from
448 down to 2^-9 keep 3 mantissa bits' relative precision, unlike int8's fixed step) keeps small channels of the
same row representable. Per-channel weight scales do the same for output channels whose weights are larger.
Finer (block-wise, 1x128) scaling is what DeepSeek-V3 uses; row-wise is the finest that `torch._scaled_mm`
runs as one cuBLASLt/CUTLASS call on an H100, so it is the first thing to measure (`bench accuracy`).
"""

from __future__ import annotations

import functools

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
#: Rows whose maximum is below this are scaled as if it were this (an all-zero row must not divide by zero).
MIN_AMAX = 1e-12
FP8_RECIPE = "e4m3; activations per-token scale (amax/448), weights per-output-channel scale; fp32 accumulate; bf16 out"
#: What fp8 keeps in bf16: attention and the inputs/outputs of the GEMMs around the quantisation.
FP8_COMPUTE_DTYPE = torch.bfloat16
#: `--precision fp8` needs the fp8 tensor cores and row-wise scaled GEMMs of Hopper (compute capability 9.0).
FP8_MIN_CAPABILITY = (9, 0)


def quantise_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of `x` (T, K) as E4M3 with its own fp32 scale: returns (x8 (T, K), scale (T, 1)) such that
    x ~= x8.float() * scale. The row's maximum maps to 448 exactly; nothing saturates."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp_min(MIN_AMAX) / E4M3_MAX
    return (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def quantise_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear layer's weight (N, K) as E4M3 with one scale per output channel, returned as (w8 (N, K), scale
    (1, N)): the layout `fp8_linear` hands to `torch._scaled_mm`."""
    w8, scale = quantise_rows(w)
    return w8, scale.reshape(1, -1).contiguous()


def scaled_mm_available(device: torch.device) -> bool:
    """Whether `torch._scaled_mm` with row-wise scales runs here (Hopper+ on CUDA; recent CPU builds too).
    Asked once per device: `fp8_linear` asks for every GEMM."""
    return _scaled_mm_available(device.type, device.index)


@functools.cache
def _scaled_mm_available(device_type: str, index: int | None) -> bool:
    if device_type == "cuda":
        return torch.cuda.get_device_capability(index) >= FP8_MIN_CAPABILITY
    try:  # CPU: try one tiny product
        a = torch.ones(2, 16).to(E4M3)
        torch._scaled_mm(a, a.t(), torch.ones(2, 1), torch.ones(1, 2), out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError):
        return False


def fp8_linear(
    x8: torch.Tensor, x_scale: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """(x8 * x_scale) @ (w8 * w_scale^T)^T + bias, in bf16: one `torch._scaled_mm` (fp32 accumulation, both
    scales and the bias in the epilogue); where it cannot run, the same arithmetic emulated in fp32 (the CPU
    twin the tests check the scaling with)."""
    if scaled_mm_available(x8.device):
        return torch._scaled_mm(x8, w8.t(), x_scale, w_scale, bias=bias, out_dtype=FP8_COMPUTE_DTYPE)
    return emulated_linear(x8, x_scale, w8, w_scale, bias)


def emulated_linear(x8, x_scale, w8, w_scale, bias) -> torch.Tensor:
    """`fp8_linear`'s arithmetic in fp32: products of the E4M3 values, summed in fp32, then both scales."""
    out = (x8.float() @ w8.float().t()) * x_scale * w_scale
    if bias is not None:
        out = out + bias.float()
    return out.to(FP8_COMPUTE_DTYPE)


def check_fp8_device(device: torch.device) -> str | None:
    """Why `--precision fp8` cannot run on `device` (a sentence for the user), or None when it can."""
    if device.type != "cuda":
        return f"--precision fp8 needs a CUDA GPU of compute capability 9.0 or newer (Hopper); the device is {device}"
    cap = torch.cuda.get_device_capability(device)
    if cap < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (
            f"--precision fp8 needs a GPU of compute capability 9.0 or newer (Hopper); {name} is "
            f"{cap[0]}.{cap[1]}: use bf16"
        )
    return None


def recipe_facts(precision: str) -> dict:
    """What a run's fingerprint, attributes and telemetry add for `precision`: the fp8 recipe, else nothing
    (so results of the other precisions keep their fingerprints)."""
    return {"fp8_recipe": FP8_RECIPE} if precision == "fp8" else {}
