# Issue 17 CPU-twin experiment (docs/benchmarks/README.md, 'Issue 17: error-compensated rounding of the weights').
# Does GPTQ-style rounding (Frantar et al. 2022: quantise a weight's input columns one at a time and push each
# column's rounding error onto the columns not yet quantised, weighted by the inverse Hessian H = X^T X of the
# layer's inputs) shrink the pooled-embedding error that E4M3's rounding of the weights causes? Same E4M3 codes
# and per-output-channel scales as `quantise_weight`, so the GEMMs and their speed do not change.
# Run: PYTHONPATH=scripts python fp8_gptq.py esm2_t12_35M_UR50D [K:M]  (importable: fp8_granularity.py uses it)
import sys

import numpy as np
import torch
import torch.nn.functional as F

import virnucpro.models.fp8 as f8
import virnucpro.models.packed_esm2 as pe
from virnucpro.bench import _errors, packed_embed
from virnucpro.data.loader import Vocabulary
from virnucpro.data.synthetic import make_sequences
from virnucpro.models.weights import ARCHITECTURES, OutlierStateDict, random_state_dict

torch.set_num_threads(2)
NAMES = ("qkv", "out", "fc1", "fc2")
cpu = torch.device("cpu")
vocab = Vocabulary.esm2()


class Twin:
    """The fp32 model (random weights, optional K:M outlier channels), its embeddings of 80 test sequences,
    and each projection's H = X^T X over 130 other (calibration) sequences."""

    def __init__(self, model: str, outliers: str | None = None):
        self.spec = ARCHITECTURES[model]
        self.outliers = tuple(float(v) for v in outliers.split(":")) if outliers else None
        self.seqs = [
            s.encode() for s in make_sequences(40, 1, "seed-mix")[1][:20] + make_sequences(60, 1, "short-reads")[1]
        ]
        calib = [
            s.encode() for s in make_sequences(100, 7, "seed-mix")[1][:30] + make_sequences(200, 7, "short-reads")[1]
        ]
        self.lengths = np.array([len(s) for s in self.seqs])
        state = dict(random_state_dict(self.spec, 0))
        if self.outliers:
            k, m = self.outliers
            state = dict(OutlierStateDict(state, self.spec.embed_dim, int(k), m, seed=0))
        self.state = state
        self.m32 = self.build(torch.float32)
        self.ref = packed_embed(self.m32, self.seqs, 4096, cpu)
        self.hessians = {}
        orig_linear = F.linear

        def recording_linear(x, w, b=None):
            xf = x.reshape(-1, x.shape[-1]).double()
            h = self.hessians.setdefault(id(w), torch.zeros(xf.shape[1], xf.shape[1], dtype=torch.float64))
            h += xf.T @ xf
            return orig_linear(x, w, b)

        F.linear = recording_linear
        try:
            packed_embed(self.m32, calib, 4096, cpu)
        finally:
            F.linear = orig_linear

    def build(self, dtype):
        return pe.PackedESM2.from_state_dict(self.spec, self.state, vocab.cls_idx, vocab.eos_idx, cpu, dtype)

    def errors(self, model):
        return _errors(packed_embed(model, self.seqs, 4096, cpu), self.ref, self.lengths)

    def rounded(self, rounding, dtype):
        """The model in `dtype` with each projection's weight rounded by `rounding`: fp32 holds the rounded
        values (the weights' error alone); E4M3 holds codes and scales and quantises the activations per token
        as `--precision fp8` does."""
        m = self.build(dtype)
        with torch.no_grad():
            for l32, layer in zip(self.m32.layers, m.layers):
                for n in NAMES:
                    w, lin = getattr(l32, n).weight, getattr(layer, n)
                    q, scale = rounding(w, self.hessians[id(w)])
                    lin.weight.copy_((q / scale).to(f8.E4M3) if dtype == f8.E4M3 else q)
                    if dtype == f8.E4M3:
                        lin.weight_scale.copy_(scale.reshape(1, -1))
        return m


def e4m3(w, scale):
    return (w / scale).clamp(-f8.E4M3_MAX, f8.E4M3_MAX).to(f8.E4M3).float() * scale


def int8(w, scale):
    return (w / scale).round().clamp(-127, 127) * scale


#: A rounding grid: (rounding to codes x scale, the largest code the row's maximum maps to).
GRIDS = {"e4m3": (e4m3, f8.E4M3_MAX), "int8": (int8, 127.0)}


def gptq(w, h, damp=0.01, grid="e4m3"):
    """w (N, K) fp32 rounded to E4M3 (or int8) codes x per-row scales (the scales of plain rounding), columns in
    order."""
    to_grid, top = GRIDS[grid]
    w = w.double().clone()
    scale = w.abs().amax(1, keepdim=True).clamp_min(f8.MIN_AMAX) / top
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for i in range(w.shape[1]):
        q[:, i : i + 1] = to_grid(w[:, i : i + 1], scale)
        err = (w[:, i] - q[:, i]) / hinv[i, i]
        w[:, i + 1 :] -= err[:, None] * hinv[i, i + 1 :][None, :]
    return q.float(), scale.float()


def plain(w, h):
    scale = w.abs().amax(1, keepdim=True).clamp_min(f8.MIN_AMAX) / f8.E4M3_MAX
    return e4m3(w, scale), scale


def show(label, e):
    print(
        label,
        round(e["median"], 4),
        round(e["max"], 4),
        round(e["cosine_min"], 5),
        e["cosine_ge_gate_fraction"],
        "pass" if e["gate_pass"] else "fail",
        flush=True,
    )


if __name__ == "__main__":
    twin = Twin(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    print(sys.argv[1], "outliers", twin.outliers, "| label, rel L2 median, max, cosine min, share >= 0.999, gate")
    show("weights only, plain rounding", twin.errors(twin.rounded(plain, torch.float32)))
    show("weights only, gptq", twin.errors(twin.rounded(gptq, torch.float32)))
    show("fp8 (weights + activations), plain", twin.errors(twin.rounded(plain, f8.E4M3)))
    show("fp8 (weights + activations), gptq", twin.errors(twin.rounded(gptq, f8.E4M3)))
