"""Benchmarks (not tests): `virnucpro bench accuracy`, `engines` and `peers`.

accuracy: this engine at fp16/bf16 against fair-esm's own ESM2 forward at fp32 on the same (random) weights;
prints the distribution of per-sequence relative L2 errors.
engines: in one process, the matmul ceiling, fair-esm fp16 with length-sorted token batches (its
`get_batch_indices`), and this engine end to end (`virnucpro embed`: FASTA, packing, forward, pooling, HDF5)
on the seed-mix and short-reads workloads; one table of tokens/s, % of ceiling and ratios.
peers: fair-esm fp16 and fp32 (extract.py recipe) and Hugging Face `EsmModel` (SDPA, needs transformers) on the
same weights, with a cross-check that they agree.
Run on a GPU (the device machine); on CPU they work but mean little.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from virnucpro.data.fasta import write_fasta
from virnucpro.data.loader import Vocabulary, collate
from virnucpro.data.synthetic import make_sequences
from virnucpro.models.packed_esm2 import PackedESM2
from virnucpro.models.weights import ARCHITECTURES, random_state_dict

FLOPS_PER_PARAM_TOKEN = 2


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fair_esm_model(spec, state, device, dtype):
    from esm.model.esm2 import ESM2

    with torch.device(device):
        model = ESM2(num_layers=spec.num_layers, embed_dim=spec.embed_dim, attention_heads=spec.attention_heads,
                     token_dropout=spec.token_dropout)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("lm_head", "contact_head")) or k.endswith("rot_emb.inv_freq") for k in missing), missing
    return model.to(dtype).eval()


def sorted_batches_embed(forward, dim: int, alphabet, seqs: list[str], toks_per_batch: int,
                        device) -> tuple[np.ndarray, int]:
    """fair-esm's extract.py batching (length-sorted token batches, padded) around `forward(toks) -> (B, L, D)`;
    returns the residue-mean embeddings and the tokens run."""
    from esm.data import FastaBatchedDataset

    ds = FastaBatchedDataset([str(i) for i in range(len(seqs))], seqs)
    batches = ds.get_batch_indices(toks_per_batch, extra_toks_per_seq=1)
    convert = alphabet.get_batch_converter(truncation_seq_length=1022)
    out = np.zeros((len(seqs), dim), dtype=np.float32)
    tokens_run = 0
    with torch.inference_mode():
        for b in batches:
            _, strs, toks = convert([(str(i), seqs[i]) for i in b])
            toks = toks.to(device, non_blocking=True)
            tokens_run += sum(min(len(s), 1022) + 2 for s in strs)
            rep = forward(toks)
            for j, i in enumerate(b):
                n = min(len(seqs[i]), 1022)
                out[i] = rep[j, 1 : n + 1].float().mean(0).cpu().numpy()
    return out, tokens_run


def fair_esm_embed(model, alphabet, seqs: list[str], toks_per_batch: int, device) -> tuple[np.ndarray, int]:
    """fair-esm's extract.py recipe, last layer."""
    layer = model.num_layers
    return sorted_batches_embed(lambda toks: model(toks, repr_layers=[layer])["representations"][layer],
                                model.embed_dim, alphabet, seqs, toks_per_batch, device)


def hf_esm_model(spec, state, device, dtype):
    """Hugging Face `EsmModel` (SDPA attention) with the same weights, fair-esm names mapped to HF's."""
    from transformers import EsmConfig, EsmModel

    cfg = EsmConfig(vocab_size=spec.vocab_size, hidden_size=spec.embed_dim, num_hidden_layers=spec.num_layers,
                    num_attention_heads=spec.attention_heads, intermediate_size=4 * spec.embed_dim,
                    position_embedding_type="rotary", token_dropout=spec.token_dropout, mask_token_id=32,
                    pad_token_id=1, emb_layer_norm_before=False, layer_norm_eps=1e-5, max_position_embeddings=1026)
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        model = EsmModel(cfg, add_pooling_layer=False)
    names = {"embed_tokens.weight": "embeddings.word_embeddings.weight",
             "emb_layer_norm_after.weight": "encoder.emb_layer_norm_after.weight",
             "emb_layer_norm_after.bias": "encoder.emb_layer_norm_after.bias"}
    parts = {"self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
             "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
             "self_attn_layer_norm": "attention.LayerNorm", "fc1": "intermediate.dense", "fc2": "output.dense",
             "final_layer_norm": "LayerNorm"}
    for i in range(spec.num_layers):
        for theirs, hf in parts.items():
            for t in ("weight", "bias"):
                names[f"layers.{i}.{theirs}.{t}"] = f"encoder.layer.{i}.{hf}.{t}"
    hf_state = {names[k]: v for k, v in state.items() if k in names}
    missing, unexpected = model.load_state_dict(hf_state, strict=False)
    assert not unexpected and all(("rotary" in k or "position" in k or "contact_head" in k) for k in missing), missing
    return model.to(dtype).eval()


