"""`virnucpro bench`: the peers run at their best (pooling on the device once per batch, a budget grid, fp16 and
bf16) with extract.py's recipe as its own row, and `bench engines` end to end on CPU with a tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from virnucpro.data.synthetic import make_sequences

ROOT = Path(__file__).resolve().parents[1]


def test_pooling_once_per_batch_equals_extract_py_per_sequence_pooling(tiny_checkpoint):
    from esm.data import Alphabet

    from virnucpro.bench import fair_esm_embed, fair_esm_model
    from virnucpro.models.weights import load_checkpoint

    w = load_checkpoint(tiny_checkpoint)
    model = fair_esm_model(w.spec, w.state_dict, torch.device("cpu"), torch.float32)
    alphabet = Alphabet.from_architecture("ESM-1b")
    seqs = make_sequences(20, 3, "seed-mix")[1][:10] + ["M", "MK", "X" * 5] + make_sequences(20, 3, "short-reads")[1]
    batched, toks_a = fair_esm_embed(model, alphabet, seqs, 2048, torch.device("cpu"), pool_on_device=True)
    single, toks_b = fair_esm_embed(model, alphabet, seqs, 2048, torch.device("cpu"), pool_on_device=False)
    assert toks_a == toks_b == sum(min(len(s), 1022) + 2 for s in seqs)
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)  # BOS, EOS and padding excluded alike
    assert np.abs(batched).sum(1).min() > 0


def test_bench_engines_on_cpu_with_a_tiny_model(tiny_checkpoint, tmp_path):
    out = tmp_path / "engines.json"
    cmd = [
        sys.executable,
        "-m",
        "virnucpro.cli",
        "bench",
        "engines",
        "--checkpoint",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        "--seed-mix",
        "0",
        "--short-reads",
        "16",
        "--peer-subset",
        "16",
        "--fp32-subset",
        "6",
        "--peer-budgets",
        "1024,2048",
        "--token-budget",
        "2048",
        "--engine-precisions",
        "bf16",
        "--workdir",
        str(tmp_path / "work"),
        "-o",
        str(out),
    ]
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["runs"]
    assert {r["workload"] for r in rows} == {"short-reads"}  # seed-mix left out: fp16 on a CPU is slow
    for profile in ("short-reads",):
        mine = [r for r in rows if r["workload"] == profile]
        [extract] = [r for r in mine if r["kind"] == "extract.py"]
        assert extract["dtype"] == "float32" and extract["token_budget"] == 4096 and extract["sequences"] == 6
        assert "extract.py recipe" in extract["engine"] and "per-sequence pooling" in extract["engine"]
        fair = [r for r in mine if r["kind"] == "fair-esm"]
        assert sorted(r["dtype"] for r in fair) == ["bfloat16", "float16"]
        for r in fair:  # a budget chosen from the grid: the fastest of those tried
            grid = {g["token_budget"]: g["tokens_per_sec"] for g in r["budget_grid"]}
            assert set(grid) == {1024, 2048} and r["token_budget"] == max(grid, key=grid.get)
            assert r["max_rel_diff_vs_fp32"] < 0.05 and "pooled on device" in r["engine"]
        hf = [r for r in mine if r["kind"] == "hf"]
        assert hf or all("not installed" in why for k, why in result["na"].items() if k.startswith("hf"))
        [engine] = [r for r in mine if r["kind"] == "virnucpro"]
        assert engine["sequences"] == 16 and engine["tokens_per_sec"] > 0
    assert "x fair-esm" in res.stdout.replace("xfair-esm", "x fair-esm") and "extract.py" in res.stdout


def test_bench_engines_without_peers_reports_both_ceilings(monkeypatch, tmp_path, capsys):
    """`--peer-subset 0`: this engine alone (a short device call), each row's % of the bf16 and fp8 ceilings."""
    from virnucpro import bench
    from virnucpro.models.weights import resolve_weights

    def no_peers(*args, **kwargs):
        raise AssertionError("peers ran with --peer-subset 0")

    def engine_run(fasta, out, weights_args, precision, token_budget, device):
        row = {"engine": f"virnucpro packed {precision}", "kind": "virnucpro", "dtype": precision}
        return {**row, "token_budget": token_budget, "sequences": 4, "tokens_per_sec": 1e3, "sequences_per_sec": 10.0}

    monkeypatch.setattr(bench, "peer_runs", no_peers)
    monkeypatch.setattr(bench, "_engine_run", engine_run)
    monkeypatch.setattr(bench, "matmul_tflops", lambda device, dtype: 2.0 if dtype == torch.float8_e4m3fn else 1.0)
    weights = resolve_weights("esm2_t6_8M_UR50D", None, True, 0, "cpu")
    result = bench.engines(weights, [], tmp_path, torch.device("cpu"), 0, 8, 0, 4, 2048, precisions=("bf16", "fp8"))
    assert result["na"] == {"peers": "left out (--peer-subset 0)"}
    assert [r["dtype"] for r in result["runs"]] == ["bf16", "fp8"]
    for r in result["runs"]:  # twice the TFLOP/s: half the share of the ceiling
        assert r["pct_fp8_ceiling"] == pytest.approx(r["pct_ceiling"] / 2)
    bench.print_table(result)
    out = capsys.readouterr().out
    assert "%fp8" in out and "peers: N/A (left out (--peer-subset 0))" in out
