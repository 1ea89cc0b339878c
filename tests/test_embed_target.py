"""The `embed` target: token-balanced shards, the verified gather into a virtual dataset, the local workflow run
(3 shards equal one `virnucpro embed`), odd ids, and the production report."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_workflow import copy_project, job_counts, shell_commands, snakemake
from virnucpro.data.fasta import write_fasta
from virnucpro.data.synthetic import make_sequences
from virnucpro.data.windows import window_starts
from virnucpro.errors import UserError
from virnucpro.pipeline.gather import gather
from virnucpro.pipeline.input_check import file_sha256, input_changed_unseen
from virnucpro.pipeline.shards import cut_points, prepare_shard_outdir, split_fasta
from virnucpro.report import embed_report

ODD_IDS = ["sp/P12345/a/b", "séquence_β_ü_病毒", "L" + "o" * 3000 + "ng", "x"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(3, 1024), min_size=1, max_size=300), st.integers(1, 12))
def test_cuts_are_contiguous_nonempty_and_balanced(tokens, shards):
    tokens = np.array(tokens, dtype=np.int32)
    shards = min(shards, len(tokens))
    starts = cut_points(tokens, shards)
    bounds = starts + [len(tokens)]
    assert starts[0] == 0 and all(a < b for a, b in zip(bounds, bounds[1:]))  # contiguous, each non-empty
    total, biggest = int(tokens.sum()), int(tokens.max())
    if biggest < total / shards:  # no record larger than a shard's share: each cut is within a record of k/K
        for a, b in zip(bounds, bounds[1:]):
            assert abs(int(tokens[a:b].sum()) - total / shards) <= biggest


def read_records(path: Path) -> list[tuple[str, str]]:
    records, rid = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(">"):
            rid = line[1:]
            records.append([rid, ""])
        else:
            records[-1][1] += line
    return [tuple(r) for r in records]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 60), st.integers(1, 6), st.integers(0, 10**6))
def test_split_writes_every_record_once_in_input_order(tmp_path_factory, n, shards, seed):
    tmp = tmp_path_factory.mktemp("split")
    ids, seqs = make_sequences(n, seed, "seed-mix")
    ids = [f"{ODD_IDS[i % len(ODD_IDS)]}_{i}" for i in range(n)]
    write_fasta(tmp / "in.fa", ids, seqs)
    shards = min(shards, n)
    manifest = split_fasta(tmp / "in.fa", shards, tmp / "shards", tmp / "manifest.json")
    got = [rec for k in range(shards) for rec in read_records(tmp / "shards" / f"{k}.fasta")]
    assert got == list(zip(ids, seqs))
    rows = manifest["shards"]
    assert [r["first"] for r in rows] == [sum(r["sequences"] for r in rows[:k]) for k in range(shards)]
    assert sum(r["tokens"] for r in rows) == manifest["total_tokens"] == sum(min(len(s), 1022) + 2 for s in seqs)


def test_chunked_long_proteins_balance_by_their_windows(tmp_path):
    # one 10,000-residue protein (11 windows of 1,024 tokens with overlap 256) among 300 short reads: counted
    # truncated it looks like 1,024 tokens and its shard would carry ~11x the work of the others
    ids, seqs = make_sequences(300, 1, "short-reads")
    ids, seqs = ["long", *ids], ["M" * 10_000, *seqs]
    write_fasta(tmp_path / "in.fa", ids, seqs)
    truncated = split_fasta(tmp_path / "in.fa", 2, tmp_path / "a", tmp_path / "a.json")
    chunked = split_fasta(tmp_path / "in.fa", 2, tmp_path / "b", tmp_path / "b.json", window_overlap=256)
    windows = len(window_starts(10_000, 256))
    assert chunked["total_tokens"] - truncated["total_tokens"] == 1024 * (windows - 1)
    assert chunked["window_overlap"] == 256 and truncated["window_overlap"] is None
    assert chunked["shards"][0]["sequences"] < truncated["shards"][0]["sequences"]  # the long one's shard is smaller
    assert sum(r["sequences"] for r in chunked["shards"]) == 301


def test_split_refuses_an_id_repeated_across_shards_and_too_many_shards(tmp_path):
    (tmp_path / "dup.fa").write_text(">a\nMKV\n>b\nMKV\n>c\nMKV\n>a\nMKV\n")
    with pytest.raises(UserError, match="duplicate record id 'a' \\(lines 1 and 7\\)"):
        split_fasta(tmp_path / "dup.fa", 2, tmp_path / "s", tmp_path / "m.json")
    (tmp_path / "two.fa").write_text(">a\nMKV\n>b\nMKV\n")
    with pytest.raises(UserError, match="2 sequences cannot make 3 shards"):
        split_fasta(tmp_path / "two.fa", 3, tmp_path / "s", tmp_path / "m.json")
    (tmp_path / "bad.fa").write_text(">a\nMKV\n>b\nMK1V\n")
    with pytest.raises(UserError, match="record 'b' \\(line 3\\) has invalid character '1'"):
        split_fasta(tmp_path / "bad.fa", 1, tmp_path / "s", tmp_path / "m.json")


def test_checkpoints_of_another_input_are_discarded_and_those_of_the_same_input_kept(tmp_path):
    fasta, out = tmp_path / "0.fasta", tmp_path / "out"
    fasta.write_text(">a\nMKV\n")
    partial = out / ".partial"
    partial.mkdir(parents=True)
    (partial / "chunk_r0_x.h5").write_bytes(b"rows")
    (out / "attempts.jsonl").write_text('{"event": "start", "started": 1.0}\n')
    same = hashlib.sha256(fasta.read_bytes()).hexdigest()
    (partial / "manifest.json").write_text(json.dumps({"input_sha256": same}))
    assert prepare_shard_outdir(out, fasta, file_sha256(fasta)) is None and (partial / "chunk_r0_x.h5").is_file()
    assert (out / "attempts.jsonl").is_file()  # the attempts of the run this one resumes
    (partial / "manifest.json").write_text(json.dumps({"input_sha256": "0" * 64}))
    assert "another input" in prepare_shard_outdir(out, fasta, file_sha256(fasta)) and not partial.exists()
    assert (out / "attempts.jsonl").is_file()  # kept: those attempts spent GPU time on this shard too
    assert prepare_shard_outdir(out, fasta, file_sha256(fasta)) is None  # nothing left to discard


def fake_shards(root: Path, n=30, shards=3, dim=4) -> tuple[Path, list[Path], np.ndarray]:
    """A split of an n-record FASTA and shard outputs shaped like `virnucpro embed`'s (rows are row numbers)."""
    ids, seqs = make_sequences(n, 1, "short-reads")
    ids[1:5] = ODD_IDS
    write_fasta(root / "in.fa", ids, seqs)
    embed = root / "results" / "embed"
    manifest = split_fasta(root / "in.fa", shards, embed / "input", embed / "manifest.json")
    rows = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    dirs = []
    for entry in manifest["shards"]:
        d = embed / "shards" / str(entry["index"])
        d.mkdir(parents=True)
        write_shard(d, ids[entry["first"] : entry["last"] + 1], rows[entry["first"] : entry["last"] + 1], entry)
        dirs.append(d)
    return embed / "manifest.json", dirs, rows


