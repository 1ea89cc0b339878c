"""Issue 18 device checks (not tests): the fused attention kernel at every ESM-2 head dimension, past 2^31
elements of Q/K/V and past 65,535 segments, and which attention path is faster for each model.

    PYTHONPATH=scripts python docs/benchmarks/2026-11-25-h100-issue18/gpu_checks.py kernels OUT.json
    PYTHONPATH=scripts python docs/benchmarks/2026-11-25-h100-issue18/gpu_checks.py paths OUT.json MODEL...

kernels: `rotary_varlen_attention` (keys rotated in the kernel, and keys rotated beforehand) against the CPU
twin (`rotate_qk` + `padded_attention`, SDPA in fp32) for head dims 16, 24, 32, 64, 128; a 3B-shaped batch of
300,000 tokens (Q/K/V past 2^31 elements) whose last segments must equal the same segments run alone; 100,000
segments of 3 tokens. paths: model forward (bf16, compiled kernels, 16,384-token batches padded to the budget)
with the fused Triton attention vs FlashAttention-2 varlen, median ms per batch on short reads and seed-mix.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from virnucpro.bench import packed_embed  # noqa: F401  (keeps the package import path checked)
from virnucpro.data.loader import Vocabulary, collate
from virnucpro.data.packing import pack_batches
from virnucpro.data.synthetic import make_sequences
from virnucpro.models.attention import padded_attention
from virnucpro.models.packed_esm2 import PackedESM2, rotary_inv_freq, rotate_k, rotate_qk
from virnucpro.models.triton_attention import rotary_tables, rotary_varlen_attention
from virnucpro.models.weights import ARCHITECTURES, random_state_dict

DEV = torch.device("cuda")


def _segments(lengths):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    T = int(cu[-1])
    seq_ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    positions = torch.arange(T) - cu[:-1][seq_ids]
    return cu.to(torch.int32).to(DEV), positions.to(DEV), seq_ids.to(DEV), T


def _cos_sin(positions, head_dim):
    freqs = positions.float()[:, None] * rotary_inv_freq(head_dim, DEV)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return emb.cos(), emb.sin()


def _fused(qkv, cu, max_len, heads, head_dim, positions, rotate_keys):
    tables = rotary_tables(rotary_inv_freq(head_dim, DEV), max(max_len, 1024))
    keys = None
    if rotate_keys:
        cos, sin = _cos_sin(positions, head_dim)
        keys = rotate_k(qkv, cos, sin, heads)
    return rotary_varlen_attention(qkv, cu, max_len, tables, heads, rotated_keys=keys)


def _reference(qkv, cu, max_len, heads, head_dim, positions, seq_ids):
    cos, sin = _cos_sin(positions, head_dim)
    q, k = rotate_qk(qkv.float(), cos, sin, heads)
    v = qkv.float().view(qkv.shape[0], 3, heads, -1)[:, 2]
    return padded_attention(q, k, v, cu, max_len, positions, seq_ids)


def _rel(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def kernel_checks() -> dict:
    out = {"head_dims": {}}
    gen = torch.Generator().manual_seed(0)
    lengths = [1, 2, 3, 17, 64, 65, 96, 97, 200, 513, 1024] + torch.randint(3, 300, (40,), generator=gen).tolist()
    cu, positions, seq_ids, T = _segments(lengths)
    for head_dim, heads in ((16, 20), (24, 20), (32, 20), (64, 40), (128, 40)):
        qkv = torch.randn(T, 3 * heads * head_dim, device=DEV, dtype=torch.bfloat16)
        ref = _reference(qkv, cu, max(lengths), heads, head_dim, positions, seq_ids)
        row = {}
        for rotate_keys in (False, True):
            try:
                got = _fused(qkv, cu, max(lengths), heads, head_dim, positions, rotate_keys)
                torch.cuda.synchronize()
                row["keys_rotated_before" if rotate_keys else "keys_rotated_in_kernel"] = _rel(got, ref)
            except Exception as exc:  # recorded: the point of the check
                row["keys_rotated_before" if rotate_keys else "keys_rotated_in_kernel"] = f"{type(exc).__name__}: {exc}"[:300]
        out["head_dims"][head_dim] = row
        print(head_dim, row, flush=True)
    out["large"] = _large_offsets()
    out["many_segments"] = _many_segments()
    return out


def _large_offsets() -> dict:
    """3B shape (40 heads x 64): 300,000 tokens, Q/K/V = 2.3e9 elements; the tail must equal itself run alone."""
    res = {}
    for seg_len in (50, 300):
        n = 300_000 // seg_len
        cu, positions, _, T = _segments([seg_len] * n)
        qkv = torch.randn(T, 3 * 2560, device=DEV, dtype=torch.bfloat16)
        full = _fused(qkv, cu, seg_len, 40, 64, positions, seg_len > 96)
        tail = 20 * seg_len
        cu_t, pos_t, ids_t, _ = _segments([seg_len] * 20)
        alone = _fused(qkv[-tail:].contiguous(), cu_t, seg_len, 40, 64, pos_t, seg_len > 96)
        ref = _reference(qkv[-tail:], cu_t, seg_len, 40, 64, pos_t, ids_t)
        torch.cuda.synchronize()
        res[f"segments_of_{seg_len}"] = {"tokens": T, "qkv_elements": qkv.numel(),
                                         "tail_equals_alone": bool(torch.equal(full[-tail:], alone)),
                                         "tail_rel_err_vs_reference": _rel(full[-tail:], ref)}
        print(res, flush=True)
        del qkv, full
    return res


def _many_segments() -> dict:
    lengths = [3] * 100_000
    cu, positions, seq_ids, T = _segments(lengths)
    qkv = torch.randn(T, 3 * 320, device=DEV, dtype=torch.bfloat16)
    got = _fused(qkv, cu, 3, 20, 16, positions, False)
    ref = _reference(qkv, cu, 3, 20, 16, positions, seq_ids)
    torch.cuda.synchronize()
    return {"segments": len(lengths), "rel_err_vs_reference": _rel(got, ref)}


def path_timings(models: list[str]) -> dict:
    vocab = Vocabulary.esm2()
    out = {}
    for name in models:
        spec = ARCHITECTURES[name]
        torch.cuda.reset_peak_memory_stats()
        model = PackedESM2.from_state_dict(spec, random_state_dict(spec, 0, DEV), vocab.cls_idx, vocab.eos_idx, DEV,
                                           torch.bfloat16)
        out[name] = {"head_dim": spec.head_dim, "bf16_build_peak_gb": torch.cuda.max_memory_allocated() / 2**30}
        for profile, n in (("short-reads", 4000), ("seed-mix", 1000)):
            seqs = [s.encode() for s in make_sequences(n, 1, profile)[1]]
            batches = [collate(seqs, b, vocab, 16384).to(DEV) for b in pack_batches([len(s) for s in seqs], 16384, 10_000)][:4]
            for fused in (True, False):
                model.compile_kernels(fused_attention=fused)
                times = []
                with torch.inference_mode():
                    for rep in range(3):
                        for b in batches:
                            torch.cuda.synchronize()
                            t0 = time.perf_counter()
                            model.embed(b)
                            torch.cuda.synchronize()
                            if rep:
                                times.append(time.perf_counter() - t0)
                times.sort()
                out[name][f"{profile} {'fused triton' if fused else 'varlen FA2'} ms"] = 1000 * times[len(times) // 2]
            print(name, out[name], flush=True)
        del model
        torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    what, path = sys.argv[1], sys.argv[2]
    result = kernel_checks() if what == "kernels" else path_timings(sys.argv[3:])
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
