# Issue 17 CPU-twin experiment (docs/benchmarks/README.md, 'Issue 17'). Run: PYTHONPATH=scripts python fp8_variants.py esm2_t12_35M_UR50D
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
ref = packed_embed(pe.PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, "cpu", torch.float32), seqs, 4096, torch.device("cpu"))
orig_q = f8.quantise_rows
def identity_q(x):  # activations unquantised: pass through fp32 with unit scale (emulated path only)
    return x.float(), torch.ones(x.shape[0], 1)
def emul(x8, sx, w8, sw, bias):
    out = (x8.float() @ w8.float().t()) * sx * sw
    return (out + bias.float()).to(torch.bfloat16)
pe.fp8_linear = emul
for label in ("both", "weights_only", "acts_only"):
    pe.quantise_rows = identity_q if label == "weights_only" else orig_q
    pe.KERNELS.update(quantise=pe.quantise_rows)
    pe.quantise_weight = (lambda w: (w.float(), torch.ones(1, w.shape[0]))) if label == "acts_only" else f8.quantise_weight
    # residual_norm_fp8 and gelu_quantise call quantise_rows from their module globals
    m = pe.PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, "cpu", f8.E4M3) if label != "acts_only" else None
    if label == "acts_only":
        # build fp8-layout model then overwrite weights with fp32 values (weights unquantised)
        m = pe.PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, "cpu", torch.float32)
        for layer in m.layers:
            for lin in (layer.qkv, layer.out, layer.fc1, layer.fc2):
                lin.register_buffer("weight_scale", torch.ones(1, lin.out_features))
        m.compute_dtype = torch.bfloat16
        import types
        # force fp8 branch: represent checks qkv.weight.dtype == E4M3; emulate by patching E4M3 name check
        pe.E4M3_saved = pe.E4M3; pe.E4M3 = torch.float32
    got = packed_embed(m, seqs, 4096, torch.device("cpu"))
    if label == "acts_only": pe.E4M3 = pe.E4M3_saved
    e = _errors(got, ref, lengths)
    print(label, round(e["median"], 4), round(e["max"], 4), round(e["cosine_min"], 5), flush=True)
