"""What a job pays before its first batch: no Dynamo import on the default path, hand-written kernels where Triton
runs, torch.compile (and batches padded to one shape) only where a kernel has no hand-written twin. The Triton
kernels themselves run on the device machine (docs/benchmarks/fused_kernels_check.py, also in the interpreter)."""

from __future__ import annotations

import subprocess
import sys

import torch
from hypothesis import given
from hypothesis import strategies as st

from virnucpro.models import fused_kernels, packed_esm2
from virnucpro.models.packed_esm2 import LazyCompiled, PackedESM2, fused_kernel_set
from virnucpro.models.fp8 import E4M3
from virnucpro.models.weights import ModelSpec, random_state_dict, resolve_weights
from virnucpro.pipeline.runner import build_model

NO_DYNAMO = """
import sys, torch
from virnucpro.models.weights import resolve_weights
from virnucpro.pipeline.runner import build_model, warm_up
weights = resolve_weights("esm2_t6_8M_UR50D", None, True, 0, "cpu")
model = build_model(weights, torch.device("cpu"), "fp32")
warm_up(model, torch.device("cpu"), 6, None)
print(*(m in sys.modules for m in ("torch._dynamo", "torch.nn.attention.varlen", "sympy")))
"""


def test_a_job_builds_and_runs_its_model_without_importing_dynamo():
    """Building on the meta device (Embedding's normal_, arithmetic, to_empty) and the FlashAttention import
    used to pull in Dynamo or sympy: 2-4 s of every job's start-up on a GPU node."""
    out = subprocess.run([sys.executable, "-c", NO_DYNAMO], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_hand_written_kernels_where_triton_runs(monkeypatch):
    cpu = fused_kernel_set(torch.device("cpu"))
    assert all(isinstance(k, LazyCompiled) for k in cpu.values())
    monkeypatch.setattr(packed_esm2, "fused_kernels_available", lambda device: True)
    gpu = fused_kernel_set(torch.device("cpu"))
    assert gpu["add_norm"].func is fused_kernels.add_layer_norm
    assert gpu["rotate_keys"] is fused_kernels.rotate_keys
    assert gpu["add_norm_fp8"].func is fused_kernels.add_layer_norm_fp8
    assert gpu["quantise"] is fused_kernels.quantise_rows
    assert gpu["gelu_quantise"].func is fused_kernels.quantise_rows and gpu["gelu_quantise"].keywords == {"gelu": True}
    assert {n for n, k in gpu.items() if isinstance(k, LazyCompiled)} == {"rotate"}


def test_batches_are_padded_only_for_compiled_kernels(monkeypatch):
    model = build_model(resolve_weights("esm2_t6_8M_UR50D", None, True, 0, "cpu"), torch.device("cpu"), "fp32")
    assert model.batch_tokens(4096) is None  # eager: any shape
    model.compile_kernels()
    assert model.batch_tokens(4096) == 4096  # torch.compile'd add_norm and rotary: one shape
    monkeypatch.setattr(packed_esm2, "fused_kernels_available", lambda device: True)
    monkeypatch.setattr(packed_esm2, "triton_available", lambda device, dtype: True)
    model.compile_kernels()
    assert model.batch_tokens(4096) is None  # Triton add_norm + fused attention: any shape
    model.compile_kernels(fused_attention=False)
    assert model.batch_tokens(4096) == 4096  # the unfused rotary is compiled


def test_fp8_batches_are_padded_only_without_triton(monkeypatch):
    """fp8's three quantisations have hand-written kernels too: where Triton runs, an fp8 job compiles nothing."""
    spec = ModelSpec(2, 64, 4)
    model = PackedESM2.from_state_dict(spec, random_state_dict(spec, 0), 0, 2, "cpu", E4M3)
    assert model.fp8
    model.compile_kernels()
    assert model.batch_tokens(4096) == 4096  # CPU: the quantisations are torch.compile'd
    monkeypatch.setattr(packed_esm2, "fused_kernels_available", lambda device: True)
    monkeypatch.setattr(packed_esm2, "triton_available", lambda device, dtype: True)
    model.compile_kernels()
    assert model.batch_tokens(4096) is None


def test_lazy_compile_waits_for_the_first_call(monkeypatch):
    made = []
    monkeypatch.setattr(torch, "compile", lambda f, dynamic: made.append(f) or f)
    kernel = LazyCompiled(packed_esm2.residual_norm)
    assert made == []
    x = torch.ones(2, 4)
    kernel(x, x, torch.ones(4), torch.zeros(4), torch.float32)
    kernel(x, x, torch.ones(4), torch.zeros(4), torch.float32)
    assert made == [packed_esm2.residual_norm]


def test_the_model_skeleton_is_filled_from_the_state_dict():
    """inv_freq and the embedding are left empty on the meta device and must come from from_state_dict."""
    weights = resolve_weights("esm2_t6_8M_UR50D", None, True, 0, "cpu")
    state = random_state_dict(weights.spec, 0)
    model = PackedESM2.from_state_dict(weights.spec, state, 0, 2)
    assert torch.equal(model.inv_freq, packed_esm2.rotary_inv_freq(weights.spec.head_dim))
    assert torch.equal(model.embed_tokens.weight, state["embed_tokens.weight"])


EARLY_EXIT = """
import sys, torch
from virnucpro.pipeline.runner import background

def busy():  # torch ops that release the GIL, as creating the CUDA context and loading cuBLAS do
    a = torch.ones(1500, 1500)
    for _ in range(20):
        (a @ a).sum().item()

background(busy, "device-start")
sys.exit(2)  # a bad input found while the device starts
"""


def test_a_job_that_ends_while_its_device_starts_keeps_its_exit_code():
    """A daemon thread inside a torch op at interpreter exit aborted the process (exit 134, not 2)."""
    for _ in range(3):
        assert subprocess.run([sys.executable, "-c", EARLY_EXIT], capture_output=True).returncode == 2


@given(st.integers(min_value=1, max_value=1 << 16))
def test_a_quantised_row_is_two_power_of_two_segments_that_cover_it(width):
    head, tail = fused_kernels.row_segments(width)
    assert head & (head - 1) == 0 and tail & (tail - 1) == 0 and tail >= 16
    assert head <= width < 2 * head and head + tail >= width
    assert tail < max(32, 2 * (width - head))  # the tail is the smallest that covers what the head leaves


def test_esm2_widths_leave_no_lane_of_a_quantised_row_idle():
    """fc2's input at 3B is 10,240 wide: one block of 16,384 left 37.5 % of its lanes idle (H100, 2026-12-07)."""
    for width in (320, 640, 1280, 2560, 5120, 1280 * 4, 2560 * 4, 5120 * 4):
        assert sum(fused_kernels.row_segments(width)) == width