def write_shard(d: Path, ids: list[str], rows: np.ndarray, entry: dict, **attrs) -> None:
    with h5py.File(d / "embeddings.h5", "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("embeddings", data=rows)
        base = {"model": "esm2_tiny", "weights": "random", "precision": "fp32", "gelu": "erf", "repr_layer": 2}
        for k, v in {**base, "output_dtype": "float32", "input_sha256": entry["sha256"], **attrs}.items():
            f.attrs[k] = v


def test_gather_writes_a_virtual_dataset_readable_from_elsewhere_and_after_a_move(tmp_path, monkeypatch):
    manifest, dirs, rows = fake_shards(tmp_path)
    out = tmp_path / "results" / "embed" / "embeddings.h5"
    attrs = gather(manifest, dirs, out)
    assert attrs["num_sequences"] == 30 and len(json.loads(json.dumps(attrs["shards"]))) == 3
    assert attrs["truncated_count"] == attrs["chunked_count"] == 0
    expected_ids = [rid for d in dirs for rid in h5py.File(d / "embeddings.h5")["ids"].asstr()[()]]
    monkeypatch.chdir(tmp_path.parent)  # another working directory
    with h5py.File(out) as f:
        assert f["embeddings"].is_virtual and np.array_equal(f["embeddings"][()], rows)
        assert f["ids"].asstr()[()].tolist() == expected_ids and expected_ids[1:5] == ODD_IDS
        assert f.attrs["input_sha256"] == json.loads(manifest.read_text())["input_sha256"]
        assert all(not Path(s.file_name).is_absolute() for s in f["embeddings"].virtual_sources())
    moved = tmp_path / "elsewhere" / "embed"
    shutil.move(tmp_path / "results" / "embed", moved)
    with h5py.File(moved / "embeddings.h5") as f:
        assert np.array_equal(f["embeddings"][()], rows)


def test_materialise_makes_a_self_contained_copy_and_refuses_rows_of_a_missing_shard(tmp_path, capsys):
    """A copy of the gathered file alone reads as NaN (its rows live in the shards' files): `materialise`
    writes every row into one file, in blocks, and refuses when a shard file is gone."""
    from virnucpro import cli
    from virnucpro.pipeline.gather import materialise

    manifest, dirs, rows = fake_shards(tmp_path)
    out = tmp_path / "results" / "embed" / "embeddings.h5"
    gather(manifest, dirs, out)
    alone = tmp_path / "mail" / "alone.h5"
    alone.parent.mkdir()
    shutil.copy(out, alone)
    with h5py.File(alone) as f:
        assert np.isnan(f["embeddings"][()]).all()  # what a user who copies the file alone gets
    copy = tmp_path / "mail" / "copy.h5"
    assert materialise(out, copy, block_rows=7) == 30  # blocks that straddle the shards' boundaries
    shutil.rmtree(tmp_path / "results")  # the copy needs nothing else
    with h5py.File(copy) as f:
        assert not f["embeddings"].is_virtual and np.array_equal(f["embeddings"][()], rows)
        assert f["ids"].asstr()[()].tolist()[1:5] == ODD_IDS and f.attrs["input_sha256"]
    manifest, dirs, rows = fake_shards(tmp_path / "again")
    out = tmp_path / "again" / "results" / "embed" / "embeddings.h5"
    gather(manifest, dirs, out)
    (dirs[1] / "embeddings.h5").unlink()
    assert cli.main(["materialise", str(out), "-o", str(tmp_path / "bad.h5")]) == 2
    assert "row 10 reads as NaN: a shard file it points to is missing" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5").exists() and not (tmp_path / "bad.h5.tmp").exists()


def _rewrite_ids(d: Path, change) -> None:
    with h5py.File(d / "embeddings.h5", "r+") as f:
        ids = change(f["ids"].asstr()[()].tolist())
        rows = f["embeddings"][()][: len(ids)]
        rows = np.vstack([rows, np.zeros((len(ids) - len(rows), rows.shape[1]), rows.dtype)])
        del f["ids"], f["embeddings"]
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("embeddings", data=rows)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ids: ids[:3] + ids[4:], "is missing"),
        (lambda ids: ids[:4] + [ids[3]] + ids[5:], "appears twice"),
        (lambda ids: ids[:2] + [ids[3], ids[2]] + ids[4:], "out of input order"),
        (lambda ids: ids + ["stranger"], "unexpected id 'stranger'"),
    ],
)
def test_gather_refuses_missing_duplicated_or_reordered_ids(tmp_path, change, message):
    manifest, dirs, _ = fake_shards(tmp_path)
    _rewrite_ids(dirs[1], change)
    with pytest.raises(UserError, match=message):
        gather(manifest, dirs, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize(
    "attrs, rows, message",
    [
        ({"precision": "bf16"}, None, "precision is 'bf16'"),
        ({"weights": "checkpoint"}, None, "weights is 'checkpoint'"),
        ({}, np.zeros((1, 8), np.float32), "width 8"),
        ({}, np.zeros((1, 4), np.float16), "dtype float16"),
        ({"input_sha256": "0" * 64}, None, "embedded another input"),
        ({"long_sequences": "chunk", "window_overlap": 128}, None, "long_sequences is 'chunk'"),
    ],
)
def test_gather_refuses_shards_that_disagree(tmp_path, attrs, rows, message):
    manifest, dirs, _ = fake_shards(tmp_path)
    entry = json.loads(manifest.read_text())["shards"][2]
    ids = h5py.File(dirs[2] / "embeddings.h5")["ids"].asstr()[()].tolist()
    data = np.zeros((len(ids), 4), np.float32) if rows is None else np.repeat(rows, len(ids), axis=0)
    write_shard(dirs[2], ids, data, entry, **attrs)
    with pytest.raises(UserError, match=message):
        gather(manifest, dirs, tmp_path / "out.h5")


def test_gather_cli_refuses_a_missing_shard_in_one_line(tmp_path):
    manifest, dirs, _ = fake_shards(tmp_path)
    (dirs[0] / "embeddings.h5").unlink()
    res = subprocess.run(
        [sys.executable, "-m", "virnucpro.cli", "gather", str(manifest), *map(str, dirs), "-o", str(tmp_path / "o.h5")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "scripts")},
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "missing" in res.stderr


def test_gather_refuses_a_damaged_job_record_by_name(tmp_path):
    manifest, dirs, _ = fake_shards(tmp_path)
    (dirs[1] / "job.json").write_text('{"settings": ')  # a job killed while writing it (or a disk that lost it)
    with pytest.raises(UserError, match=r"job.json: not valid JSON .*shard job record"):
        gather(manifest, dirs, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


# --- the workflow ------------------------------------------------------------------------------------------


def write_input(path: Path, n: int, seed: int = 3) -> list[str]:
    """Short reads whose ids include the odd ones (a slash, non-ASCII, 3,000 characters)."""
    ids, seqs = make_sequences(n, seed, "short-reads")
    for k, odd in enumerate(ODD_IDS):
        ids[k * (n // len(ODD_IDS))] = odd
    write_fasta(path, ids, seqs)
    return ids


def embed_config(root: Path, fasta: Path, checkpoint: Path | None, **embed) -> Path:
    model = (
        f"model:\n  name: ''\n  checkpoint: {json.dumps(str(checkpoint))}\n  random_weights: false\n  precision: fp32\n"
        if checkpoint
        else "model:\n  precision: fp32\n"
    )
    text = (
        f"input:\n  fasta: {json.dumps(str(fasta))}\n{model}"
        "engine:\n  device: cpu\n  token_budget: 1024\n  num_workers: 0\n  checkpoint_every: 20\n"
        "embed:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in {"shards": 3, **embed}.items())
    )
    (root / "embed.yaml").write_text(text)
    return root / "embed.yaml"


def single_embed(fasta: Path, outdir: Path, *model_args: str) -> Path:
    """One `virnucpro embed` of the whole input: the reference the gathered shards must equal."""
    res = subprocess.run(
        [sys.executable, "-m", "virnucpro.cli", "embed", str(fasta), "-o", str(outdir), *model_args]
        + ["--precision", "fp32", "--device", "cpu", "--token-budget", "2048", "--num-workers", "0"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "scripts")},
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return outdir / "embeddings.h5"


def assert_same_embeddings(gathered: Path, single: Path, ids: list[str]) -> None:
    with h5py.File(gathered) as g, h5py.File(single) as s:
        got_ids = g["ids"].asstr()[()].tolist()
        assert got_ids == s["ids"].asstr()[()].tolist() == ids and len(set(got_ids)) == len(ids)
        a, b = g["embeddings"][()], s["embeddings"][()]
    assert np.isfinite(a).all()
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    assert rel.max() <= 1e-5, rel.max()


@pytest.fixture(scope="module")
def embed_run(tmp_path_factory, tiny_checkpoint):
    root = copy_project(tmp_path_factory.mktemp("wf_embed"))
    fasta = root / "input.fa"
    ids = write_input(fasta, 90)
    embed_config(root, fasta, tiny_checkpoint)
    res = snakemake("embed", "--configfile", "ci.yaml", "embed.yaml", cwd=root, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return root, fasta, ids


def test_three_shards_equal_one_embed_of_the_same_input_and_checkpoint(embed_run, tiny_checkpoint, tmp_path):
    root, fasta, ids = embed_run
    single = single_embed(fasta, tmp_path / "single", "--checkpoint", str(tiny_checkpoint))
    assert_same_embeddings(root / "results/embed/embeddings.h5", single, ids)
    with h5py.File(root / "results/embed/embeddings.h5") as f:
        assert f.attrs["input_sha256"] == h5py.File(single).attrs["input_sha256"]  # the whole input's digest
        shards = json.loads(f.attrs["shards"])
        assert [s["rows"] for s in shards] == [
            s["sequences"] for s in json.loads((root / "results/embed/manifest.json").read_text())["shards"]
        ]
        assert json.loads(f.attrs["weights_provenance"])["sha256"] and f.attrs["precision"] == "fp32"
        assert json.loads(f.attrs["configuration"])["checkpoint_every"] == 20


def test_the_production_report_shows_shards_and_says_why_there_is_no_projection(embed_run):
    root, _, _ = embed_run
    summary = json.loads((root / "results/embed/summary.json").read_text())
    assert len(summary["shards"]) == 3 and summary["total_gpu_hours"] > 0
    assert all(s["attempts"] == 1 and s["wall_seconds"] > 0 and s["tokens_per_sec"] > 0 for s in summary["shards"])
    assert summary["projection"]["available"] is False and "use_best" in summary["projection"]["reason"]
    html = (root / "results/embed/report.html").read_text()
    assert "N/A: embed.use_best is false" in html and 'id="shards"' in html
    assert summary["overhead"]["available"] and summary["overhead"]["median_fixed_seconds"] > 0
    assert 'id="overhead"' in html
    assert summary["ran_on"]["devices"] == ["cpu"] and "The shard jobs ran on the CPU" in html
    assert "Copy or move the whole" in html  # the gathered file is a virtual dataset over the shards


def test_a_projection_from_the_best_configuration_is_set_against_the_run(embed_run, tmp_path):
    root, _, _ = embed_run
    embed = root / "results/embed"
    best = tmp_path / "best.json"
    best.write_text(
        json.dumps(
            {"label": "packing:b1024", "params": {"token_budget": 1024}, "steady": {"avg_tokens_per_sec": 1000.0}}
        )
    )
    dirs = [embed / "shards" / str(k) for k in range(3)]
    context = embed_report.build(embed / "manifest.json", dirs, embed / "embeddings.h5", best, 1)
    p = context["projection"]
    total = json.loads((embed / "manifest.json").read_text())["total_tokens"]
    assert p["available"] and p["projected_gpu_hours"] == pytest.approx(total / 1000.0 / 3600)
    assert p["ratio"] == pytest.approx(context["total_gpu_hours"] / p["projected_gpu_hours"])
    embed_report.write(context, tmp_path / "r.html", tmp_path / "s.json")
    assert "packing:b1024" in (tmp_path / "r.html").read_text()


def overhead_shard(fixed: float, loop: float, sequences: int, resumed: int = 0) -> dict:
    return {
        "sequences": sequences,
        "resumed_sequences": resumed,
        "fixed_seconds": fixed,
        "loop_seconds": loop,
        "job_seconds": fixed + loop + 1.0,  # + reading its input, which grows with it
        "fixed_phases": {"python_startup": fixed / 2, "load_weights": fixed / 2},
    }


def test_the_cost_of_splitting_is_the_fixed_cost_each_extra_job_pays_again():
    # issue 15's H100 run in round numbers: 4 shards of 250,000 reads, ~20 s outside a 120-s loop each
    o = embed_report.job_overhead([overhead_shard(20.0, 120.0, 250_000)] * 4)
    assert o["extra_vs_one_job"] == pytest.approx(3 * 20 / (4 * 141 - 3 * 20))  # one job pays 20 s once
    assert not o["within_limit"] and "11.9 % more GPU time" in o["advice"]
    rate = 250_000 / 120
    assert o["min_sequences_per_shard"] == math.ceil(20 / 0.05 * rate)  # loops >= F / limit: any count of shards
    assert o["fixed_by_phase"] == {"python_startup": 10.0, "load_weights": 10.0}
    at_minimum = o["min_sequences_per_shard"] / rate
    for k in (2, 4, 100):
        assert embed_report.job_overhead([overhead_shard(20.0, at_minimum, 1000)] * k)["within_limit"]
    # a resumed shard's completing attempt embedded half its shard in half the time: the same rate, the same cost
    resumed = embed_report.job_overhead(
        [overhead_shard(20.0, 120.0, 250_000)] * 3 + [overhead_shard(20.0, 60.0, 250_000, 125_000)]
    )
    assert resumed["sequences_per_loop_second"] == pytest.approx(rate)
    assert resumed["extra_vs_one_job"] == pytest.approx(o["extra_vs_one_job"])
    big = embed_report.job_overhead([overhead_shard(20.0, 1200.0, 2_500_000)] * 4)
    assert big["within_limit"] and big["advice"] is None and big["extra_vs_one_job"] < 0.05


def test_the_cost_of_splitting_is_na_unless_every_shard_has_phases():
    no_phases = {"sequences": 5, "fixed_seconds": None, "loop_seconds": None, "job_seconds": None}
    o = embed_report.job_overhead([overhead_shard(20.0, 120.0, 250_000), no_phases])
    assert o["available"] is False and "1 of 2 shards" in o["reason"]
    all_resumed = overhead_shard(20.0, 0.5, 10, resumed=10)  # killed after its last checkpoint, before finishing
    assert embed_report.job_overhead([all_resumed])["available"] is False


def test_a_rerun_does_nothing(embed_run):
    root, _, _ = embed_run
    res = snakemake("embed", "-n", "--configfile", "ci.yaml", "embed.yaml", cwd=root)
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr


def test_a_missing_shard_is_redone_and_a_changed_input_refused_even_when_the_result_exists(embed_run, tmp_path):
    """Snakemake does not redo a missing intermediate file, nor consider the split's input checks, while the
    target's files exist: the target names the shards and the input itself (a deleted shard read as NaN rows)."""
    root, fasta, _ = embed_run
    args = ("embed", "-n", "--configfile", "ci.yaml", "embed.yaml")
    rows = root / "results/embed/shards/1/embeddings.h5"
    rows.rename(tmp_path / "rows.h5")
    try:
        counts = job_counts(snakemake(*args, cwd=root).stdout)
        assert counts["embed_shard"] == 1 and counts["embed_gather"] == 1 and "embed_split" not in counts
    finally:
        (tmp_path / "rows.h5").rename(rows)
    other = tmp_path / "other.fa"
    shutil.copy(fasta, other)
    (tmp_path / "other.yaml").write_text(f"input:\n  fasta: {json.dumps(str(other))}\n")
    res = snakemake(*args, str(tmp_path / "other.yaml"), cwd=root)
    assert res.returncode != 0 and "holds the embedding of" in res.stdout + res.stderr
    # the same path, new content, an older modification time (cp -p, rsync -a): refused, not silently kept
    text, stat = fasta.read_bytes(), fasta.stat()
    try:
        fasta.write_bytes(text.replace(b"\nM", b"\nW", 1))
        os.utime(fasta, ns=(stat.st_atime_ns, stat.st_mtime_ns - 3_600 * 10**9))
        res = snakemake(*args, cwd=root)
        assert res.returncode != 0 and f"touch {fasta}" in res.stdout + res.stderr
    finally:
        fasta.write_bytes(text)
        os.utime(fasta, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "Nothing to be done" in snakemake(*args, cwd=root).stdout


def test_an_input_changed_behind_snakemakes_back_is_found_by_its_content(tmp_path):
    fasta, manifest = tmp_path / "in.fa", tmp_path / "manifest.json"
    write_fasta(fasta, ["a", "b"], ["MKV", "MKL"])
    assert input_changed_unseen(manifest, fasta) is None  # no split yet
    split_fasta(fasta, 2, tmp_path / "shards", manifest)
    assert input_changed_unseen(manifest, fasta) is None
    old = manifest.stat().st_mtime_ns - 10**9
    os.utime(fasta, ns=(old, old))  # same content, another time: read, found equal
    assert input_changed_unseen(manifest, fasta) is None
    write_fasta(fasta, ["a", "b"], ["MKV", "MKW"])
    assert input_changed_unseen(manifest, fasta) is None  # newer than the split: Snakemake redoes it
    os.utime(fasta, ns=(old, old))
    assert "changed since results/embed was split" in input_changed_unseen(manifest, fasta)


def test_the_split_refuses_a_long_sequence_when_the_shard_jobs_would(tmp_path):
    fasta = tmp_path / "in.fa"
    write_fasta(fasta, ["a", "long"], ["MKV", "M" * 1023])
    with pytest.raises(UserError, match=r"record 'long' .* 1023 residues.*engine.long_sequences"):
        split_fasta(fasta, 2, tmp_path / "shards", tmp_path / "m.json", refuse_long=True)
    assert not (tmp_path / "m.json").exists()
    assert split_fasta(fasta, 2, tmp_path / "shards", tmp_path / "m.json")["num_sequences"] == 2


def test_use_best_makes_the_target_run_the_sweeps_and_each_shard_apply_the_recommendation(tmp_path):
    root = copy_project(tmp_path / "wf")
    fasta = tmp_path / "in.fa"
    write_input(fasta, 20)
    embed_config(root, fasta, None, use_best=True, shards=4, gpus_per_job=2, allow_random_weights=True)
    res = snakemake("embed", "-n", "--configfile", "ci.yaml", "embed.yaml", cwd=root)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["embed_shard"] == 4 and counts["best_config"] == 1 and counts["sweep_point"] > 1
    assert counts["optimal_validation"] == 1 and counts["recommend"] == 1  # a winner runs only once validated
    shards = shell_commands(res.stdout, "embed_shard")
    assert all("--params-from results/sweeps/recommended.json" in c and "--world-size 2" in c for c in shards)
    assert "--best results/sweeps/recommended.json" in shell_commands(res.stdout, "embed_report")[0]
    slurm = snakemake("--profile", "profiles/slurm", "embed", "-n", "--configfile", "embed.yaml", cwd=root)
    assert slurm.returncode == 0, slurm.stderr
    jobs = [ln for ln in slurm.stdout.splitlines() if "resources:" in ln and "gpu=2" in ln and "runtime=240" in ln]
    assert len(jobs) == 4 and all("nodes=1" in ln for ln in jobs)


def test_the_target_refuses_random_weights_on_the_cluster_and_another_input_over_a_result(tmp_path):
    root = copy_project(tmp_path / "wf")
    fasta = tmp_path / "in.fa"
    write_input(fasta, 20)
    embed_config(root, fasta, None)
    slurm = snakemake("--profile", "profiles/slurm", "embed", "-n", "--configfile", "embed.yaml", cwd=root)
    assert slurm.returncode != 0 and "would embed with random weights" in slurm.stdout + slurm.stderr
    # results/embed holds another input's embedding (say, VIRNUCPRO_PRODUCTION_FASTA forgotten): refused
    (root / "results" / "embed").mkdir(parents=True)
    manifest = root / "results" / "embed" / "manifest.json"
    manifest.write_text(json.dumps({"input": str(tmp_path / "other.fa")}))
    res = snakemake("embed", "-n", "--configfile", "ci.yaml", "embed.yaml", cwd=root)
    assert res.returncode != 0 and "holds the embedding of" in res.stdout + res.stderr
    manifest.write_text(json.dumps({"input": str(fasta)}))  # the same input: planned as usual
    res = snakemake("embed", "-n", "--configfile", "ci.yaml", "embed.yaml", cwd=root)
    assert res.returncode == 0, res.stderr
    # a shard that reruns first removes the gathered file and its report (a virtual dataset over the shards
    # would otherwise mix old and new rows); it resumes its own checkpoints (no --overwrite: that starts anew)
    for cmd in shell_commands(res.stdout, "embed_shard"):
        assert "rm -f results/embed/embeddings.h5 results/embed/report.html" in cmd.split("&&")[0], cmd
        assert "--overwrite" not in cmd, cmd


def test_the_split_refuses_a_token_budget_a_sequence_cannot_fit(tmp_path):
    """Before any shard job is submitted (Slurm would retry each one, with ever larger requests)."""
    fasta = tmp_path / "in.fa"
    write_fasta(fasta, ["a", "b", "c"], ["MKV", "M" * 60, "MK"])
    with pytest.raises(
        UserError, match=r"in.fa: token budget 50 is smaller .* \(62 tokens with BOS/EOS, input record #2\)"
    ):
        split_fasta(fasta, 2, tmp_path / "s", tmp_path / "m.json", token_budget=50)
    write_fasta(fasta, ["a", "b", "c"], ["MKV", "M" * 60, "M" * 2000])
    # a window holds at most 1,022 residues: the 2,000-residue record needs 1,024 tokens, truncated or chunked
    with pytest.raises(UserError, match=r"\(1024 tokens with BOS/EOS, input record #3\)"):
        split_fasta(fasta, 2, tmp_path / "s", tmp_path / "m.json", token_budget=1000, window_overlap=100)
    assert not (tmp_path / "m.json").exists()
    assert split_fasta(fasta, 2, tmp_path / "s", tmp_path / "m.json", token_budget=1024)["num_sequences"] == 3


def test_editing_one_record_redoes_only_its_shard_and_new_settings_replace_old_results(tmp_path, tiny_checkpoint):
    """A re-split rewrites every shard file, so Snakemake reruns every shard job: the unchanged shards reuse their
    finished embeddings (a hard link kept beside the output) instead of embedding again; the edited one is redone,
    and the gathered result equals one embed of the edited input."""
    root = copy_project(tmp_path / "wf")
    fasta = root / "input.fa"
    ids = write_input(fasta, 60)
    embed_config(root, fasta, tiny_checkpoint)
    args = ("embed", "--configfile", "ci.yaml", "embed.yaml")
    assert snakemake(*args, cwd=root, timeout=1200).returncode == 0
    text = fasta.read_text().splitlines()
    text[-1] = "W" + text[-1][1:]  # the last record: in the last shard only
    fasta.write_text("\n".join(text) + "\n")
    res = snakemake(*args, cwd=root, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    logs = {k: (root / f"results/logs/embed/shard_{k}.log").read_text() for k in range(3)}
    for k in (0, 1):
        assert "unchanged since this shard finished with the same settings" in logs[k] and "already complete" in logs[k]
        attempts = [
            json.loads(ln) for ln in (root / f"results/embed/shards/{k}/attempts.jsonl").read_text().splitlines()
        ]
        assert [a["event"] for a in attempts] == ["start", "end"] * 2  # both tries are on record
    assert "reused" not in logs[2] and "embedded" in logs[2]
    kept = (root / "results/embed/shards/0/attempts.log").read_text().split("=== attempt ended ")[1:]
    assert len(kept) == 2 and all(", exit 0, Slurm job none\n" in k for k in kept)  # each attempt's whole log
    assert "embedded" in kept[0] and "reused" in kept[1]
    # the report counts the attempts behind this result: the reused shards' two, the edited shard's new one
    # (its first attempt embedded the old content: shown apart, as GPU time spent on earlier inputs)
    rows = json.loads((root / "results/embed/summary.json").read_text())["shards"]
    assert [(r["attempts"], r["earlier_attempts"]) for r in rows] == [(2, 0), (2, 0), (1, 1)]
    assert rows[2]["earlier_gpu_hours"] > 0
    single = single_embed(fasta, tmp_path / "single", "--checkpoint", str(tiny_checkpoint))
    assert_same_embeddings(root / "results/embed/embeddings.h5", single, ids)
    # a shard directory holding another configuration's finished result: the job replaces it, as asked
    shard = root / "results/embed/shards/0"
    res = subprocess.run(
        [sys.executable, "-m", "virnucpro.cli", "embed-shard", str(root / "results/embed/input/0.fasta")]
        + ["-o", str(shard), "--checkpoint", str(tiny_checkpoint), "--repr-layer", "1", "--device", "cpu"]
        + ["--precision", "fp32", "--num-workers", "0", "--record", str(tmp_path / "job.json")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "scripts")},
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "is a complete result of another configuration (differs in" in res.stderr and "discarded" in res.stderr
    with h5py.File(shard / "embeddings.h5") as f:
        assert json.loads(f.attrs["fingerprint"])["repr_layer"] == 1
