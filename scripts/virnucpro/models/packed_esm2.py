"""ESM-2 forward over packed sequences, returning mean-pooled residue embeddings.

Same function as fair-esm's `ESM2.forward(...)["representations"][layer]` followed by extract.py's mean over
residues, computed without padding: fused QKV projection, rotary positions restarting at each sequence (sin
and cos in fp32), varlen attention, ESM's gelu, token-dropout rescale (x0.88, as fair-esm applies it at
inference too), `emb_layer_norm_after` on the last layer only, and a segment mean on the device with no
host synchronisation. The residual stream, the embedding table and the layer norms are fp32 at every
precision; the linear layers and attention run in the model's dtype (with fp8, E4M3 GEMMs with per-token and
per-channel scales and bf16 attention: see `fp8`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.models.attention import padded_attention, varlen_attention, varlen_available
from virnucpro.models.fp8 import E4M3, FP8_COMPUTE_DTYPE, fp8_linear, quantise_rows, quantise_weight
from virnucpro.models import fused_kernels
from virnucpro.models.fused_kernels import fused_kernels_available
from virnucpro.models.triton_attention import (
    ROTATE_KEYS_MAX_LEN,
    rotary_tables,
    rotary_varlen_attention,
    triton_available,
)
from virnucpro.models.weights import ModelSpec

#: fair-esm uses torch.nn.LayerNorm (no apex) with its default eps.
LAYER_NORM_EPS = 1e-5
#: fair-esm's token-dropout constant: the embedding is scaled by (1 - 0.15 * 0.8) even at inference.
TOKEN_DROPOUT_SCALE = 1.0 - 0.15 * 0.8


def rotary_inv_freq(head_dim: int, device=None) -> torch.Tensor:
    """fair-esm's RotaryEmbedding frequencies, fp32."""
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x.float() * cos + _rotate_half(x.float()) * sin).to(x.dtype)


def rotate_qk(qkv, cos, sin, heads: int):
    """(T, 3D) projection -> rotated q and k as (T, H, Dh) (rotary in fp32 math); v stays a view of `qkv`."""
    q, k, _ = qkv.view(qkv.shape[0], 3, heads, -1).unbind(1)
    return _rotary(q, cos, sin), _rotary(k, cos, sin)


def rotate_k(qkv, cos, sin, heads: int):
    """The rotated keys alone, (T, H, Dh): the fused attention kernel rotates the queries itself."""
    return _rotary(qkv.view(qkv.shape[0], 3, heads, -1)[:, 1], cos, sin)


def residual_norm(x, y, ln_w, ln_b, out_dtype: torch.dtype):
    """x += y in fp32 (the residual stream), then the next pre-norm: returns (x, layer_norm(x) as out_dtype).

    Keeping the residual stream in fp32 (rounding it to bf16 after each of the 72 additions was the largest
    error term) is part of what holds bf16 within 1e-2 of fair-esm fp32; the GEMM inputs stay in the model's
    dtype.
    """
    x = x + y.float()
    return x, F.layer_norm(x, (x.shape[-1],), ln_w, ln_b, LAYER_NORM_EPS).to(out_dtype)


def residual_norm_fp8(x, y, ln_w, ln_b):
    """`residual_norm` whose layer-norm output is quantised per token for the next fp8 GEMM: (x, (h8, scale))."""
    x = x + y.float()
    return x, quantise_rows(F.layer_norm(x, (x.shape[-1],), ln_w, ln_b, LAYER_NORM_EPS))


def gelu_quantise(u):
    """fc1's output through ESM's (erf) gelu, quantised per token for fc2."""
    return quantise_rows(F.gelu(u.float()))


def linear(h, layer: nn.Linear):
    """`layer` applied to `h`: a tensor (F.linear), or an fp8 (rows, scales) pair (one scaled GEMM)."""
    if isinstance(h, tuple):
        return fp8_linear(h[0], h[1], layer.weight, layer.weight_scale, layer.bias)
    return F.linear(h, layer.weight, layer.bias)


