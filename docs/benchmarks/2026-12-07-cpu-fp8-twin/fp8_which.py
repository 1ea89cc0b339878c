# Issue 17 CPU-twin experiment (docs/benchmarks/README.md, 'Issue 17'). Run: PYTHONPATH=scripts python fp8_which.py esm2_t12_35M_UR50D
import sys, numpy as np, torch
import virnucpro.models.packed_esm2 as pe
import virnucpro.models.fp8 as f8
from virnucpro.bench import _errors, packed_embed
from virnucpro.data.loader import Vocabulary
from virnucpro.data.synthetic import make_sequences
from virnucpro.models.weights import ARCHITECTURES, random_state_dict
torch.set_num_threads(2)
spec = ARCHITECTURES[sys.argv[1]]
seqs = [s.encode() for s in make_sequences(40, 1, "seed-mix")[1][:20] + make_sequences(60, 1, "short-reads")[1]]
lengths = np.array([len(s) for s in seqs]); vocab = Vocabulary.esm2()
state = dict(random_state_dict(spec, 0))
m = pe.PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, "cpu", torch.float32)
ref = packed_embed(m, seqs, 4096, torch.device("cpu"))
orig = {id(l): {n: getattr(l, n).weight.detach().clone() for n in ("qkv","out","fc1","fc2")} for l in m.layers}
for sel in (("qkv",), ("out",), ("fc1",), ("fc2",), ("qkv","out","fc1","fc2")):
    with torch.no_grad():
        for l in m.layers:
            for n in ("qkv","out","fc1","fc2"):
                w = orig[id(l)][n]
                if n in sel:
                    w8, s = f8.quantise_weight(w); w = w8.float() * s.reshape(-1,1)
                getattr(l, n).weight.copy_(w)
    got = packed_embed(m, seqs, 4096, torch.device("cpu"))
    e = _errors(got, ref, lengths); print(sel, round(e["median"],4), round(e["cosine_min"],5), flush=True)
