"""Shared fixtures: tiny fair-esm checkpoints written in the real file format, small FASTA files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virnucpro.models.weights import write_fairesm_checkpoint


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
