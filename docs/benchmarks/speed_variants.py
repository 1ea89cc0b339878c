"""Model-only throughput of compile variants of the packed ESM-2 forward (issue 6), plus a kernel breakdown.

Run on the GPU machine:  PYTHONPATH=scripts python docs/benchmarks/speed_variants.py OUT_DIR
Batches are packed from the short-reads workload, padded to the token budget and put on the GPU first, so
this measures the forward alone (the end-to-end runner adds the loader and read-back, both asynchronous).
Each variant: 3 warm-up batches, then the median of 3 timed passes over 12 batches (CUDA events). Variants A
(dense kernels compiled: what the runner does) and B (same, max-autotune), C (one compiled graph per layer), E/F
(C / C max-autotune, the whole forward captured as one CUDA graph).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from virnucpro.data.loader import Vocabulary, collate
from virnucpro.data.packing import pack_batches
from virnucpro.data.synthetic import make_sequences
from virnucpro.models import packed_esm2 as pe
from virnucpro.models.attention import varlen_attention
from virnucpro.models.weights import ARCHITECTURES, random_state_dict

BUDGET = 16384
POOL = None  # one memory pool shared by every captured graph (set in main)


def whole_layer(x, ln1_w, ln1_b, qkv_w, qkv_b, out_w, out_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b, cos, sin,
                cu_seqlens, heads: int, max_len: int):
    """One graph per layer: dense parts and the varlen attention together."""
    q, k, v = pe.attention_inputs(x, ln1_w, ln1_b, qkv_w, qkv_b, cos, sin, heads)
    a = varlen_attention(q, k, v, cu_seqlens, max_len)
    return pe.attention_output_and_mlp(x, a, out_w, out_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b)


def layers_forward(model, fn, tokens, positions, cu_seqlens, max_len=1024):
    x = model.embed_tokens(tokens) * pe.TOKEN_DROPOUT_SCALE
    freqs = positions.float()[:, None] * model.inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    cos, sin = emb.cos(), emb.sin()
    for L in model.layers:
        x = fn(x, L.ln1.weight, L.ln1.bias, L.qkv.weight, L.qkv.bias, L.out.weight, L.out.bias, L.ln2.weight,
               L.ln2.bias, L.fc1.weight, L.fc1.bias, L.fc2.weight, L.fc2.bias, cos, sin, cu_seqlens, L.heads, max_len)
    return F.layer_norm(x, (x.shape[-1],), model.emb_layer_norm_after.weight, model.emb_layer_norm_after.bias,
                        pe.LAYER_NORM_EPS)


def forward_whole(model, fn, batch):
    return layers_forward(model, fn, batch.tokens, batch.positions, batch.cu_seqlens)


def graphed(model, fn, example, budget, slots=None, max_len=1024):
    """The whole forward + pooling captured as one CUDA graph; cu_seqlens padded with empty segments."""
    slots = slots or budget // 3 + 2
    tokens, positions, seq_ids = (torch.empty_like(t) for t in (example.tokens, example.positions, example.seq_ids))
    cu = torch.full((slots + 1,), budget, dtype=example.cu_seqlens.dtype, device=tokens.device)

    def fwd():
        x = layers_forward(model, fn, tokens, positions, cu, max_len)
        residue = ((tokens != model.cls_idx) & (tokens != model.eos_idx)).unsqueeze(-1)
        sums = torch.zeros(slots, x.shape[-1], device=x.device, dtype=torch.float32)
        sums.index_add_(0, seq_ids, torch.where(residue, x.float(), 0.0))
        lengths = (cu[1:] - cu[:-1] - 2).clamp_min(1).to(torch.float32)
        return sums / lengths[:, None]

    def load(batch):
        tokens.copy_(batch.tokens)
        positions.copy_(batch.positions)
        seq_ids.copy_(batch.seq_ids)
        n = batch.cu_seqlens.numel()
        cu[:n].copy_(batch.cu_seqlens)
        cu[n:].fill_(budget)

    load(example)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fwd()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=POOL):
        out = fwd()

    def run(batch):
        load(batch)
        graph.replay()
        return out[:batch.num_sequences]

    return run


def timed(run, batches, real_tokens) -> dict:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches[:3]:
            run(b)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        rates = []
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for b in batches:
                run(b)
            end.record()
            end.synchronize()
            rates.append(real_tokens * len(batches) / (start.elapsed_time(end) / 1000))
    return {"tokens_per_sec": statistics.median(rates), "runs": rates, "warmup_and_compile_s": compile_s,
            "ms_per_batch": real_tokens / statistics.median(rates) * 1000}


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    spec = ARCHITECTURES["esm2_t36_3B_UR50D"]
    vocab = Vocabulary.esm2()
    model = pe.PackedESM2.from_state_dict(spec, random_state_dict(spec, 0, dev), vocab.cls_idx, vocab.eos_idx, dev,
                                          torch.bfloat16)
    ids, seqs = make_sequences(6000, 1, "short-reads")
    raw = [s.encode() for s in seqs]
    plan = pack_batches([len(s) for s in raw], BUDGET, 5000)[:12]
    batches = [collate(raw, b, vocab, BUDGET).to(dev) for b in plan]
    real = sum(b.num_tokens for b in batches) / len(batches)
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "budget": BUDGET,
                     "real_tokens_per_batch": real}

    def save():
        (out_dir / "speed_variants.json").write_text(json.dumps(results, indent=2))

    model.compile_kernels()
    results["A_dense_kernels_compiled"] = timed(lambda b: model.embed(b), batches, real)
    print("A", results["A_dense_kernels_compiled"], flush=True)
    save()

    # kernel breakdown of variant A, one batch
    from torch.profiler import ProfilerActivity, profile
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        model.embed(batches[0])
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t:
            rows.append((e.key, t / 1000, e.count))
    rows.sort(key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    results["A_profile_ms"] = {"total_kernel_ms": total, "top": [{"kernel": k[:120], "ms": ms, "count": c}
                                                                  for k, ms, c in rows[:20]]}
    print("profile total", total, *[f"{ms:8.2f} {c:4d} {k[:100]}" for k, ms, c in rows[:20]], sep="\n", flush=True)
    save()

    with torch.inference_mode():
        reference = [model.embed(b) for b in batches[:2]]
    global POOL
    POOL = torch.cuda.graph_pool_handle()
    layer = torch.compile(whole_layer, dynamic=False)
    cache = {}

    def bucketed(batch):
        """One graph per (segments rounded up to 64, max length rounded up to a power of two >= 64)."""
        n = batch.cu_seqlens.numel() - 1
        key = (-(-n // 64) * 64, max(64, 1 << (int(batch.max_len) - 1).bit_length()))
        if key not in cache:
            cache[key] = graphed(model, layer, batch, BUDGET, slots=key[0], max_len=key[1])
        return cache[key](batch)

    with torch.inference_mode():
        err = max(float(((bucketed(b) - r).norm(dim=-1) / r.norm(dim=-1)).max()) for b, r in zip(batches, reference))
    results["G_cuda_graphs_bucketed"] = {**timed(bucketed, batches, real), "max_rel_diff_vs_A": err,
                                         "graphs": [list(k) for k in cache]}
    print("G", results["G_cuda_graphs_bucketed"], flush=True)
    save()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
