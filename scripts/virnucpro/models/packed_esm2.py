"""ESM-2 forward over packed sequences, returning mean-pooled residue embeddings.

Same function as fair-esm's `ESM2.forward(...)["representations"][layer]` followed by extract.py's mean over
residues, computed without padding: fused QKV projection, rotary positions restarting at each sequence (sin
and cos in fp32), varlen attention, ESM's erf gelu, token-dropout rescale (x0.88, as fair-esm applies it at
inference too), `emb_layer_norm_after` on the last layer only, and a segment mean on the device with no
host synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.models.attention import padded_attention, varlen_attention, varlen_available
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


def attention_inputs(x, ln_w, ln_b, qkv_w, qkv_b, cos, sin, heads: int):
    """Pre-norm, fused QKV projection and rotary (fp32 math): (T, D) -> q, k, v as (T, H, Dh)."""
    T, d = x.shape
    qkv = F.linear(F.layer_norm(x, (d,), ln_w, ln_b, LAYER_NORM_EPS), qkv_w, qkv_b).view(T, 3, heads, d // heads)
    q, k, v = qkv.unbind(1)
    q = (q.float() * cos + _rotate_half(q.float()) * sin).to(x.dtype)
    k = (k.float() * cos + _rotate_half(k.float()) * sin).to(x.dtype)
    return q, k, v.contiguous()


def attention_output_and_mlp(x, a, out_w, out_b, ln_w, ln_b, fc1_w, fc1_b, fc2_w, fc2_b):
    """Output projection + residual, then pre-norm MLP with ESM's erf gelu + residual."""
    T, d = x.shape
    x = x + F.linear(a.reshape(T, d), out_w, out_b)
    h = F.gelu(F.linear(F.layer_norm(x, (d,), ln_w, ln_b, LAYER_NORM_EPS), fc1_w, fc1_b))
    return x + F.linear(h, fc2_w, fc2_b)


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

    def forward(self, x, cos, sin, cu_seqlens, max_len, positions, seq_ids, use_varlen: bool, kernels):
        pre, post = kernels
        q, k, v = pre(x, self.ln1.weight, self.ln1.bias, self.qkv.weight, self.qkv.bias, cos, sin, self.heads)
        if use_varlen:
            a = varlen_attention(q, k, v, cu_seqlens, max_len)
        else:
            a = padded_attention(q, k, v, cu_seqlens, max_len, positions, seq_ids)
        return post(x, a, self.out.weight, self.out.bias, self.ln2.weight, self.ln2.bias, self.fc1.weight,
                    self.fc1.bias, self.fc2.weight, self.fc2.bias)


class PackedESM2(nn.Module):
    """ESM-2 embedding model for packed batches. Build with `from_state_dict`."""

    def __init__(self, spec: ModelSpec, cls_idx: int, eos_idx: int):
        super().__init__()
        self.spec = spec
        self.cls_idx, self.eos_idx = cls_idx, eos_idx
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.embed_dim)
        self.layers = nn.ModuleList(PackedLayer(spec.embed_dim, spec.attention_heads) for _ in range(spec.num_layers))
        self.emb_layer_norm_after = nn.LayerNorm(spec.embed_dim, eps=LAYER_NORM_EPS)
        self.register_buffer("inv_freq", rotary_inv_freq(spec.head_dim), persistent=False)
        self.kernels = (attention_inputs, attention_output_and_mlp)

    def compile_kernels(self) -> None:
        """torch.compile the dense parts of a layer (attention stays eager between them).

        They are free functions of weight tensors, so one compiled graph serves all layers; the runner pads
        every batch to the token budget, so there is one shape and no recompilation.
        """
        self.kernels = (torch.compile(attention_inputs, dynamic=False),
                        torch.compile(attention_output_and_mlp, dynamic=False))

    @classmethod
    @torch.no_grad()
    def from_state_dict(cls, spec: ModelSpec, state: dict[str, torch.Tensor], cls_idx: int, eos_idx: int,
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "PackedESM2":
        """Build from fair-esm parameter names (prefix-stripped), fusing q/k/v into one projection."""
        with torch.device("meta"):
            model = cls(spec, cls_idx, eos_idx)
        model = model.to_empty(device=device)
        model.inv_freq.copy_(rotary_inv_freq(spec.head_dim, device))

        def put(param: torch.Tensor, *names: str) -> None:
            param.copy_(torch.cat([state[n].to(device=device, dtype=torch.float32) for n in names]))

        put(model.embed_tokens.weight, "embed_tokens.weight")
        for i, layer in enumerate(model.layers):
            p = f"layers.{i}."
            qkv = [p + f"self_attn.{m}_proj" for m in ("q", "k", "v")]
            put(layer.qkv.weight, *(n + ".weight" for n in qkv))
            put(layer.qkv.bias, *(n + ".bias" for n in qkv))
            for mine, theirs in (("out", "self_attn.out_proj"), ("fc1", "fc1"), ("fc2", "fc2"),
                                 ("ln1", "self_attn_layer_norm"), ("ln2", "final_layer_norm")):
                put(getattr(layer, mine).weight, p + theirs + ".weight")
                put(getattr(layer, mine).bias, p + theirs + ".bias")
        put(model.emb_layer_norm_after.weight, "emb_layer_norm_after.weight")
        put(model.emb_layer_norm_after.bias, "emb_layer_norm_after.bias")
        model.to(dtype)
        model.inv_freq.data = model.inv_freq.data.float()  # rotary tables stay fp32 at any precision
        return model.eval().requires_grad_(False)

    def embed(self, batch, repr_layer: int | None = None) -> torch.Tensor:
        """`forward` on a PackedBatch already on this model's device."""
        return self(batch.tokens, batch.positions, batch.cu_seqlens, batch.seq_ids, batch.max_len,
                    batch.num_sequences, repr_layer)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cu_seqlens: torch.Tensor, seq_ids: torch.Tensor,
                max_len: int, num_seqs: int, repr_layer: int | None = None) -> torch.Tensor:
        """Packed tokens (T,) -> (num_seqs, D) fp32 mean over residues (BOS/EOS excluded) of `repr_layer`.

        cu_seqlens may describe more segments than `num_seqs`: a trailing padding segment is computed (as its
        own sequence, so attention never mixes it with real tokens) and dropped.
        """
        n_layers = self.spec.num_layers
        repr_layer = n_layers if repr_layer is None else repr_layer
        x = self.embed_tokens(tokens)
        if self.spec.token_dropout:
            x = x * TOKEN_DROPOUT_SCALE
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # (T, 1, Dh)
        cos, sin = emb.cos(), emb.sin()
        use_varlen = varlen_available(x.device, x.dtype)
        for layer in self.layers[:repr_layer]:
            x = layer(x, cos, sin, cu_seqlens, max_len, positions, seq_ids, use_varlen, self.kernels)
        if repr_layer == n_layers:
            x = self.emb_layer_norm_after(x)
        residue = ((tokens != self.cls_idx) & (tokens != self.eos_idx)).unsqueeze(-1)
        segments = cu_seqlens.numel() - 1
        sums = torch.zeros(segments, x.shape[-1], device=x.device, dtype=torch.float32)
        sums.index_add_(0, seq_ids, torch.where(residue, x.float(), 0.0))
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1] - 2).clamp_min(1).to(torch.float32)
        return (sums / lengths[:, None])[:num_seqs]
