"""Benchmarks (not tests): `virnucpro bench accuracy`, `engines` and `peers`.

accuracy: this engine at fp32/bf16/fp16 against fair-esm's own ESM2 forward at fp32 on the same (random)
weights; prints the distribution of per-sequence relative L2 errors.
engines: in one process, the matmul ceiling, the peers (below) and this engine end to end (`virnucpro embed`:
FASTA, packing, forward, pooling, HDF5) on the seed-mix and short-reads workloads; one table of tokens/s,
sequences/s, % of ceiling, peak memory and the ratio to the fastest row of each peer kind.
peers: only the peers, on the same weights, run as a careful user would: fair-esm and Hugging Face `EsmModel`
(SDPA, needs transformers) in fp16 and bf16, length-sorted padded token batches, residue means taken on the GPU
once per batch, the token budget that runs fastest on each workload among a small grid (16k/32k/64k); and
fair-esm's extract.py recipe (fp32, 4096 tokens, one `.cpu()` per sequence) as its own labelled row, which is
also the fp32 reference every other row's embeddings are checked against.
Run on a GPU (the device machine); on CPU they work (tests use a tiny model) but mean little.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from virnucpro.data.fasta import MAX_RESIDUES, write_fasta
from virnucpro.defaults import ACCURACY_GATE, COSINE_GATE, GATE_FRACTION
from virnucpro.data.loader import Vocabulary, collate
from virnucpro.data.packing import token_length
from virnucpro.data.synthetic import make_sequences
from virnucpro.models.packed_esm2 import PackedESM2
from virnucpro.pipeline.runner import PRECISIONS
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
        model = ESM2(
            num_layers=spec.num_layers,
            embed_dim=spec.embed_dim,
            attention_heads=spec.attention_heads,
            token_dropout=spec.token_dropout,
        )
    load_tensors(model, state)
    return model.to(dtype).eval()


@torch.no_grad()
def load_tensors(model, state, transform=None) -> None:
    """Copy `state` into `model` one tensor at a time (optionally through `transform(name, tensor)`); every key
    must exist, and only the LM / contact heads and rotary frequencies may be left out."""
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [
        k
        for k in own
        if k not in state and not (k.startswith(("lm_head", "contact_head")) or k.endswith("rot_emb.inv_freq"))
    ]
    assert not unexpected and not missing, (unexpected, missing)
    for name in state:
        t = state[name]
        own[name].copy_(transform(name, t) if transform else t)


def residue_mean(rep: torch.Tensor, toks: torch.Tensor, alphabet) -> torch.Tensor:
    """Per-sequence mean over residues (BOS, EOS, padding excluded) of a padded batch, on its device, in fp32."""
    mask = (toks != alphabet.padding_idx) & (toks != alphabet.cls_idx) & (toks != alphabet.eos_idx)
    total = (rep * mask.unsqueeze(-1).to(rep.dtype)).sum(1, dtype=torch.float32)
    return total / mask.sum(1, keepdim=True).clamp(min=1)


def sorted_batches_embed(
    forward, dim: int, alphabet, seqs: list[str], toks_per_batch: int, device, pool_on_device: bool = True
) -> tuple[np.ndarray, int]:
    """fair-esm's extract.py batching (length-sorted token batches, padded) around `forward(toks) -> (B, L, D)`;
    returns the residue-mean embeddings and the tokens run. `pool_on_device`: the batch's means are taken on the
    device and copied once per batch (a careful user); else one `.cpu()` per sequence (extract.py's script)."""
    from esm.data import FastaBatchedDataset

    ds = FastaBatchedDataset([str(i) for i in range(len(seqs))], seqs)
    batches = ds.get_batch_indices(toks_per_batch, extra_toks_per_seq=1)
    convert = alphabet.get_batch_converter(truncation_seq_length=MAX_RESIDUES)
    out = np.zeros((len(seqs), dim), dtype=np.float32)
    tokens_run = 0
    with torch.inference_mode():
        for b in batches:
            _, strs, toks = convert([(str(i), seqs[i]) for i in b])
            toks = toks.to(device, non_blocking=True)
            tokens_run += sum(token_length(min(len(s), MAX_RESIDUES)) for s in strs)
            rep = forward(toks)
            if pool_on_device:
                out[b] = residue_mean(rep, toks, alphabet).cpu().numpy()
                continue
            for j, i in enumerate(b):
                n = min(len(seqs[i]), MAX_RESIDUES)
                out[i] = rep[j, 1 : n + 1].float().mean(0).cpu().numpy()
    return out, tokens_run


def fair_esm_embed(
    model, alphabet, seqs: list[str], toks_per_batch: int, device, pool_on_device: bool = True
) -> tuple[np.ndarray, int]:
    """fair-esm's ESM2 in extract.py's batches, last layer."""
    layer = model.num_layers
    return sorted_batches_embed(
        lambda toks: model(toks, repr_layers=[layer])["representations"][layer],
        model.embed_dim,
        alphabet,
        seqs,
        toks_per_batch,
        device,
        pool_on_device,
    )


def hf_esm_model(spec, state, device, dtype):
    """Hugging Face `EsmModel` (SDPA attention) with the same weights, fair-esm names mapped to HF's."""
    from transformers import EsmConfig, EsmModel

    cfg = EsmConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.embed_dim,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.attention_heads,
        intermediate_size=4 * spec.embed_dim,
        position_embedding_type="rotary",
        token_dropout=spec.token_dropout,
        mask_token_id=32,
        pad_token_id=1,
        emb_layer_norm_before=False,
        layer_norm_eps=1e-5,
        max_position_embeddings=1026,
    )
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        model = EsmModel(cfg, add_pooling_layer=False)
    names = {
        "embed_tokens.weight": "embeddings.word_embeddings.weight",
        "emb_layer_norm_after.weight": "encoder.emb_layer_norm_after.weight",
        "emb_layer_norm_after.bias": "encoder.emb_layer_norm_after.bias",
    }
    parts = {
        "self_attn.q_proj": "attention.self.query",
        "self_attn.k_proj": "attention.self.key",
        "self_attn.v_proj": "attention.self.value",
        "self_attn.out_proj": "attention.output.dense",
        "self_attn_layer_norm": "attention.LayerNorm",
        "fc1": "intermediate.dense",
        "fc2": "output.dense",
        "final_layer_norm": "LayerNorm",
    }
    for i in range(spec.num_layers):
        for theirs, hf in parts.items():
            for t in ("weight", "bias"):
                names[f"layers.{i}.{theirs}.{t}"] = f"encoder.layer.{i}.{hf}.{t}"
    hf_state = {names[k]: v for k, v in state.items() if k in names}
    missing, unexpected = model.load_state_dict(hf_state, strict=False)
    assert not unexpected and all(("rotary" in k or "position" in k or "contact_head" in k) for k in missing), missing
    return model.to(dtype).eval()


