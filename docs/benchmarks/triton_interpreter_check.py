"""The fused rotary + varlen attention kernel run in the Triton interpreter on the CPU (no GPU needed): its output
against the CPU twin (`rotate_qk` + `padded_attention`), and bit for bit against an earlier run's saved output.

Why: the kernel is only compiled on a GPU; the interpreter executes the same `@triton.jit` source with numpy, so
a refactor of the kernel (e.g. splitting it into `@triton.jit` helpers) can be shown not to change what it
computes. Triton goes outside the project venv (the interpreter needs no GPU):

    pip install --no-deps --target /work/triton-site triton==3.9.0
    PYTHONPATH=scripts:/work/triton-site TRITON_INTERPRET=1 python docs/benchmarks/triton_interpreter_check.py \
        /tmp/before.pt
    # ... change the kernel, then:
    PYTHONPATH=scripts:/work/triton-site TRITON_INTERPRET=1 python docs/benchmarks/triton_interpreter_check.py \
        /tmp/after.pt --same-as /tmp/before.pt

Cases: ESM-2's head dims 16, 24, 64, 128 (padded to (half, full) widths by `padded_head_dims`), 3 heads, fp32
and fp16 (the production cast path; not bf16: the interpreter multiplies bf16's raw bit patterns in `tl.dot`,
triton-lang/triton#11584, so its bf16 output is garbage whatever the kernel), each with keys rotated in the
kernel (longest segment <= ROTATE_KEYS_MAX_LEN, SHORT_CONFIG) and keys rotated beforehand by `rotate_k` (longer
segments, LONG_CONFIG). The packed batch holds segments of different lengths, one of length 1, and a trailing
64-token padding segment (as `collate` makes). Exits 1 when an output differs from the twin by more than the
tolerance or, with --same-as, is not bitwise equal to the saved one.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the kernel runs on CPU tensors

import torch  # noqa: E402

from virnucpro.data.loader import PAD_SEGMENT  # noqa: E402
from virnucpro.models.attention import padded_attention  # noqa: E402
from virnucpro.models.packed_esm2 import rotary_inv_freq, rotate_k, rotate_qk  # noqa: E402
from virnucpro.models.triton_attention import (  # noqa: E402
    ROTATE_KEYS_MAX_LEN,
    padded_head_dims,
    rotary_tables,
    rotary_varlen_attention,
    triton,
)

HEADS = 3
#: (name, segment lengths): the longest segment decides the path, as in `PackedESM2.forward`.
BATCHES = (
    ("keys_rotated_in_kernel", [37, 1, ROTATE_KEYS_MAX_LEN, 5, 70, PAD_SEGMENT]),
    ("keys_rotated_before", [1, 150, ROTATE_KEYS_MAX_LEN + 1, 13, 200, PAD_SEGMENT]),
)
#: Largest abs difference from the twin accepted per dtype (softmax outputs of randn inputs are O(1)).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2}


def segments(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cu_seqlens (int32), per-token position (restarting at each segment) and segment id."""
    n = torch.tensor(lengths)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = n.cumsum(0)
    seq_ids = torch.repeat_interleave(torch.arange(len(lengths)), n)
    positions = torch.arange(int(cu[-1])) - cu[:-1].long()[seq_ids]
    return cu, positions, seq_ids


def run_case(head_dim: int, dtype: torch.dtype, lengths: list[int], seed: int) -> tuple[torch.Tensor, float]:
    """The kernel's (T, H, Dh) output through the public wrapper, and its max abs difference from the twin."""
    cu, positions, seq_ids = segments(lengths)
    max_len = max(lengths)
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(int(cu[-1]), 3 * HEADS * head_dim, generator=gen).to(dtype)
    inv_freq = rotary_inv_freq(head_dim)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    cos, sin = emb.cos(), emb.sin()
    keys = rotate_k(qkv, cos, sin, HEADS) if max_len > ROTATE_KEYS_MAX_LEN else None
    got = rotary_varlen_attention(qkv, cu, max_len, rotary_tables(inv_freq, max_len), HEADS, rotated_keys=keys)
    q, k = rotate_qk(qkv.float(), cos, sin, HEADS)
    v = qkv.float().view(qkv.shape[0], 3, HEADS, -1)[:, 2]
    twin = padded_attention(q, k, v, cu, max_len, positions, seq_ids)
    return got, float((got.float() - twin).abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="torch.save file for the raw outputs, {case name: tensor}")
    parser.add_argument("--same-as", help="an earlier run's file: every output must be bitwise equal to it")
    args = parser.parse_args(argv)
    if triton is None:
        print("triton is not importable: put it on PYTHONPATH (see the docstring)", file=sys.stderr)
        return 2
    print(f"triton {triton.__version__}, torch {torch.__version__}, interpreter on the CPU")
    outputs, failed = {}, False
    for dtype in (torch.float32, torch.float16):
        for head_dim in (16, 24, 64, 128):
            for seed, (path, lengths) in enumerate(BATCHES):
                name = f"{str(dtype).removeprefix('torch.')}/head_dim_{head_dim}/{path}"
                got, diff = run_case(head_dim, dtype, lengths, seed)
                outputs[name] = got
                ok = diff <= TOLERANCE[dtype]
                failed |= not ok
                print(f"{name:45s} padded {padded_head_dims(head_dim)}  max |kernel - twin| {diff:.3e}  {ok=}")
    torch.save(outputs, args.out)
    if args.same_as:
        before = torch.load(args.same_as)
        same = before.keys() == outputs.keys() and all(torch.equal(before[k], outputs[k]) for k in outputs)
        print(f"bitwise equal to {args.same_as}: {same}")
        failed |= not same
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
