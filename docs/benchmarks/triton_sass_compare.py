"""Compile the fused attention kernel of two revisions for an H100 (sm_90) on a machine without a GPU and compare
the machine code: same SASS instructions = same kernel, same speed.

Why: a refactor of the `@triton.jit` source (e.g. splitting it into helpers, which Triton inlines) should not
change the compiled kernel, and without GPU time the only way to show that is to compile both versions and
diff them. Triton ships ptxas and nvdisasm, so no CUDA install or GPU is needed:

    pip install --no-deps --target /work/triton-site triton==3.9.0
    PYTHONPATH=/work/triton-site python docs/benchmarks/triton_sass_compare.py BASE_REV [NEW_FILE]

BASE_REV is a git revision whose scripts/virnucpro/models/triton_attention.py is compared with NEW_FILE
(default: the working tree's). For each case (fp16 and bf16; head dims 16, 24, 64 with keys rotated in the
kernel and SHORT_CONFIG, 64 and 128 with keys rotated beforehand and LONG_CONFIG; ESM-2's 20 heads; arguments
specialised as the launcher does: see DIVISIBLE and CASES) it prints whether the
SASS is equal (addresses and comments stripped), twice: as Triton compiles by default (with line info, whose
inlined-call records ptxas sees) and with TRITON_DISABLE_LINE_INFO's setting (code alone), and which opcodes'
counts differ in the first. Exits 1 when any case differs.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

REPO = Path(__file__).resolve().parents[2]
MODULE = "scripts/virnucpro/models/triton_attention.py"
NVDISASM = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
SIGNATURE = {
    "qkv": "*{t}",
    "keys": "*{t}",
    "out": "*{t}",
    "cu_seqlens": "*i32",
    "cos_table": "*fp32",
    "sin_table": "*fp32",
    "scale_log2": "fp32",
    "qkv_row_stride": "i32",
    "key_row_stride": "i32",
    "out_row_stride": "i32",
    "m_blocks": "i32",
}
#: Arguments the launcher specialises as divisible by 16: pointers of fresh tensors, strides of 3D or D (every
#: ESM-2's D is a multiple of 16).
DIVISIBLE = (
    "qkv",
    "keys",
    "out",
    "cu_seqlens",
    "cos_table",
    "sin_table",
    "qkv_row_stride",
    "key_row_stride",
    "out_row_stride",
)
#: (dtype, head dim, keys rotated in the kernel, query blocks per segment): the launcher specialises m_blocks as a
#: constant when it is 1 (every segment <= 64 tokens: short reads) and as divisible by 16 when it is (>= 1024).
CASES = [
    (dtype, head_dim, rotate, m_blocks)
    for dtype in ("fp16", "bf16")
    for head_dim, rotate, m_blocks in [(hd, True, m) for hd in (16, 24, 64) for m in (1, 2)]
    + [(hd, False, m) for hd in (64, 128) for m in (2, 16)]
]


def load(path: Path, name: str):
    """Import a copy of the module from `path` (the kernel's source must be a file for Triton to parse it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sass(module, case: tuple, workdir: Path, line_info: bool) -> str:
    """The kernel compiled for sm_90 with the launcher's constants for this case, disassembled, addresses and
    comments stripped."""
    dtype, head_dim, rotate_keys, m_blocks = case
    half_p, dim_p = module.padded_head_dims(head_dim)
    block_m, block_n, warps, stages = module.SHORT_CONFIG if rotate_keys else module.LONG_CONFIG
    kernel = module._rotary_varlen_attention
    consts = dict(
        HEADS=20,
        HEAD_DIM=head_dim,
        HALF_P=half_p,
        DIM_P=dim_p,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        ROTATE_KEYS=rotate_keys,
    ) | ({"m_blocks": 1} if m_blocks == 1 else {})
    triton.knobs.compilation.disable_line_info = not line_info
    triton.knobs.cache.dir = str(workdir / f"cache-{int(line_info)}")
    signature = {name: kind.format(t=dtype) for name, kind in SIGNATURE.items()} | dict.fromkeys(consts, "constexpr")
    divisible = DIVISIBLE + (("m_blocks",) if m_blocks % 16 == 0 else ())
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    compiled = triton.compile(
        ASTSource(kernel, signature, consts, attrs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": warps, "num_stages": stages},
    )
    cubin = workdir / "kernel.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    text = subprocess.run([str(NVDISASM), "-c", str(cubin)], check=True, capture_output=True, text=True).stdout
    lines = (re.sub(r"/\*[0-9a-f]+\*/", "", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("//"))


def opcode_delta(a: str, b: str) -> str:
    """How the count of each opcode (predicates and operands dropped) changes from `a` to `b`; "none" when the
    two use the same instructions (then only their order or registers differ)."""
    counts = [
        Counter(re.sub(r"^@!?U?P[T0-9]+\s+", "", line).split()[0].rstrip(";") for line in s.splitlines())
        for s in (a, b)
    ]
    changed = sorted(op for op in counts[0] | counts[1] if counts[0][op] != counts[1][op])
    return ", ".join(f"{op} {counts[0][op]}->{counts[1][op]}" for op in changed) or "none"


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    new_file = Path(argv[1]) if len(argv) == 2 else REPO / MODULE
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        base_file = workdir / "base_triton_attention.py"
        base_file.write_text(
            subprocess.run(
                ["git", "-C", str(REPO), "show", f"{argv[0]}:{MODULE}"], check=True, capture_output=True, text=True
            ).stdout
        )
        base, new = load(base_file, "base_triton_attention"), load(new_file, "new_triton_attention")
        print(f"triton {triton.__version__}, sm_90, {argv[0]} vs {new_file}")
        differ = 0
        for case in CASES:
            (a, b), (a0, b0) = ([sass(m, case, workdir, line_info) for m in (base, new)] for line_info in (True, False))
            row = (a == b, a0 == b0)
            differ += not all(row)
            dtype, head_dim, rotate, m_blocks = case
            path = "keys_rotated_in_kernel" if rotate else "keys_rotated_before"
            print(
                f"{dtype} head_dim {head_dim:3d} {path:22s} m_blocks {m_blocks:2d}  SASS lines {len(a.splitlines()):5d}"
                f"  equal as compiled (line info) {row[0]!s:5}  without line info {row[1]!s:5}"
                f"  opcode counts changed: {opcode_delta(a, b)}"
            )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