def hf_embed(
    model, alphabet, seqs: list[str], toks_per_batch: int, device, pool_on_device: bool = True
) -> tuple[np.ndarray, int]:
    """The same batches as fair-esm's recipe, through `EsmModel` with an attention mask."""
    return sorted_batches_embed(
        lambda toks: model(input_ids=toks, attention_mask=(toks != alphabet.padding_idx)).last_hidden_state,
        model.config.hidden_size,
        alphabet,
        seqs,
        toks_per_batch,
        device,
        pool_on_device,
    )


#: Peers at their best: pooling on the device once per batch, fp16 and bf16, the token budget of this grid that
#: runs fastest on each workload. extract.py's recipe (fp32, 4096 tokens, per-sequence pooling) is its own row.
PEER_KINDS = {"fair-esm": (fair_esm_model, fair_esm_embed), "hf": (hf_esm_model, hf_embed)}
PEER_DTYPES = (torch.float16, torch.bfloat16)
BUDGET_GRID = (16384, 32768, 65536)
EXTRACT_RECIPE = "fair-esm fp32, extract.py recipe (4096-token batches, per-sequence pooling)"


def _timed(embed, model, alphabet, seqs, budget, device) -> tuple[np.ndarray, float, float]:
    """Embed after a short warm-up; returns (embeddings, tokens/s, sequences/s)."""
    embed(model, alphabet, seqs[:64], budget, device)
    _sync(device)
    t0 = time.perf_counter()
    emb, toks = embed(model, alphabet, seqs, budget, device)
    _sync(device)
    dt = time.perf_counter() - t0
    return emb, toks / dt, len(seqs) / dt