def hf_embed(model, alphabet, seqs: list[str], toks_per_batch: int, device) -> tuple[np.ndarray, int]:
    """The same batches as fair-esm's recipe, through `EsmModel` with an attention mask."""
    return sorted_batches_embed(
        lambda toks: model(input_ids=toks, attention_mask=(toks != alphabet.padding_idx)).last_hidden_state,
        model.config.hidden_size, alphabet, seqs, toks_per_batch, device)


def peers(model_name: str, device: torch.device, seed_mix_n: int, short_reads_n: int, fp32_n: int) -> dict:
    """fair-esm fp16 and fp32 (extract.py recipe) and Hugging Face EsmModel fp16 (SDPA) on the same weights."""
    from esm.data import Alphabet

    spec = ARCHITECTURES[model_name]
    state = random_state_dict(spec, 0, device)
    alphabet = Alphabet.from_architecture("ESM-1b")
    result = {"model": model_name, "runs": []}
    workloads = {p: make_sequences(n, 1, p)[1] for p, n in (("seed-mix", seed_mix_n), ("short-reads", short_reads_n))}
    engines = (("fair-esm fp16, sorted 16384-token batches", lambda: fair_esm_model(spec, state, device, torch.float16),
                fair_esm_embed, 16384, None),
               ("HF EsmModel sdpa fp16, sorted 16384-token batches", lambda: hf_esm_model(spec, state, device,
                                                                                        torch.float16),
                hf_embed, 16384, None),
               ("fair-esm fp32, extract.py 4096-token batches", lambda: fair_esm_model(spec, state, device,
                                                                                       torch.float32),
                fair_esm_embed, 4096, fp32_n))
    reference = {}
    for name, build, embed, toks_per_batch, limit in engines:
        model = build()
        for profile, seqs in workloads.items():
            sub = seqs[:limit] if limit else seqs
            embed(model, alphabet, sub[:100], toks_per_batch, device)  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            emb, toks = embed(model, alphabet, sub, toks_per_batch, device)
            _sync(device)
            dt = time.perf_counter() - t0
            row = {"engine": name, "workload": profile, "sequences": len(sub), "tokens_per_sec": toks / dt,
                   "sequences_per_sec": len(sub) / dt}
            if profile not in reference:
                reference[profile] = emb
            else:  # same weights: the peers must agree (checks the HF name mapping too)
                k = min(len(emb), len(reference[profile]))
                a, b = emb[:k], reference[profile][:k]
                row["max_rel_diff_vs_fair_fp16"] = float((np.linalg.norm(a - b, axis=1)
                                                          / np.linalg.norm(b, axis=1)).max())
            result["runs"].append(row)
            print(row, flush=True)
        del model
        torch.cuda.empty_cache()
    return result


def packed_embed(model: PackedESM2, seqs: list[bytes], token_budget: int, device) -> np.ndarray:
    from virnucpro.data.packing import pack_batches

    vocab = Vocabulary.esm2()
    out = np.zeros((len(seqs), model.spec.embed_dim), dtype=np.float32)
    with torch.inference_mode():
        for b in pack_batches([len(s) for s in seqs], token_budget, 10_000):
            pb = collate(seqs, b, vocab).to(device)
            out[pb.indices.numpy()] = model.embed(pb).cpu().numpy()
    return out


def accuracy(model_name: str, num_sequences: int, seed: int, device: torch.device) -> dict:
    from esm.data import Alphabet

    spec = ARCHITECTURES[model_name]
    state = random_state_dict(spec, seed, device)
    _, seqs = make_sequences(num_sequences, seed, "seed-mix")
    rng = np.random.default_rng(seed)
    seqs += ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)) for n in (1, 2, 1021, 1022)] + ["MKXBZUOAXXC"]
    ref_model = fair_esm_model(spec, state, device, torch.float32)
    ref, _ = fair_esm_embed(ref_model, Alphabet.from_architecture("ESM-1b"), seqs, 8192, device)
    del ref_model
    vocab = Vocabulary.esm2()
    result = {"model": model_name, "weights": f"random (seed {seed})", "num_sequences": len(seqs),
              "reference": "fair-esm ESM2 fp32 on the same weights", "device": str(device)}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        model = PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, device, dtype)
        got = packed_embed(model, [s.encode() for s in seqs], 16384, device)
        err = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
        result[name] = {"median": float(np.median(err)), "p99": float(np.quantile(err, 0.99)),
                        "max": float(err.max()), "finite": bool(np.isfinite(got).all())}
        del model
    return result


