# Issue 17 CPU-twin experiment (docs/benchmarks/README.md, 'Issue 17'). Run: PYTHONPATH=scripts python fp8_biascorr.py esm2_t12_35M_UR50D
import sys, numpy as np, torch
import torch.nn.functional as F
import virnucpro.models.packed_esm2 as pe
import virnucpro.models.fp8 as f8
from virnucpro.bench import _errors, packed_embed
from virnucpro.data.loader import Vocabulary
from virnucpro.data.synthetic import make_sequences
from virnucpro.models.weights import ARCHITECTURES, random_state_dict
torch.set_num_threads(2)
spec = ARCHITECTURES[sys.argv[1]]
seqs = [s.encode() for s in make_sequences(40, 1, "seed-mix")[1][:20] + make_sequences(60, 1, "short-reads")[1]]
calib = [s.encode() for s in make_sequences(100, 7, "seed-mix")[1][:30] + make_sequences(200, 7, "short-reads")[1]]
lengths = np.array([len(s) for s in seqs]); vocab = Vocabulary.esm2()
state = dict(random_state_dict(spec, 0))
m32 = pe.PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, "cpu", torch.float32)
ref = packed_embed(m32, seqs, 4096, torch.device("cpu"))
sums = {}
orig = F.linear
def rec(x, w, b=None):
    s = sums.setdefault(id(w), [0, 0.0])
    s[0] += x.shape[0]; s[1] = s[1] + x.float().sum(0)
    return orig(x, w, b)
F.linear = rec
packed_embed(m32, calib, 4096, torch.device("cpu"))
F.linear = orig
m8 = pe.PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, "cpu", f8.E4M3)
got = packed_embed(m8, seqs, 4096, torch.device("cpu"))
e = _errors(got, ref, lengths); print("plain", round(e["median"],4), round(e["max"],4), round(e["cosine_min"],5), flush=True)
with torch.no_grad():
    for l32, l8 in zip(m32.layers, m8.layers):
        for name in ("qkv", "out", "fc1", "fc2"):
            a, b = getattr(l32, name), getattr(l8, name)
            n, s = sums[id(a.weight)]
            mu = s / n
            deq = b.weight.float() * b.weight_scale.reshape(-1, 1)
            corr = (deq - a.weight) @ mu
            b.bias.copy_((a.bias - corr).to(b.bias.dtype))
got = packed_embed(m8, seqs, 4096, torch.device("cpu"))
e = _errors(got, ref, lengths); print("bias-corrected", round(e["median"],4), round(e["max"],4), round(e["cosine_min"],5), flush=True)