def _probe_subset(seqs: list[str], budgets, batches_each: int) -> list[str]:
    """The first sequences holding `batches_each` batches of the largest budget: what each budget is tried on."""
    need, total, k = batches_each * max(budgets), 0, 0
    while k < len(seqs) and total < need:
        total += token_length(min(len(seqs[k]), MAX_RESIDUES))
        k += 1
    return seqs[:k]


def _rel_diff(emb: np.ndarray, ref: np.ndarray) -> float:
    k = min(len(emb), len(ref))
    return float((np.linalg.norm(emb[:k] - ref[:k], axis=1) / np.linalg.norm(ref[:k], axis=1)).max())


def _row(engine, kind, dtype, budget, profile, seqs, rates, emb, ref, device, grid=None) -> dict:
    row = {
        "engine": engine,
        "kind": kind,
        "dtype": str(dtype).replace("torch.", ""),
        "token_budget": budget,
        "workload": profile,
        "sequences": len(seqs),
        "tokens_per_sec": rates[0],
        "sequences_per_sec": rates[1],
        "peak_memory_gb": _peak_gb(device),
        "max_rel_diff_vs_fp32": _rel_diff(emb, ref) if ref is not None else None,
    }
    if grid is not None:
        row["budget_grid"] = grid
    print(row, flush=True)
    return row


def _best_budget(embed, model, alphabet, seqs, budgets, device, batches_each) -> tuple[int, list[dict]]:
    probe = _probe_subset(seqs, budgets, batches_each)
    grid = [
        {
            "token_budget": b,
            "tokens_per_sec": _timed(embed, model, alphabet, probe, b, device)[1],
            "probe_sequences": len(probe),
        }
        for b in budgets
    ]
    return max(grid, key=lambda g: g["tokens_per_sec"])["token_budget"], grid


def peer_runs(
    spec, state, workloads: dict[str, list[str]], fp32_n: int, device, budgets=BUDGET_GRID, probe_batches: int = 6
) -> tuple[list[dict], dict[str, str]]:
    """extract.py's recipe on the first `fp32_n` sequences of each workload (the fp32 reference), then fair-esm
    and HF `EsmModel` at their best (see PEER_KINDS); returns the rows and {peer: why not run}."""
    from esm.data import Alphabet

    alphabet = Alphabet.from_architecture("ESM-1b")
    rows, reference, na = [], {}, {}
    model = fair_esm_model(spec, state, device, torch.float32)
    extract = lambda *a: fair_esm_embed(*a, pool_on_device=False)  # noqa: E731
    for profile, seqs in workloads.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        emb, *rates = _timed(extract, model, alphabet, seqs[:fp32_n], 4096, device)
        reference[profile] = emb
        rows.append(
            _row(EXTRACT_RECIPE, "extract.py", torch.float32, 4096, profile, seqs[:fp32_n], rates, emb, None, device)
        )
    del model
    for kind, (build, embed) in PEER_KINDS.items():
        for dtype in PEER_DTYPES:
            try:
                model = build(spec, state, device, dtype)
            except ImportError as exc:
                na[f"{kind} {dtype}"] = f"not installed: {exc.name or exc}"
                continue
            for profile, seqs in workloads.items():
                budget, grid = _best_budget(embed, model, alphabet, seqs, budgets, device, probe_batches)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                emb, *rates = _timed(embed, model, alphabet, seqs, budget, device)
                name = f"{kind} {str(dtype)[6:]}, pooled on device, best of {len(budgets)} budgets"
                rows.append(
                    _row(name, kind, dtype, budget, profile, seqs, rates, emb, reference[profile], device, grid)
                )
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows, na


def _peak_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None


def peers(weights, device: torch.device, workloads: dict[str, list[str]], fp32_n: int, budgets=BUDGET_GRID) -> dict:
    """`bench peers`: the peers alone on `weights` (a models.weights.Weights) and the given workloads."""
    rows, na = peer_runs(weights.spec, weights.state_dict, workloads, fp32_n, device, budgets)
    return {
        "model": weights.provenance.get("model"),
        "weights": weights.provenance,
        "device": _device_name(device),
        "budget_grid": list(budgets),
        "runs": rows,
        "na": na,
    }


