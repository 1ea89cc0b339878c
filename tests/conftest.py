"""Shared fixtures: tiny fair-esm checkpoints written in the real file format, small FASTA files."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch


def write_fairesm_checkpoint(
    path: Path, num_layers: int = 2, embed_dim: int = 64, heads: int = 4, seed: int = 0
) -> Path:
    """Write `path` (stem must start with 'esm2') and its -contact-regression.pt neighbour like fair-esm's files.

    Every parameter gets random values (not fair-esm's init, whose zero biases and unit norms would hide bugs).
    """
    from esm.model.esm2 import ESM2

    torch.manual_seed(seed)
    model = ESM2(num_layers=num_layers, embed_dim=embed_dim, attention_heads=heads)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    state = model.state_dict()
    regression = {k: state.pop(k) for k in list(state) if k.startswith("contact_head.")}
    packed = {("encoder." if k.startswith("lm_head") else "encoder.sentence_encoder.") + k: v for k, v in state.items()}
    cfg = argparse.Namespace(
        encoder_layers=num_layers,
        encoder_embed_dim=embed_dim,
        encoder_attention_heads=heads,
        token_dropout=True,
        arch="roberta_large",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": {"model": cfg}, "model": packed}, path)
    torch.save({"model": regression}, path.with_name(path.stem + "-contact-regression.pt"))
    return path


@pytest.fixture(scope="session", autouse=True)
def digest_cache(tmp_path_factory) -> Path:
    """Checkpoint digests are remembered in a cache directory of the test session, not the user's ~/.cache
    (jobs the tests start inherit the variable)."""
    path = tmp_path_factory.mktemp("digest-cache")
    os.environ["VIRNUCPRO_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_fairesm_checkpoint(tmp_path_factory.mktemp("ckpt") / "esm2_tiny_test.pt")


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
