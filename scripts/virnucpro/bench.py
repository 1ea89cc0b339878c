"""Benchmarks (not tests): `virnucpro bench accuracy`, `engines` and `peers`.

accuracy: this engine at fp32/bf16/fp16 against fair-esm's own ESM2 forward at fp32 on the same (random)
weights; prints the distribution of per-sequence relative L2 errors.
engines: in one process, the matmul ceiling, the stock peers (below) and this engine end to end (`virnucpro
embed`: FASTA, packing, forward, pooling, HDF5) on the seed-mix and short-reads workloads; one table of
tokens/s, sequences/s, % of ceiling, peak memory and the ratio to each peer.
peers: only the peers: fair-esm fp16 and fp32 (extract.py recipe: length-sorted padded token batches) and
Hugging Face `EsmModel` (SDPA, needs transformers) on the same weights, with a check that they agree.
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
from virnucpro.utils.hardware import matmul_tflops
from virnucpro.utils.telemetry import steady_state


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fair_esm_model(spec, state, device, dtype):
    """fair-esm's ESM2 in `dtype` with `state` copied in tensor by tensor (a lazily generated state is never
    whole in memory: ESM-2 15B fits at fp32 on an 80 GB card this way)."""
    from esm.model.esm2 import ESM2

    with torch.device(device):
        model = ESM2(num_layers=spec.num_layers, embed_dim=spec.embed_dim, attention_heads=spec.attention_heads,
                     token_dropout=spec.token_dropout)
    load_tensors(model, state)
    return model.to(dtype).eval()


@torch.no_grad()
def load_tensors(model, state, transform=None) -> None:
    """Copy `state` into `model` one tensor at a time (optionally through `transform(name, tensor)`); every key
    must exist, and only the LM / contact heads and rotary frequencies may be left out."""
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not (
        k.startswith(("lm_head", "contact_head")) or k.endswith("rot_emb.inv_freq"))]
    assert not unexpected and not missing, (unexpected, missing)
    for name in state:
        t = state[name]
        own[name].copy_(transform(name, t) if transform else t)


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


PEERS = (("fair-esm fp16, sorted 16384-token batches", "fair", torch.float16, 16384),
         ("HF EsmModel sdpa fp16, sorted 16384-token batches", "hf", torch.float16, 16384),
         ("fair-esm fp32, extract.py 4096-token batches", "fair", torch.float32, 4096))


def peer_runs(spec, state, workloads: dict[str, list[str]], fp32_n: int, device) -> list[dict]:
    """fair-esm fp16 and fp32 (extract.py recipe) and Hugging Face EsmModel fp16 (SDPA) on the same weights,
    each on every workload (fp32 on its first `fp32_n` sequences), with a check that they agree."""
    from esm.data import Alphabet

    alphabet = Alphabet.from_architecture("ESM-1b")
    rows, reference = [], {}
    for name, kind, dtype, toks_per_batch in PEERS:
        build, embed = (fair_esm_model, fair_esm_embed) if kind == "fair" else (hf_esm_model, hf_embed)
        model = build(spec, state, device, dtype)
        for profile, seqs in workloads.items():
            sub = seqs[:fp32_n] if dtype == torch.float32 else seqs
            embed(model, alphabet, sub[:100], toks_per_batch, device)  # warm-up
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            emb, toks = embed(model, alphabet, sub, toks_per_batch, device)
            _sync(device)
            dt = time.perf_counter() - t0
            row = {"engine": name, "workload": profile, "sequences": len(sub), "tokens_per_sec": toks / dt,
                   "sequences_per_sec": len(sub) / dt, "peak_memory_gb": _peak_gb(device)}
            if profile not in reference:
                reference[profile] = emb
            else:  # same weights: the peers must agree (checks the HF name mapping too)
                k = min(len(emb), len(reference[profile]))
                a, b = emb[:k], reference[profile][:k]
                row["max_rel_diff_vs_fair_fp16"] = float((np.linalg.norm(a - b, axis=1)
                                                          / np.linalg.norm(b, axis=1)).max())
            rows.append(row)
            print(row, flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _peak_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None


def peers(model_name: str, device: torch.device, seed_mix_n: int, short_reads_n: int, fp32_n: int) -> dict:
    """`bench peers`: the stock engines alone, on random weights (seed 0)."""
    spec = ARCHITECTURES[model_name]
    workloads = {p: make_sequences(n, 1, p)[1] for p, n in (("seed-mix", seed_mix_n), ("short-reads", short_reads_n))}
    return {"model": model_name, "runs": peer_runs(spec, random_state_dict(spec, 0, device), workloads, fp32_n, device)}


def packed_embed(model: PackedESM2, seqs: list[bytes], token_budget: int, device, pad_to: int | None = None
                 ) -> np.ndarray:
    from virnucpro.data.packing import pack_batches

    vocab = Vocabulary.esm2()
    out = np.zeros((len(seqs), model.spec.embed_dim), dtype=np.float32)
    with torch.inference_mode():
        for b in pack_batches([len(s) for s in seqs], token_budget, 10_000):
            pb = collate(seqs, b, vocab, pad_to).to(device)
            out[pb.indices.numpy()] = model.embed(pb).cpu().numpy()
    return out


def _errors(got: np.ndarray, ref: np.ndarray, lengths: np.ndarray) -> dict:
    err = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return {"median": float(np.median(err)), "p99": float(np.quantile(err, 0.99)), "max": float(err.max()),
            "worst_length": int(lengths[err.argmax()]), "max_length_ge_20": float(err[lengths >= 20].max()),
            "finite": bool(np.isfinite(got).all())}


def _is_projection(name: str) -> bool:
    """The parameters this engine holds in fp16/bf16 (the linear layers); embeddings and norms stay fp32."""
    return any(f".{m}." in name for m in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))


def accuracy(model_name: str, num_sequences: int, seed: int, device: torch.device, token_budget: int = 16384) -> dict:
    """This engine as `virnucpro embed` configures it (compiled kernels and batches padded to the budget on
    CUDA) against fair-esm's ESM2 in fp32 on the same weights, and against fair-esm fp32 with the projection weights
    rounded to the engine's dtype as the engine holds them: the second isolates the arithmetic's error from the
    rounding of the weights."""
    from esm.data import Alphabet

    spec = ARCHITECTURES[model_name]
    state = random_state_dict(spec, seed, device)
    _, seqs = make_sequences(num_sequences, seed, "seed-mix")
    seqs += make_sequences(num_sequences // 2, seed, "short-reads")[1]
    rng = np.random.default_rng(seed)
    seqs += ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)) for n in (1, 2, 1021, 1022)] + ["MKXBZUOAXXC"]
    lengths = np.array([len(s) for s in seqs])
    alphabet = Alphabet.from_architecture("ESM-1b")
    ref_model = fair_esm_model(spec, state, device, torch.float32)
    refs = {"fp32": fair_esm_embed(ref_model, alphabet, seqs, 8192, device)[0]}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        load_tensors(ref_model, state, lambda k, v, dt=dtype: v.to(dt).float() if _is_projection(k) else v)
        refs[name] = fair_esm_embed(ref_model, alphabet, seqs, 8192, device)[0]
    del ref_model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    vocab = Vocabulary.esm2()
    compiled = device.type == "cuda"
    result = {"model": model_name, "weights": f"random (seed {seed})", "num_sequences": len(seqs),
              "reference": "fair-esm ESM2 fp32 on the same weights", "device": str(device),
              "engine": "compiled kernels, batches padded to the budget" if compiled else "eager"}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            model = PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, device, dtype)
        except torch.cuda.OutOfMemoryError as exc:  # 15B fp32 may not fit a card: recorded, not fatal
            result[name] = {"error": "out of memory while building", "detail": str(exc).splitlines()[0]}
            torch.cuda.empty_cache()
            continue
        load_peak = _peak_gb(device)
        if compiled:
            model.compile_kernels()
        got = packed_embed(model, [s.encode() for s in seqs], token_budget, device,
                           token_budget if compiled else None)
        result[name] = {**_errors(got, refs["fp32"], lengths), "load_peak_memory_gb": load_peak,
                        "peak_memory_gb": _peak_gb(device)}
        if name != "fp32":
            result[name]["vs_reference_on_rounded_weights"] = _errors(got, refs[name], lengths)
        print(name, result[name], flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def engines(model_name: str, workdir: Path, device: torch.device, seed_mix_n: int, short_reads_n: int,
            peer_n: int, fp32_n: int, token_budget: int) -> dict:
    """One process: the matmul ceiling, the stock peers (on the first `peer_n` sequences of each workload), and
    this engine end to end (`virnucpro embed` in a subprocess, bf16 and fp16) on every sequence."""
    import subprocess
    import sys

    spec = ARCHITECTURES[model_name]
    workdir.mkdir(parents=True, exist_ok=True)
    ceiling = matmul_tflops(device, torch.bfloat16)
    result = {"matmul_tflops_bf16": ceiling, "model": model_name, "runs": []}
    workloads = {}
    for profile, n in (("seed-mix", seed_mix_n), ("short-reads", short_reads_n)):
        ids, seqs = make_sequences(n, 1, profile)
        write_fasta(workdir / f"{profile}.fa", ids, seqs)
        workloads[profile] = seqs
        mean_tokens = statistics.fmean(len(s) + 2 for s in seqs)
        result[f"ceiling_tokens_per_sec_{profile}"] = ceiling * 1e12 / spec.flops_per_token(mean_tokens)
    state = random_state_dict(spec, 0, device)
    result["runs"] += peer_runs(spec, state, {p: s[:peer_n] for p, s in workloads.items()}, fp32_n, device)
    del state
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for profile, seqs in workloads.items():
        for precision in ("bf16", "fp16"):
            out = workdir / f"out-{profile}-{precision}"
            cmd = [sys.executable, "-m", "virnucpro.cli", "embed", str(workdir / f"{profile}.fa"), "-o", str(out),
                   "--model", model_name, "--random-weights", "--precision", precision, "--token-budget",
                   str(token_budget)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            wall = time.perf_counter() - t0
            summary = json.loads((out / "status.json").read_text())["summary"]
            batches = json.loads((out / "telemetry" / "telemetry_rank0.json").read_text())["per_batch_metrics"]
            steady = steady_state(batches, warmup_seconds=3.0, warmup_batches=5)
            result["runs"].append({"engine": f"virnucpro packed {precision} (embed, end to end)", "workload": profile,
                                   "sequences": len(seqs), "tokens_per_sec": summary["avg_tokens_per_sec"],
                                   "sequences_per_sec": summary["avg_sequences_per_sec"],
                                   "process_wall_seconds": wall, "peak_memory_gb": summary.get("peak_memory_gb"),
                                   "steady": {k: steady.get(k) for k in (
                                       "avg_tokens_per_sec", "avg_gpu_util", "p95_wait_time_ms",
                                       "avg_packing_efficiency", "excluded_batches", "total_batches")}})
    for r in result["runs"]:
        r["pct_ceiling"] = 100 * r["tokens_per_sec"] / result[f"ceiling_tokens_per_sec_{r['workload']}"]
    return result


def print_table(result: dict) -> None:
    """Tokens/s, sequences/s, % of ceiling, peak memory, and each row's ratio to every stock peer."""
    print(f"matmul ceiling bf16: {result['matmul_tflops_bf16']:.0f} TFLOP/s")
    runs = result["runs"]
    peer_names = [p[0] for p in PEERS]
    short = {n: f"x{i + 1}" for i, n in enumerate(peer_names)}
    for n, tag in short.items():
        print(f"  {tag} = {n}")
    print(f"{'engine':50s} {'workload':12s} {'tok/s':>9s} {'seq/s':>8s} {'%ceil':>6s} {'peakGB':>7s} "
          + " ".join(f"{t:>6s}" for t in short.values()))
    for r in runs:
        peers_here = {p["engine"]: p["tokens_per_sec"] for p in runs
                      if p["workload"] == r["workload"] and p["engine"] in short}
        ratios = " ".join(f"{r['tokens_per_sec'] / peers_here[n]:6.2f}" if n in peers_here else f"{'':6s}"
                          for n in peer_names)
        peak = r.get("peak_memory_gb")
        print(f"{r['engine'][:50]:50s} {r['workload']:12s} {r['tokens_per_sec']:9,.0f} {r['sequences_per_sec']:8,.1f} "
              f"{r['pct_ceiling']:6.1f} {peak if peak is not None else float('nan'):7.1f} {ratios}")
