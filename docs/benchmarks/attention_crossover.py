"""Per batch of the seed-mix workload: the attention paths of the packed ESM-2 3B (issue 6), to place
`ROTATE_KEYS_MAX_LEN` and choose the Triton kernel's block shapes.

Run on the GPU machine:  PYTHONPATH=scripts python docs/benchmarks/attention_crossover.py
Paths: compiled rotary of q and k, then FlashAttention-2 ("flash"); the Triton kernel rotating q and k itself
("fused", per block config); compiled rotary of k alone, then the Triton kernel rotating q ("rotk", per config).
ESM-2 3B shapes (40 heads of 64), 16,384-token batches padded as the runner pads them, random bf16 projections.
Median ms of do_bench (CUDA events) for one layer's attention.
"""

import torch
import triton.testing

from virnucpro.data.loader import Vocabulary, collate
from virnucpro.data.packing import pack_batches
from virnucpro.data.synthetic import make_sequences
from virnucpro.models import packed_esm2 as pe
from virnucpro.models import triton_attention as ta
from virnucpro.models.attention import varlen_attention

H, DH, BUDGET = 40, 64, 16384
_, seqs = make_sequences(6000, 1, "seed-mix")
raw = [s.encode() for s in seqs]
plan = pack_batches([len(s) for s in raw], BUDGET, 20_000)
tables = ta.rotary_tables(pe.rotary_inv_freq(DH, "cuda"), 1024)
rotate = torch.compile(pe.rotate_qk, dynamic=False)
rotate_k = torch.compile(pe.rotate_k, dynamic=False)
fused_cfgs = ((64, 32, 4, 2), (128, 64, 8, 3))
rotk_cfgs = ((64, 32, 4, 2), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3))
names = ["flash"] + [f"fused {c}" for c in fused_cfgs] + [f"rotk {c}" for c in rotk_cfgs]
print(f"{'max_len':>7s} {'segs':>5s} " + " ".join(f"{n[:22]:>22s}" for n in names))
for b in plan[:: max(1, len(plan) // 24)]:
    bt = collate(raw, b, Vocabulary.esm2(), BUDGET).to("cuda")
    qkv = torch.randn(BUDGET, 3 * H * DH, device="cuda", dtype=torch.bfloat16)
    freqs = bt.positions.float()[:, None] * pe.rotary_inv_freq(DH, "cuda")[None, :]
    emb = torch.cat((freqs, freqs), -1)[:, None, :]
    cos, sin = emb.cos(), emb.sin()

    def flash():
        q, k = rotate(qkv, cos, sin, H)
        return varlen_attention(q, k, qkv.view(BUDGET, 3, H, DH)[:, 2], bt.cu_seqlens, bt.max_len)

    def fused(cfg):
        return lambda: ta.rotary_varlen_attention(qkv, bt.cu_seqlens, bt.max_len, tables, H, cfg)

    def rotk(cfg):
        return lambda: ta.rotary_varlen_attention(qkv, bt.cu_seqlens, bt.max_len, tables, H, cfg,
                                                  rotated_keys=rotate_k(qkv, cos, sin, H))

    fns = [flash] + [fused(c) for c in fused_cfgs] + [rotk(c) for c in rotk_cfgs]
    ref = flash().float()
    errs = [float((f().float() - ref).norm() / ref.norm()) for f in fns[1:]]
    assert max(errs) < 1e-2, errs
    row = [triton.testing.do_bench(f, return_mode="median") for f in fns]
    print(f"{bt.max_len:7d} {bt.cu_seqlens.numel() - 1:5d} " + " ".join(f"{x:22.3f}" for x in row), flush=True)