def matmul_ceiling(device, dtype=torch.bfloat16, n=8192, reps=20) -> float:
    """Measured dense matmul TFLOP/s (median of `reps`, events-timed)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e12


def flops_per_token(spec, mean_len: float) -> float:
    d, L = spec.embed_dim, spec.num_layers
    params = L * 12 * d * d
    return FLOPS_PER_PARAM_TOKEN * params + L * 4 * mean_len * d


def engines(model_name: str, workdir: Path, device: torch.device, seed_mix_n: int, short_reads_n: int,
            fair_subset: int, token_budget: int) -> dict:
    import subprocess
    import sys

    from esm.data import Alphabet

    spec = ARCHITECTURES[model_name]
    workdir.mkdir(parents=True, exist_ok=True)
    ceiling = matmul_ceiling(device)
    rows = {"matmul_tflops_bf16": ceiling, "model": model_name, "runs": []}
    state = random_state_dict(spec, 0, device)
    fair = fair_esm_model(spec, state, device, torch.float16)
    del state
    alphabet = Alphabet.from_architecture("ESM-1b")
    for profile, n in (("seed-mix", seed_mix_n), ("short-reads", short_reads_n)):
        ids, seqs = make_sequences(n, 1, profile)
        fasta = workdir / f"{profile}.fa"
        write_fasta(fasta, ids, seqs)
        mean_tokens = statistics.fmean(len(s) + 2 for s in seqs)
        ceiling_tps = ceiling * 1e12 / flops_per_token(spec, mean_tokens)
        sub = seqs[: fair_subset]
        fair_esm_embed(fair, alphabet, sub[:200], 16384, device)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        _, toks = fair_esm_embed(fair, alphabet, sub, 16384, device)
        _sync(device)
        dt = time.perf_counter() - t0
        rows["runs"].append({"engine": "fair-esm fp16, sorted 16384-token batches", "workload": profile,
                             "sequences": len(sub), "tokens_per_sec": toks / dt, "sequences_per_sec": len(sub) / dt,
                             "pct_ceiling": 100 * toks / dt / ceiling_tps})
        for precision in ("bf16", "fp16"):
            out = workdir / f"out-{profile}-{precision}"
            cmd = [sys.executable, "-m", "virnucpro.cli", "embed", str(fasta), "-o", str(out), "--model", model_name,
                   "--random-weights", "--precision", precision, "--token-budget", str(token_budget)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            wall = time.perf_counter() - t0
            summary = json.loads((out / "status.json").read_text())["summary"]
            tps = summary["avg_tokens_per_sec"]
            rows["runs"].append({"engine": f"virnucpro packed {precision} (embed, end to end)", "workload": profile,
                                 "sequences": n, "tokens_per_sec": tps,
                                 "sequences_per_sec": summary["avg_sequences_per_sec"],
                                 "pct_ceiling": 100 * tps / ceiling_tps, "process_wall_seconds": wall,
                                 "peak_memory_gb": summary.get("peak_memory_gb")})
        rows[f"ceiling_tokens_per_sec_{profile}"] = ceiling_tps
    return rows


def print_table(result: dict) -> None:
    print(f"matmul ceiling bf16: {result['matmul_tflops_bf16']:.0f} TFLOP/s")
    best_peer = {}
    for r in result["runs"]:
        if r["engine"].startswith("fair-esm"):
            best_peer[r["workload"]] = max(best_peer.get(r["workload"], 0), r["tokens_per_sec"])
    print(f"{'engine':48s} {'workload':12s} {'tok/s':>10s} {'seq/s':>9s} {'%ceil':>6s} {'x peer':>7s}")
    for r in result["runs"]:
        ratio = r["tokens_per_sec"] / best_peer[r["workload"]] if best_peer.get(r["workload"]) else float("nan")
        print(f"{r['engine']:48s} {r['workload']:12s} {r['tokens_per_sec']:10,.0f} {r['sequences_per_sec']:9,.1f} "
              f"{r['pct_ceiling']:6.1f} {ratio:7.2f}")