#: FlashAttention-2 (varlen_attn) launches one grid row per segment on grid axis y, which stops at 65,535.
FA2_MAX_SEGMENTS = 65_535


def attention_path(device: torch.device, dtype: torch.dtype, segments: int, fused_requested: bool) -> str:
    """Which attention a batch of `segments` packed segments runs: "triton" (fused rotary + attention, any
    ESM-2 head dim, any segment count), "varlen" (FlashAttention-2) or "padded" (SDPA, the CPU/fp32 twin).

    The fused kernel when asked for and available; else FlashAttention-2 where it can launch the batch;
    a batch with more segments than FA2's grid allows goes to the fused kernel even when not asked for (it
    would fail otherwise), and to padded SDPA without Triton.
    """
    if triton_available(device, dtype) and (fused_requested or segments > FA2_MAX_SEGMENTS):
        return "triton"
    if varlen_available(device, dtype) and segments <= FA2_MAX_SEGMENTS:
        return "varlen"
    return "padded"


def fused_gelu_applies(device: torch.device, dtype: torch.dtype) -> bool:
    """Where `mlp_up`'s tanh epilogue is used when asked for (cuBLASLt on CUDA in fp16/bf16); erf elsewhere."""
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def mlp_up(h, fc1_w, fc1_b, tanh_epilogue: bool):
    """fc1 + gelu. ESM's gelu is the erf form; `tanh_epilogue` (meant for CUDA fp16/bf16) uses cuBLASLt's fused
    bias+GELU epilogue, which computes the tanh form: at most 4.7e-4 from erf (near x = 2.7, where a bf16 step
    is 1.6e-2), no change in measured accuracy, 4 % faster on an H100 (docs/benchmarks/README.md)."""
    if tanh_epilogue:
        return torch._addmm_activation(fc1_b, h, fc1_w.t(), use_gelu=True)
    return F.gelu(F.linear(h, fc1_w, fc1_b))


#: The memory-bound kernels `compile_kernels` fuses (each one pass), by the name `represent` calls.
KERNELS = {
    "rotate": rotate_qk,
    "rotate_keys": rotate_k,
    "add_norm": residual_norm,
    "add_norm_fp8": residual_norm_fp8,
    "quantise": quantise_rows,
    "gelu_quantise": gelu_quantise,
}


class LazyCompiled:
    """`torch.compile(f)` made at the first call: a job whose path never calls `f` never imports Dynamo (1-4 s)."""

    def __init__(self, f):
        self.f, self.compiled = f, None

    def __call__(self, *args):
        if self.compiled is None:
            self.compiled = torch.compile(self.f, dynamic=False)
        return self.compiled(*args)


def fused_kernel_set(device: torch.device) -> dict:
    """`KERNELS` as one fused pass each on `device`: the hand-written Triton kernels where they exist (CUDA with
    Triton: no compilation per job), torch.compile for the rest (the unfused rotary; everything on CPU)."""
    kernels = {name: LazyCompiled(f) for name, f in KERNELS.items()}
    if fused_kernels_available(device):
        kernels["add_norm"] = partial(fused_kernels.add_layer_norm, eps=LAYER_NORM_EPS)
        kernels["rotate_keys"] = fused_kernels.rotate_keys
        kernels["add_norm_fp8"] = partial(fused_kernels.add_layer_norm_fp8, eps=LAYER_NORM_EPS)
        kernels["quantise"] = fused_kernels.quantise_rows
        kernels["gelu_quantise"] = partial(fused_kernels.quantise_rows, gelu=True)
    return kernels


class PackedLayer(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)


def allocate(model: nn.Module, device: torch.device | str) -> None:
    """`model.to_empty(device)`, uninitialised storage for every parameter and buffer of a meta-device skeleton,
    without `to_empty`'s empty_like on meta tensors: that goes through torch's Python references and imports the
    symbolic-shapes machinery and sympy (1-3 s of every job's start)."""
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                empty = torch.empty(p.shape, dtype=p.dtype, device=device)
                module._parameters[name] = nn.Parameter(empty, requires_grad=p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)


