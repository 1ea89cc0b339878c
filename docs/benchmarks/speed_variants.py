"""Model-only throughput and accuracy of forward variants of the packed ESM-2 3B (issue 6), with a kernel breakdown.

Run on the GPU machine (fair-esm on PYTHONPATH for the accuracy part):
    PYTHONPATH=scripts python docs/benchmarks/speed_variants.py OUT_DIR [OLD_MODULE.py]
Batches are packed from the short-reads and seed-mix workloads, padded to the token budget and put on the GPU
first, so this measures the forward alone (the runner adds the loader and the read-back, both asynchronous).
"fused-attn" uses the fused rotary+attention kernel where the engine does (batches of segments <= 64 tokens).
Each variant: 3 warm-up batches, then the median of 3 timed passes over 12 batches (CUDA events). Accuracy:
per-sequence relative L2 error of the mean-pooled last layer against fair-esm's ESM2 in fp32, same weights.
OLD_MODULE (optional) is a previous packed_esm2.py, timed and checked the same way for comparison.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from virnucpro.data.loader import Vocabulary, collate
from virnucpro.data.packing import pack_batches
from virnucpro.data.synthetic import make_sequences
from virnucpro.models import packed_esm2 as pe
from virnucpro.models.weights import ARCHITECTURES, random_state_dict

BUDGET = 16384


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


def profile_ms(run, batch) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(batch)
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t:
            rows.append((e.key, t / 1000, e.count))
    rows.sort(key=lambda r: -r[1])
    return {"total_kernel_ms": sum(r[1] for r in rows),
            "top": [{"kernel": k[:120], "ms": ms, "count": c} for k, ms, c in rows[:16]]}


def main(out_dir: Path, old_module: Path | None) -> None:
    from virnucpro.bench import fair_esm_embed, fair_esm_model, packed_embed

    out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    spec = ARCHITECTURES["esm2_t36_3B_UR50D"]
    vocab = Vocabulary.esm2()
    state = random_state_dict(spec, 0, dev)
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "budget": BUDGET}

    def save():
        (out_dir / "speed_variants.json").write_text(json.dumps(results, indent=2))

    # accuracy reference: fair-esm fp32
    from esm.data import Alphabet

    _, acc_seqs = make_sequences(200, 0, "seed-mix")
    _, short = make_sequences(100, 0, "short-reads")
    rng = np.random.default_rng(0)
    acc_seqs += short + ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)) for n in (1, 2, 1021, 1022)]
    ref_model = fair_esm_model(spec, state, dev, torch.float32)
    ref, _ = fair_esm_embed(ref_model, Alphabet.from_architecture("ESM-1b"), acc_seqs, 8192, dev)
    # the same in fp32 but with the weights rounded to bf16: what is left is the arithmetic's own error
    with torch.no_grad():
        for p_ in ref_model.parameters():
            p_.copy_(p_.to(torch.bfloat16).float())
    ref_bf16w, _ = fair_esm_embed(ref_model, Alphabet.from_architecture("ESM-1b"), acc_seqs, 8192, dev)
    del ref_model
    acc_lens = np.array([len(s_) for s_ in acc_seqs])
    torch.cuda.empty_cache()

    workloads = {}
    for profile in ("short-reads", "seed-mix"):
        _, seqs = make_sequences(8000 if profile == "short-reads" else 2000, 1, profile)
        raw = [s.encode() for s in seqs]
        plan = pack_batches([len(s) for s in raw], BUDGET, 5000)[:12]
        batches = [collate(raw, b, vocab, BUDGET).to(dev) for b in plan]
        workloads[profile] = (batches, sum(b.num_tokens for b in batches) / len(batches))

    # Which GELU does cuBLASLt's fused epilogue compute? Outputs in [2.4, 3.0], where erf and tanh forms differ by
    # ~4e-4: the mean signed difference to each form averages the output rounding away.
    z = torch.rand(1 << 20, 16, device=dev).to(torch.bfloat16)
    w = torch.full((64, 16), 1 / 16, device=dev, dtype=torch.bfloat16)
    b = torch.full((64,), 2.4, device=dev, dtype=torch.bfloat16)
    fused = torch._addmm_activation(b, z, w.t(), use_gelu=True).double()
    lin = F.linear(z.double(), w.double(), b.double())
    results["gelu_epilogue_mean_diff"] = {"vs_erf": float((fused - F.gelu(lin)).mean()),
                                          "vs_tanh": float((fused - F.gelu(lin, approximate="tanh")).mean())}
    print("gelu epilogue", results["gelu_epilogue_mean_diff"], flush=True)
    del z, fused, lin

    # the fused rotary attention kernel against rotate_qk + padded attention (fp32 math on the same bf16 input)
    from virnucpro.models import triton_attention as ta
    from virnucpro.models.attention import padded_attention, varlen_attention

    checks = []
    for trial, lens in enumerate(([1, 2, 3, 50, 64, 65, 200, 1024, 7], list(rng.integers(1, 1025, 40)),
                                  list(rng.integers(20, 53, 300)))):
        H, D = spec.attention_heads, spec.head_dim
        cu = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32, device=dev)
        T, max_len = int(cu[-1]), int(max(lens))
        qkv = torch.randn(T, 3 * H * D, device=dev, dtype=torch.bfloat16)
        positions = torch.cat([torch.arange(n, device=dev) for n in lens])
        seq_ids = torch.cat([torch.full((n,), i, device=dev) for i, n in enumerate(lens)])
        freqs = positions.float()[:, None] * pe.rotary_inv_freq(D, dev)[None, :]
        emb = torch.cat((freqs, freqs), -1)[:, None, :]
        q, k = pe.rotate_qk(qkv, emb.cos(), emb.sin(), H)
        v = qkv.view(T, 3, H, D)[:, 2]
        exact = padded_attention(q.float(), k.float(), v.float(), cu, max_len, positions, seq_ids)
        tables = ta.rotary_tables(pe.rotary_inv_freq(D, dev), 1024)
        out = ta.rotary_varlen_attention(qkv, cu, max_len, tables, H).float()
        flash = varlen_attention(q, k, v, cu, max_len).float()
        rel = lambda a: float((a - exact).norm() / exact.norm())  # noqa: E731
        checks.append({"lengths": len(lens), "max_len": max_len, "triton_rel_err": rel(out),
                       "flash_rel_err": rel(flash), "triton_finite": bool(torch.isfinite(out).all())})
    results["fused_attention_check"] = checks
    print("fused attention check", checks, flush=True)

    # the kernel's block shapes, on one batch of each workload (qkv random, the batch's segments)
    import triton.testing

    sweep = {}
    for profile, (batches, _) in workloads.items():
        bt = batches[0]
        qkv = torch.randn(bt.tokens.numel(), 3 * spec.embed_dim, device=dev, dtype=torch.bfloat16)
        tables = ta.rotary_tables(pe.rotary_inv_freq(spec.head_dim, dev), 1024)
        for cfg in ((64, 32, 4, 2), (64, 64, 4, 3), (64, 32, 4, 3), (64, 16, 4, 2), (128, 64, 8, 2), (128, 64, 8, 3),
                    (128, 32, 8, 2), (128, 64, 4, 2), (128, 128, 8, 2)):
            ms = triton.testing.do_bench(lambda: ta.rotary_varlen_attention(qkv, bt.cu_seqlens, bt.max_len, tables,
                                                                            spec.attention_heads, cfg),
                                         return_mode="median")
            sweep[f"{profile} {cfg}"] = ms
        q = torch.randn(bt.tokens.numel(), spec.attention_heads, spec.head_dim, device=dev, dtype=torch.bfloat16)
        sweep[f"{profile} flash-attention-2 alone"] = triton.testing.do_bench(
            lambda: varlen_attention(q, q, q, bt.cu_seqlens, bt.max_len), return_mode="median")
        cos = torch.randn(bt.tokens.numel(), 1, spec.head_dim, device=dev)
        rotate = torch.compile(pe.rotate_qk, dynamic=False)
        sweep[f"{profile} compiled rotary alone"] = triton.testing.do_bench(
            lambda: rotate(qkv, cos, cos, spec.attention_heads), return_mode="median")
    results["fused_attention_block_sweep_ms"] = sweep
    print(*[f"{k:40s} {v:.3f} ms" for k, v in sweep.items()], sep="\n", flush=True)
    save()

    modules = {"new": pe}
    if old_module is not None:
        spec_ = importlib.util.spec_from_file_location("old_packed_esm2", old_module)
        old = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(old)
        modules["old"] = old

    def opts(tanh: bool, fused: bool) -> dict:
        return {"tanh_gelu_epilogue": tanh, "fused_attention": fused}

    variants = [("old", "bf16", {}), ("new", "bf16", opts(False, False)), ("new", "bf16", opts(True, False)),
                ("new", "bf16", opts(True, True)), ("new", "bf16", opts(False, True)),
                ("new", "fp16", opts(True, True)), ("new", "fp16", opts(False, True)), ("old", "bf16", {})]
    for mod_name, precision, kw in variants:
        if mod_name not in modules:
            continue
        name = f"{mod_name} {precision}" + (" tanh-gelu" if kw.get("tanh_gelu_epilogue") else "")
        if mod_name == "new":
            name += " fused-attn" if kw["fused_attention"] else " flash"
        if name in results:
            name += " (again)"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        model = modules[mod_name].PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, dev, dtype)
        model.compile_kernels(**kw)
        row = {}
        for profile, (batches, real) in workloads.items():
            row[profile] = timed(model.embed, batches, real)
            print(name, profile, f"{row[profile]['tokens_per_sec']:,.0f} tok/s",
                  f"{row[profile]['ms_per_batch']:.1f} ms/batch", flush=True)
        got = packed_embed(model, [s.encode() for s in acc_seqs], BUDGET, dev, BUDGET)
        err = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
        row["accuracy_vs_fair_esm_fp32"] = {"median": float(np.median(err)), "p99": float(np.quantile(err, 0.99)),
                                            "max": float(err.max()), "finite": bool(np.isfinite(got).all()),
                                            "sequences": len(acc_seqs), "worst_length": int(acc_lens[err.argmax()]),
                                            "max_over_length_ge_20": float(err[acc_lens >= 20].max())}
        if precision == "bf16":
            err_w = np.linalg.norm(got - ref_bf16w, axis=1) / np.linalg.norm(ref_bf16w, axis=1)
            row["accuracy_vs_fair_esm_fp32_bf16_weights"] = {"median": float(np.median(err_w)),
                                                             "max": float(err_w.max())}
        print(name, "rel L2 err", row["accuracy_vs_fair_esm_fp32"], flush=True)
        if precision == "bf16":
            row["profile_short_reads"] = profile_ms(model.embed, workloads["short-reads"][0][0])
            print(name, "kernel ms", *[f"{t['ms']:8.2f} {t['count']:4d} {t['kernel'][:90]}"
                                       for t in row["profile_short_reads"]["top"]], sep="\n", flush=True)
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1024**3
        results[name] = row
        save()
        del model
        torch.cuda.empty_cache()
    print(f"{'variant':28s} {'short tok/s':>12s} {'seed tok/s':>12s} {'err med':>9s} {'err max':>9s}")
    for name, row in results.items():
        if isinstance(row, dict) and "short-reads" in row:
            a = row["accuracy_vs_fair_esm_fp32"]
            print(f"{name:28s} {row['short-reads']['tokens_per_sec']:12,.0f} {row['seed-mix']['tokens_per_sec']:12,.0f}"
                  f" {a['median']:9.2e} {a['max']:9.2e}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
