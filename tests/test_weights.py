"""Weight sources: checkpoint files, hub cache, explicit random weights; never a silent fallback."""

from __future__ import annotations

import h5py
import pytest
import torch

from virnucpro.cli import main
from virnucpro.errors import UserError
from virnucpro.models.weights import (
    ARCHITECTURES,
    load_checkpoint,
    random_state_dict,
    required_keys,
    resolve_weights,
    write_fairesm_checkpoint,
)


def test_random_weights_deterministic_per_seed():
    spec = ARCHITECTURES["esm2_t6_8M_UR50D"]
    a, b, c = random_state_dict(spec, 1), random_state_dict(spec, 1), random_state_dict(spec, 2)
    assert set(a) == set(required_keys(spec))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.fc1.weight"], c["layers.0.fc1.weight"])


def test_random_weights_do_not_depend_on_reading_order():
    """Each tensor is generated when read (a consumer that casts per tensor never holds the fp32 model)."""
    spec = ARCHITECTURES["esm2_t6_8M_UR50D"]
    forward, backward = random_state_dict(spec, 3), random_state_dict(spec, 3)
    names = list(forward)
    later = {k: backward[k] for k in reversed(names)}
    assert all(torch.equal(forward[k], later[k]) for k in names)
    assert forward["layers.5.final_layer_norm.weight"].mean().item() == pytest.approx(1.0, abs=0.01)


def test_half_precision_build_makes_no_full_precision_copy_of_the_projections():
    """ESM-2 15B in bf16 on an 80 GB card: the linear layers must go straight to bf16, never through fp32
    tensors of their size on the device (that doubled the build's memory)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from virnucpro.data.loader import Vocabulary
    from virnucpro.models.packed_esm2 import PackedESM2
    from virnucpro.models.weights import ModelSpec

    spec = ModelSpec(2, 64, 4)
    state = dict(random_state_dict(spec, 0))  # the source itself may be fp32 (a checkpoint on the CPU)
    created = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    created.append((str(func), t.dtype, t.numel()))
            return out

    vocab = Vocabulary.esm2()
    with Record():
        model = PackedESM2.from_state_dict(spec, state, vocab.cls_idx, vocab.eos_idx, "cpu", torch.bfloat16)
    big_fp32 = [c for c in created if c[1] == torch.float32 and c[2] >= spec.embed_dim**2]
    assert not big_fp32, big_fp32[:3]
    assert model.layers[0].qkv.weight.dtype == torch.bfloat16
    expected = torch.cat([state[f"layers.0.self_attn.{m}_proj.weight"] for m in "qkv"]).to(torch.bfloat16)
    assert torch.equal(model.layers[0].qkv.weight, expected)


def test_no_silent_fallback_to_random(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="no weights for esm2_t6_8M_UR50D.*--random-weights"):
        resolve_weights("esm2_t6_8M_UR50D", None, False, 0)


def test_hub_cache_is_used(tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "hub" / "checkpoints" / "esm2_t6_8M_UR50D.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tiny_checkpoint.read_bytes())
    w = resolve_weights("esm2_t6_8M_UR50D", None, False, 0)
    assert w.provenance["weights"] == "checkpoint" and w.provenance["path"] == str(cached)


def test_checkpoint_provenance_has_sha256(tiny_checkpoint):
    w = load_checkpoint(tiny_checkpoint)
    assert w.spec.num_layers == 2 and len(w.provenance["sha256"]) == 64


def test_foreign_pickle_refused(tmp_path):
    bad = tmp_path / "esm2_evil.pt"
    torch.save({"cfg": {"model": object()}, "model": {}}, bad)
    with pytest.raises(UserError, match="cannot load as a fair-esm checkpoint"):
        load_checkpoint(bad)
    junk = tmp_path / "esm2_junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load") as refused:
        load_checkpoint(junk)
    assert "weights_only` set to `False`" not in str(refused.value)  # torch's advice, wrong for a non-checkpoint
    with pytest.raises(UserError, match="weights-only load refuses") as refused:
        load_checkpoint(bad)
    assert "weights_only` set to `False`" not in str(refused.value)


def test_random_weights_recorded_in_output(tmp_path):
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMKV\n>b\nWWC\n")
    assert (
        main(
            [
                "embed",
                str(fasta),
                "-o",
                str(tmp_path / "o"),
                "--model",
                "esm2_t6_8M_UR50D",
                "--random-weights",
                "--seed",
                "5",
                "--device",
                "cpu",
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    with h5py.File(tmp_path / "o" / "embeddings.h5") as f:
        assert f.attrs["weights"] == "random"
        assert '"seed": 5' in f.attrs["weights_provenance"]
        assert f["embeddings"].shape == (2, 320)


def test_a_checkpoint_digest_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    """Every shard job hashed the whole checkpoint (5.7 GB for 3B: ~4 s); unchanged, it is hashed once."""
    from virnucpro.utils import digests

    monkeypatch.setenv("VIRNUCPRO_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = write_fairesm_checkpoint(tmp_path / "esm2_digest.pt")
    hashed = []
    real = digests.sha256_file
    monkeypatch.setattr(digests, "sha256_file", lambda p: hashed.append(p) or real(p))
    first = load_checkpoint(ckpt).provenance["sha256"]
    assert load_checkpoint(ckpt).provenance["sha256"] == first == real(ckpt) and len(hashed) == 1
    write_fairesm_checkpoint(ckpt, seed=1)  # rewritten in place: other bytes, a new stamp
    second = load_checkpoint(ckpt).provenance["sha256"]
    assert second == real(ckpt) != first and len(hashed) == 2
    moved = ckpt.rename(tmp_path / "esm2_moved.pt")  # another path: hashed for itself
    assert load_checkpoint(moved).provenance["sha256"] == second and len(hashed) == 3


def test_an_unwritable_digest_cache_is_ignored(tmp_path, monkeypatch):
    from virnucpro.utils import digests

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory would be")
    monkeypatch.setenv("VIRNUCPRO_CACHE_DIR", str(blocker))
    ckpt = write_fairesm_checkpoint(tmp_path / "esm2_nocache.pt")
    assert load_checkpoint(ckpt).provenance["sha256"] == digests.sha256_file(ckpt)