class PackedESM2(nn.Module):
    """ESM-2 embedding model for packed batches. Build with `from_state_dict`."""

    def __init__(self, spec: ModelSpec, cls_idx: int, eos_idx: int):
        super().__init__()
        self.spec = spec
        self.cls_idx, self.eos_idx = cls_idx, eos_idx
        # given its (empty) weight, Embedding skips its random init: normal_ on the meta device imports Dynamo
        # (2-4 s of every job's start), and from_state_dict overwrites every parameter anyway
        self.embed_tokens = nn.Embedding(
            spec.vocab_size, spec.embed_dim, _weight=torch.empty(spec.vocab_size, spec.embed_dim)
        )
        self.layers = nn.ModuleList(PackedLayer(spec.embed_dim, spec.attention_heads) for _ in range(spec.num_layers))
        self.emb_layer_norm_after = nn.LayerNorm(spec.embed_dim, eps=LAYER_NORM_EPS)
        # filled by from_state_dict (arithmetic on the meta device would import Dynamo, as normal_ would)
        self.register_buffer("inv_freq", torch.empty(spec.head_dim // 2), persistent=False)
        self.kernels = dict(KERNELS)
        self.compute_dtype = torch.float32  # the GEMMs' inputs and attention (bf16 for fp8); set by from_state_dict
        self.tanh_gelu_epilogue = False
        self.fused_attention = False

    def compile_kernels(self, tanh_gelu_epilogue: bool = True, fused_attention: bool = True) -> None:
        """Fuse the memory-bound kernels of a layer (rotary; residual add + layer norm) into one pass each, see
        `fused_kernel_set`; the GEMMs (cuBLAS, bias in its epilogue) and attention run between them.

        They are free functions of tensors, so one kernel serves all layers; where a torch.compile'd one is on the
        path, batches are padded to one shape (`batch_tokens`) so that it never recompiles. Both options act only on
        CUDA in fp16/bf16: `fused_attention` (with Triton) does rotary and attention in one kernel, see
        `triton_attention` (otherwise: rotary, then FlashAttention-2); `tanh_gelu_epilogue` folds fc1's bias and
        gelu into the GEMM, see `mlp_up`.
        """
        self.kernels = fused_kernel_set(self.inv_freq.device)
        self.tanh_gelu_epilogue = tanh_gelu_epilogue
        self.fused_attention = fused_attention

    @property
    def fp8(self) -> bool:
        return bool(len(self.layers)) and self.layers[0].qkv.weight.dtype == E4M3

    def batch_tokens(self, token_budget: int) -> int | None:
        """What every batch is padded to: the budget when a torch.compile'd kernel is on this model's path (fp32 or
        no Triton; attention without the fused kernel), so that it sees one shape; else None (no padding: the
        hand-written kernels, fp8's quantisations included, take any shape)."""
        fused = self.fused_attention and triton_available(self.inv_freq.device, self.compute_dtype)
        on_path = ["add_norm", "rotate_keys" if fused else "rotate"]
        if self.fp8:
            on_path += ["add_norm_fp8", "quantise", "gelu_quantise"]
        return token_budget if any(isinstance(self.kernels[name], LazyCompiled) for name in on_path) else None

    def rotary_tables(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused attention's cos/sin tables, built once for 1024 positions (grown if ever needed)."""
        if getattr(self, "_tables", None) is None or self._tables[0].shape[0] < positions:
            self._tables = rotary_tables(self.inv_freq, max(positions, 1024))
        return self._tables

    @classmethod
    @torch.no_grad()
    def from_state_dict(
        cls,
        spec: ModelSpec,
        state: Mapping[str, torch.Tensor],
        cls_idx: int,
        eos_idx: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "PackedESM2":
        """Build from fair-esm parameter names (prefix-stripped), fusing q/k/v into one projection.

        Parameters are allocated on `device` once, in their final dtypes (only the linear layers take `dtype`;
        what feeds the fp32 residual stream -- layer norms, embeddings -- and the rotary tables stay fp32), and
        each source tensor is cast as it is copied: the device never holds a full-precision copy of the model
        (ESM-2 15B in bf16 needs 30 GB, not 60 + 30).
        """
        fp8 = dtype == E4M3
        with torch.device("meta"):
            model = cls(spec, cls_idx, eos_idx)
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    module.to(FP8_COMPUTE_DTYPE if fp8 else dtype)
                    if fp8:  # E4M3 weight, one fp32 scale per output channel, bias kept in bf16
                        module.weight.data = module.weight.data.to(E4M3)
                        module.register_buffer("weight_scale", torch.empty(1, module.out_features))
        allocate(model, device)
        model.compute_dtype = FP8_COMPUTE_DTYPE if fp8 else dtype
        model.inv_freq.copy_(rotary_inv_freq(spec.head_dim, device))

        def put(param: torch.Tensor, *names: str) -> None:
            parts = [state[n].to(device=device, dtype=torch.float32 if fp8 else param.dtype) for n in names]
            value = parts[0] if len(parts) == 1 else torch.cat(parts)
            if param.dtype == E4M3:
                value, scale = quantise_weight(value)
                linears[id(param)].weight_scale.copy_(scale)
            param.copy_(value)

        linears = {id(m.weight): m for m in model.modules() if isinstance(m, nn.Linear)}

        put(model.embed_tokens.weight, "embed_tokens.weight")
        for i, layer in enumerate(model.layers):
            p = f"layers.{i}."
            qkv = [p + f"self_attn.{m}_proj" for m in ("q", "k", "v")]
            put(layer.qkv.weight, *(n + ".weight" for n in qkv))
            put(layer.qkv.bias, *(n + ".bias" for n in qkv))
            for mine, theirs in (
                ("out", "self_attn.out_proj"),
                ("fc1", "fc1"),
                ("fc2", "fc2"),
                ("ln1", "self_attn_layer_norm"),
                ("ln2", "final_layer_norm"),
            ):
                put(getattr(layer, mine).weight, p + theirs + ".weight")
                put(getattr(layer, mine).bias, p + theirs + ".bias")
        put(model.emb_layer_norm_after.weight, "emb_layer_norm_after.weight")
        put(model.emb_layer_norm_after.bias, "emb_layer_norm_after.bias")
        return model.eval().requires_grad_(False)

    def embed(self, batch, repr_layer: int | None = None) -> torch.Tensor:
        """`forward` on a PackedBatch already on this model's device."""
        return self(
            batch.tokens,
            batch.positions,
            batch.cu_seqlens,
            batch.seq_ids,
            batch.max_len,
            batch.num_sequences,
            repr_layer,
            batch.weights,
        )

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cu_seqlens: torch.Tensor,
        seq_ids: torch.Tensor,
        max_len: int,
        num_seqs: int,
        repr_layer: int | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Packed tokens (T,) -> (num_seqs, D) fp32 mean over residues (BOS/EOS excluded) of `repr_layer`.

        cu_seqlens may describe more segments than `num_seqs`: trailing padding segments are computed (as
        sequences of their own, so attention never mixes them with real tokens) and dropped. With `weights`
        (T,) each segment's row is the weighted sum of its tokens instead of the mean (windows of long
        sequences, see `data.windows`).
        """
        x = self.represent(tokens, positions, cu_seqlens, seq_ids, max_len, repr_layer)
        return self.pool(x, tokens, cu_seqlens, seq_ids, num_seqs, weights)

    def represent(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cu_seqlens: torch.Tensor,
        seq_ids: torch.Tensor,
        max_len: int,
        repr_layer: int | None = None,
    ) -> torch.Tensor:
        """(T, D) fp32 per-token representations after `repr_layer` layers (the last: `emb_layer_norm_after`)."""
        n_layers = self.spec.num_layers
        repr_layer = n_layers if repr_layer is None else repr_layer
        k, dtype = self.kernels, self.compute_dtype
        fp8 = self.fp8
        x = self.embed_tokens(tokens).float()
        if self.spec.token_dropout:
            x = x * TOKEN_DROPOUT_SCALE
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # (T, 1, Dh)
        attend = self._attention(x.device, dtype, emb.cos(), emb.sin(), cu_seqlens, max_len, positions, seq_ids)
        tanh_gelu = self.tanh_gelu_epilogue and fused_gelu_applies(x.device, dtype) and not fp8

        def add_norm(x, y, ln):  # the residual add, then the next pre-norm as the next GEMM's input
            return (
                k["add_norm_fp8"](x, y, ln.weight, ln.bias) if fp8 else k["add_norm"](x, y, ln.weight, ln.bias, dtype)
            )

        layers = self.layers[:repr_layer]
        T, d = x.shape
        if layers:
            h = F.layer_norm(x, (d,), layers[0].ln1.weight, layers[0].ln1.bias, LAYER_NORM_EPS)
            h = k["quantise"](h) if fp8 else h.to(dtype)
        for i, layer in enumerate(layers):
            a = attend(linear(h, layer.qkv), layer.heads).reshape(T, d)
            x, h = add_norm(x, linear(k["quantise"](a) if fp8 else a, layer.out), layer.ln2)
            if fp8:
                y = linear(k["gelu_quantise"](linear(h, layer.fc1)), layer.fc2)
            else:
                y = F.linear(mlp_up(h, layer.fc1.weight, layer.fc1.bias, tanh_gelu), layer.fc2.weight, layer.fc2.bias)
            if i + 1 < len(layers):
                x, h = add_norm(x, y, layers[i + 1].ln1)
            elif repr_layer == n_layers:  # the last layer's output goes through emb_layer_norm_after, kept fp32
                final = self.emb_layer_norm_after
                _, x = k["add_norm"](x, y, final.weight, final.bias, torch.float32)
            else:
                x = x + y.float()
        return x

    def _attention(self, device, dtype, cos, sin, cu_seqlens, max_len, positions, seq_ids):
        """The batch's attention as `attend(qkv, heads) -> (T, H, Dh)`: the path (`attention_path`) and its
        rotary tables chosen once per batch."""
        path = attention_path(device, dtype, cu_seqlens.numel() - 1, self.fused_attention)
        rotate, rotate_keys = self.kernels["rotate"], self.kernels["rotate_keys"]
        if path == "triton":
            tables = self.rotary_tables(max_len)

            def attend(qkv, heads):
                keys = rotate_keys(qkv, cos, sin, heads) if max_len > ROTATE_KEYS_MAX_LEN else None
                return rotary_varlen_attention(qkv, cu_seqlens, max_len, tables, heads, rotated_keys=keys)

            return attend

        def attend(qkv, heads):
            q, k = rotate(qkv, cos, sin, heads)
            v = qkv.view(qkv.shape[0], 3, heads, -1)[:, 2]
            if path == "varlen":
                return varlen_attention(q, k, v, cu_seqlens, max_len)
            return padded_attention(q, k, v, cu_seqlens, max_len, positions, seq_ids)

        return attend

    def pool(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        cu_seqlens: torch.Tensor,
        seq_ids: torch.Tensor,
        num_seqs: int,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Segment sums on the device, no host synchronisation: the residue mean of each segment, or with
        `weights` (zero on BOS/EOS/padding) the weighted sum. Rows of padding segments are dropped."""
        segments = cu_seqlens.numel() - 1
        sums = torch.zeros(segments, x.shape[-1], device=x.device, dtype=torch.float32)
        if weights is not None:
            sums.index_add_(0, seq_ids, x * weights[:, None])
            return sums[:num_seqs]
        residue = ((tokens != self.cls_idx) & (tokens != self.eos_idx)).unsqueeze(-1)
        sums.index_add_(0, seq_ids, torch.where(residue, x, 0.0))
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1] - 2).clamp_min(1).to(torch.float32)
        return (sums / lengths[:, None])[:num_seqs]
