"""Weight sources: checkpoint files, hub cache, explicit random weights; never a silent fallback."""

from __future__ import annotations

import h5py
import pytest
import torch

from virnucpro.cli import main
from virnucpro.errors import UserError
from virnucpro.models.weights import ARCHITECTURES, load_checkpoint, random_state_dict, required_keys, resolve_weights


def test_random_weights_deterministic_per_seed():
    spec = ARCHITECTURES["esm2_t6_8M_UR50D"]
    a, b, c = random_state_dict(spec, 1), random_state_dict(spec, 1), random_state_dict(spec, 2)
    assert set(a) == set(required_keys(spec))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.fc1.weight"], c["layers.0.fc1.weight"])


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
    with pytest.raises(UserError, match="cannot load"):
        load_checkpoint(junk)


def test_random_weights_recorded_in_output(tmp_path):
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMKV\n>b\nWWC\n")
    assert main(["embed", str(fasta), "-o", str(tmp_path / "o"), "--model", "esm2_t6_8M_UR50D", "--random-weights",
                 "--seed", "5", "--device", "cpu", "--num-workers", "0"]) == 0
    with h5py.File(tmp_path / "o" / "embeddings.h5") as f:
        assert f.attrs["weights"] == "random"
        assert '"seed": 5' in f.attrs["weights_provenance"]
        assert f["embeddings"].shape == (2, 320)