def _device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def packed_embed(
    model: PackedESM2, seqs: list[bytes], token_budget: int, device, pad_to: int | None = None
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
    """Relative L2 per sequence (distribution), and the cosine similarity of each pooled embedding with the
    reference's: the gate a lower precision must pass (`defaults.ACCURACY_GATE`)."""
    err = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    cos = (got * ref).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    finite, reached = bool(np.isfinite(got).all()), float((cos >= COSINE_GATE).mean())
    return {
        "median": float(np.median(err)),
        "p99": float(np.quantile(err, 0.99)),
        "max": float(err.max()),
        "worst_length": int(lengths[err.argmax()]),
        "max_length_ge_20": float(err[lengths >= 20].max()),
        "finite": finite,
        "cosine_min": float(cos.min()),
        "cosine_p01": float(np.quantile(cos, 0.01)),
        "cosine_ge_gate_fraction": reached,
        "gate_pass": finite and reached >= GATE_FRACTION,
    }


def _is_projection(name: str) -> bool:
    """The parameters this engine holds in fp16/bf16/fp8 (the linear layers); embeddings and norms stay fp32."""
    return any(f".{m}." in name for m in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))


def _rounded(precision: str):
    """A projection weight as the engine holds it at `precision`, back in fp32 (biases as their dtype keeps them)."""
    if precision == "fp8":
        from virnucpro.models.fp8 import FP8_COMPUTE_DTYPE, quantise_weight

        def fp8(name, v):
            if v.dim() == 1:
                return v.to(FP8_COMPUTE_DTYPE).float()
            w8, scale = quantise_weight(v)
            return w8.float() * scale.reshape(-1, 1)

        return fp8
    dtype = PRECISIONS[precision]
    return lambda name, v: v.to(dtype).float()


def accuracy_sequences(num_sequences: int, seed: int) -> list[str]:
    """Seed-mix and short reads, plus the edge lengths (1, 2, 1021, 1022) and the ambiguity letters."""
    _, seqs = make_sequences(num_sequences, seed, "seed-mix")
    seqs += make_sequences(num_sequences // 2, seed, "short-reads")[1]
    rng = np.random.default_rng(seed)
    return seqs + ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)) for n in (1, 2, 1021, 1022)] + ["MKXBZUOAXXC"]


def accuracy(
    spec, state, weights_label: str, seqs: list[str], device: torch.device, token_budget: int, precisions
) -> dict:
    """This engine as `virnucpro embed` configures it (on CUDA its layer kernels, `fused_kernel_set`: hand-written
    Triton, batches padded only where a torch.compile'd one is on the path) at each of `precisions` against
    fair-esm's ESM2 in fp32 on the same weights, and against fair-esm fp32 with the projection weights rounded as
    the engine holds them: the second isolates the arithmetic's error from the rounding of the weights. fp8 runs
    where `torch._scaled_mm` does (Hopper; recent CPU builds), else its arithmetic is emulated (`models.fp8`)."""
    from esm.data import Alphabet

    lengths = np.array([len(s) for s in seqs])
    alphabet = Alphabet.from_architecture("ESM-1b")
    ref_model = fair_esm_model(spec, state, device, torch.float32)
    refs = {"fp32": fair_esm_embed(ref_model, alphabet, seqs, 8192, device)[0]}
    for name in precisions:
        if name != "fp32":
            load_tensors(ref_model, state, lambda k, v, r=_rounded(name): r(k, v) if _is_projection(k) else v)
            refs[name] = fair_esm_embed(ref_model, alphabet, seqs, 8192, device)[0]
    del ref_model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    compiled = device.type == "cuda"
    result = {
        "model": spec_name(spec),
        "weights": weights_label,
        "num_sequences": len(seqs),
        "reference": "fair-esm ESM2 fp32 on the same weights",
        "gate": ACCURACY_GATE,
        "device": str(device),
        "engine": "as embed runs it (fused_kernel_set)" if compiled else "eager",
    }
    for name in precisions:
        result[name] = _engine_accuracy(spec, state, name, seqs, device, token_budget, compiled, refs, lengths)
        print(name, result[name], flush=True)
    return result


