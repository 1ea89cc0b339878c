# Issue 17 CPU-twin experiment (docs/benchmarks/README.md, 'Issue 17'). Run: PYTHONPATH=scripts python fp8_cpu.py esm2_t12_35M_UR50D
import sys, time, numpy as np, torch
from virnucpro.bench import _errors, packed_embed
from virnucpro.data.loader import Vocabulary
from virnucpro.data.synthetic import make_sequences
from virnucpro.models.fp8 import E4M3
from virnucpro.models.packed_esm2 import PackedESM2
from virnucpro.models.weights import ARCHITECTURES, OutlierStateDict, random_state_dict
torch.set_num_threads(2)
name = sys.argv[1]
spec = ARCHITECTURES[name]
seqs = [s.encode() for s in make_sequences(40, 1, "seed-mix")[1][:20] + make_sequences(60, 1, "short-reads")[1]]
lengths = np.array([len(s) for s in seqs])
vocab = Vocabulary.esm2()
for outl in (None, (4, 30.0)):
    state = dict(random_state_dict(spec, 0))
    if outl: state = OutlierStateDict(state, spec.embed_dim, *outl, seed=0)
    res = {}
    for label, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp8", E4M3)):
        m = PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, "cpu", dt)
        res[label] = packed_embed(m, seqs, 4096, torch.device("cpu"))
    for label in ("bf16", "fp8"):
        e = _errors(res[label], res["fp32"], lengths)
        print(name, outl, label, {k: round(v, 5) if isinstance(v, float) else v for k, v in e.items()}, flush=True)