def _engine_accuracy(spec, state, name, seqs, device, token_budget, compiled, refs, lengths) -> dict:
    vocab = Vocabulary.esm2()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        model = PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, device, PRECISIONS[name])
    except torch.cuda.OutOfMemoryError as exc:  # 15B fp32 may not fit a card: recorded, not fatal
        torch.cuda.empty_cache()
        return {"error": "out of memory while building", "detail": str(exc).splitlines()[0]}
    load_peak = _peak_gb(device)
    if compiled:
        model.compile_kernels()
    got = packed_embed(model, [s.encode() for s in seqs], token_budget, device, model.batch_tokens(token_budget))
    row = {**_errors(got, refs["fp32"], lengths), "load_peak_memory_gb": load_peak, "peak_memory_gb": _peak_gb(device)}
    if name != "fp32":
        row["vs_reference_on_rounded_weights"] = _errors(got, refs[name], lengths)
    if name == "fp8":
        from virnucpro.models.fp8 import FP8_RECIPE, scaled_mm_available

        row["recipe"] = FP8_RECIPE
        row["kernel"] = "torch._scaled_mm" if scaled_mm_available(device) else "emulated in fp32"
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def spec_name(spec) -> str:
    """The fair-esm name of `spec`'s architecture, or a description of it."""
    from virnucpro.models.weights import known_architecture

    return known_architecture(spec) or f"{spec.num_layers} layers x {spec.embed_dim}"


def _engine_run(fasta: Path, out: Path, weights_args: list[str], precision: str, token_budget: int, device) -> dict:
    """This engine end to end: `virnucpro embed` in a subprocess; its whole-loop and steady rates."""
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "virnucpro.cli",
        "embed",
        str(fasta),
        "-o",
        str(out),
        *weights_args,
        "--precision",
        precision,
        "--token-budget",
        str(token_budget),
        "--device",
        device.type,
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "status.json").read_text())["summary"]
    batches = json.loads((out / "telemetry" / "telemetry_rank0.json").read_text())["per_batch_metrics"]
    steady = steady_state(batches, warmup_seconds=3.0, warmup_batches=5)
    return {
        "engine": f"virnucpro packed {precision} (embed, end to end)",
        "kind": "virnucpro",
        "dtype": precision,
        "token_budget": token_budget,
        "sequences": summary["total_sequences"],
        "tokens_per_sec": summary["avg_tokens_per_sec"],
        "sequences_per_sec": summary["avg_sequences_per_sec"],
        "process_wall_seconds": wall,
        "peak_memory_gb": summary.get("peak_memory_gb"),
        "steady": {
            k: steady.get(k)
            for k in (
                "avg_tokens_per_sec",
                "avg_gpu_util",
                "p95_wait_time_ms",
                "avg_packing_efficiency",
                "excluded_batches",
                "total_batches",
            )
        },
    }


def engines(
    weights,
    weights_args: list[str],
    workdir: Path,
    device: torch.device,
    seed_mix_n: int,
    short_reads_n: int,
    peer_n: int,
    fp32_n: int,
    token_budget: int,
    budgets=BUDGET_GRID,
    precisions=("bf16", "fp16"),
) -> dict:
    """One process: the matmul ceiling, the peers at their best and extract.py's recipe (on the first `peer_n`
    sequences of each workload), and this engine end to end (each of `precisions`) on every sequence; `weights_args`
    give `virnucpro embed` the same weights."""
    spec = weights.spec
    workdir.mkdir(parents=True, exist_ok=True)
    ceiling = matmul_tflops(device, torch.bfloat16)
    fp8_ceiling = matmul_tflops(device, torch.float8_e4m3fn) if "fp8" in precisions else None
    result = {
        "matmul_tflops_bf16": ceiling,
        "matmul_tflops_fp8": fp8_ceiling,  # row-wise scaled E4M3 products, as --precision fp8 runs them
        "model": weights.provenance.get("model"),
        "device": _device_name(device),
        "weights": weights.provenance,
        "runs": [],
    }
    workloads = {}
    for profile, n in (("seed-mix", seed_mix_n), ("short-reads", short_reads_n)):
        if n == 0:  # a workload can be left out (a quick CPU check)
            continue
        ids, seqs = make_sequences(n, 1, profile)
        write_fasta(workdir / f"{profile}.fa", ids, seqs)
        workloads[profile] = seqs
        result.update(_ceiling_rates(spec, profile, seqs, ceiling, fp8_ceiling))
    result["runs"], result["na"] = _peers_of(weights, workloads, peer_n, fp32_n, device, budgets)
    weights.state_dict = {}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for profile in workloads:
        for precision in precisions:
            row = _engine_run(
                workdir / f"{profile}.fa",
                workdir / f"out-{profile}-{precision}",
                weights_args,
                precision,
                token_budget,
                device,
            )
            result["runs"].append({**row, "workload": profile})
    for r in result["runs"]:  # % of the bf16 ceiling for every row, and of the fp8 one where it was measured
        r["pct_ceiling"] = 100 * r["tokens_per_sec"] / result[f"ceiling_tokens_per_sec_{r['workload']}"]
        if fp8_ceiling:
            r["pct_fp8_ceiling"] = 100 * r["tokens_per_sec"] / result[f"fp8_ceiling_tokens_per_sec_{r['workload']}"]
    return result


def _peers_of(weights, workloads: dict[str, list[str]], peer_n: int, fp32_n: int, device, budgets):
    """The peers' rows on the first `peer_n` sequences of each workload, and {peer: why not run}; none at 0."""
    if not peer_n:
        return [], {"peers": "left out (--peer-subset 0)"}
    subsets = {p: s[:peer_n] for p, s in workloads.items()}
    return peer_runs(weights.spec, weights.state_dict, subsets, fp32_n, device, budgets)


def _ceiling_rates(spec, profile: str, seqs: list[str], bf16_tflops: float, fp8_tflops: float | None) -> dict:
    """The tokens/s at which the model's FLOPs would run at each measured matmul ceiling on this workload."""
    flops = spec.flops_per_token(statistics.fmean(token_length(min(len(s), MAX_RESIDUES)) for s in seqs))
    rates = {f"ceiling_tokens_per_sec_{profile}": bf16_tflops * 1e12 / flops}
    if fp8_tflops:
        rates[f"fp8_ceiling_tokens_per_sec_{profile}"] = fp8_tflops * 1e12 / flops
    return rates


def print_table(result: dict) -> None:
    """Tokens/s, sequences/s, % of the bf16 (and fp8) ceiling, peak memory, and each row's ratio to the fastest
    row of each peer kind on its workload (fair-esm and HF at their best, extract.py's recipe)."""
    print(f"matmul ceiling bf16: {result['matmul_tflops_bf16']:.0f} TFLOP/s")
    if result.get("matmul_tflops_fp8"):
        print(f"matmul ceiling fp8 (row-wise scaled E4M3): {result['matmul_tflops_fp8']:.0f} TFLOP/s")
    runs = result["runs"]
    kinds = ("fair-esm", "hf", "extract.py")
    print(
        f"{'engine':58s} {'workload':12s} {'budget':>6s} {'tok/s':>9s} {'seq/s':>8s} {'%ceil':>6s} {'%fp8':>6s} "
        f"{'peakGB':>7s} " + " ".join(f"{'x' + k:>11s}" for k in kinds)
    )
    for r in runs:
        best = {
            k: max(
                (p["tokens_per_sec"] for p in runs if p["workload"] == r["workload"] and p.get("kind") == k),
                default=None,
            )
            for k in kinds
        }
        ratios = " ".join(f"{r['tokens_per_sec'] / best[k]:11.2f}" if best[k] else f"{'N/A':>11s}" for k in kinds)
        peak = r.get("peak_memory_gb")
        peak = float("nan") if peak is None else peak
        fp8 = f"{r['pct_fp8_ceiling']:6.1f}" if "pct_fp8_ceiling" in r else f"{'N/A':>6s}"
        print(
            f"{r['engine'][:58]:58s} {r['workload']:12s} {r.get('token_budget') or 0:6d} {r['tokens_per_sec']:9,.0f} "
            f"{r['sequences_per_sec']:8,.1f} {r['pct_ceiling']:6.1f} {fp8} {peak:7.1f} {ratios}"
        )
    for peer, why in (result.get("na") or {}).items():
        print(f"{peer}: N/A ({why})")


def peer_workloads(
    fasta: Path | None, num_sequences: int, seed: int, seed_mix: int, short_reads: int
) -> dict[str, list[str]]:
    """peers: a seeded sample of `fasta` (the workflow's input), else the two synthetic workloads."""
    from virnucpro.data.fasta import read_fasta
    from virnucpro.errors import UserError

    if fasta is None:
        return {
            p: make_sequences(n, 1, p)[1] for p, n in (("seed-mix", seed_mix), ("short-reads", short_reads)) if n > 0
        }
    records = read_fasta(fasta)
    if num_sequences < 1:
        raise UserError("bench peers: --num-sequences must be a positive count")
    k = min(num_sequences, len(records))
    rng = np.random.default_rng(seed)
    return {"input": [records.seqs[i].decode() for i in rng.permutation(len(records))[:k]]}
