"""`snakemake --profile profiles/slurm` against a real Slurm: a one-node cluster started by tests/slurm/cluster.sh.

Skipped (with the reason) where the cluster cannot be started: not root, or Slurm missing and no apt-get.
With VIRNUCPRO_REQUIRE_SLURM set (CI) a skip becomes a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import h5py
import pytest

from test_workflow import ROOT, copy_project

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the test Slurm cluster needs root (to start slurmctld/slurmd and write /etc/slurm)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "Slurm is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        if os.environ.get("VIRNUCPRO_REQUIRE_SLURM"):
            pytest.fail(f"VIRNUCPRO_REQUIRE_SLURM is set but: {reason}")
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    up = subprocess.run(["bash", str(CLUSTER), "up", str(state)], capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        subprocess.run(["bash", str(CLUSTER), "down", str(state)], capture_output=True, timeout=120)
        pytest.fail(f"could not start the test cluster:\n{up.stderr[-3000:]}")
    yield state
    down = subprocess.run(["bash", str(CLUSTER), "down", str(state)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr


def log_sbatch_calls(root) -> None:
    """Every sbatch call is logged (then run) through root/bin/sbatch: the tests read what the plugin asked for."""
    wrappers = root / "bin"
    wrappers.mkdir()
    (wrappers / "sbatch").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {root / "sbatch.calls"}\nexec {shutil.which("sbatch")} "$@"\n'
    )
    (wrappers / "sbatch").chmod(0o755)


def squeue() -> list[tuple[str, str, str]]:
    out = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T"], capture_output=True, text=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.count("|") == 2]


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The whole workflow through Slurm; the 2-rank production job is cancelled once while it runs."""
    root = copy_project(tmp_path_factory.mktemp("wf_slurm"))
    shutil.copy(ROOT / "tests" / "data" / "slurm_ci.yaml", root / "slurm_ci.yaml")
    log_sbatch_calls(root)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "profiles/slurm",
        "--configfile",
        "ci.yaml",
        "slurm_ci.yaml",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--jobs",
        "4",
    ]
    returncode, output, cancelled = run_cancelling_once(
        cmd, root, "rule_production_wildcards_2", root / "results/production/ws2/.partial"
    )
    assert returncode == 0, output[-5000:]
    return root, output, cancelled


def run_cancelling_once(cmd: list[str], root, comment: str, partial) -> tuple[int, str, str | None]:
    """Run Snakemake (sbatch calls logged); `scancel` the job `comment` once, after its first checkpoint chunk."""
    log = (root / "snakemake.out").open("w")
    env = {**os.environ, "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    cancelled = None
    deadline = time.monotonic() + 1500
    while proc.poll() is None and time.monotonic() < deadline:
        if cancelled is None:
            for jobid, job_comment, state in squeue():
                if job_comment == comment and state == "RUNNING":
                    # let it checkpoint something, then take it away as a preemption would (SIGTERM, then KILL)
                    wait_until = time.monotonic() + 60
                    while not list(partial.glob("chunk_*.h5")) and time.monotonic() < wait_until:
                        time.sleep(0.1)
                    subprocess.run(["scancel", jobid], check=False)  # the retry test asserts it took effect
                    cancelled = jobid
                    break
        time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
    log.close()
    return proc.returncode, (root / "snakemake.out").read_text(), cancelled


def test_workflow_runs_through_slurm(slurm_run, capsys):
    root, output, _ = slurm_run
    results = root / "results"
    assert (results / "report.html").is_file()
    submitted = [
        ln for ln in output.splitlines() if "has been submitted with SLURM jobid" in ln or "Submitted array job" in ln
    ]
    calls = sbatch_calls(root)
    with capsys.disabled():  # the submissions, for the CI log
        print(f"\n{len(submitted)} Slurm submissions:", *submitted, sep="\n  ")
    # only the embedding jobs queue (the short ones are localrules), each requeueable and on one node
    rules = {comment.split("_wildcards_")[0] for comment in calls}
    assert rules == {
        "rule_production",
        "rule_subset_profiling",
        "rule_checkpoint_overhead",
        "rule_sweep_point",
        "rule_optimal_validation",
    }, rules
    assert len(calls) == 2 + 1 + 2 + 6 + 1
    assert all("--requeue" in c and "--nodes=1" in c and "--array" not in c for c in calls.values())
    # the plugin's efficiency report is on (it needs sacct, which the test cluster's lack of accounting refuses)
    assert "Efficiency report for workflow" in output or "Failed to retrieve job data" in output
    summary = json.loads((results / "summary.json").read_text())
    groups = ("baseline", "dataloader", "packing", "interaction")
    paths = [
        *(p for g in groups for p in (results / "sweeps" / g).glob("*.json")),
        results / "sweeps/optimal.json",
        *(results / "production").glob("ws*.json"),
        results / "profiling/subset.json",
        *(results / "checkpoint").glob("checkpoint_*.json"),
    ]
    embedding_jobs = [json.loads(p.read_text()) for p in paths if not p.name.endswith(".run.json")]
    assert all(r["slurm_job_id"] for r in embedding_jobs)  # each embedding ran inside a Slurm job
    assert len(summary["slurm_job_ids"]) >= len(embedding_jobs) >= 10
    html = (results / "report.html").read_text()
    assert summary["slurm_job_ids"][0] in html
    assert list((root / ".snakemake" / "slurm_logs").rglob("*.log"))  # the executor's per-job logs


def sbatch_calls(root) -> dict[str, str]:
    """{--comment value: the sbatch command line} of every submission (the last one per comment: retries)."""
    calls = {}
    for line in (root / "sbatch.calls").read_text().splitlines():
        words = line.split()
        if "--comment" in words:
            calls[words[words.index("--comment") + 1].strip("'")] = line
    return calls


def test_two_rank_production_job_saw_two_devices(slurm_run):
    root, _, _ = slurm_run
    call = sbatch_calls(root)["rule_production_wildcards_2"]
    assert "--nodes=1" in call and "--gpus=2" in call, call  # both GPUs on one node: the ranks share a launcher
    for rank in (0, 1):
        tel = json.loads((root / "results/production/ws2/telemetry" / f"telemetry_rank{rank}.json").read_text())
        meta = tel["run_metadata"]
        assert meta["hardware"]["cuda_visible_devices"] == "0,1"  # --gpus=2 from the Slurm profile
        assert meta["hardware"]["slurm_job_id"]
        assert meta["world_size"] == 2


def test_a_cancelled_job_is_retried_and_resumes(slurm_run):
    root, output, cancelled = slurm_run
    assert cancelled is not None, "the 2-rank production job was never seen running"
    result = json.loads((root / "results/production/ws2.json").read_text())
    assert result["status"] == "ok"
    assert result["slurm_job_id"] != cancelled  # the result comes from the retry
    assert "Trying to restart job" in output
    meta = json.loads((root / "results/production/ws2/telemetry/telemetry_rank0.json").read_text())["run_metadata"]
    assert meta["resumed_sequences"] > 0  # the retry started from the cancelled attempt's checkpoints
    # ... and says so: flagged in its result and the report, refused for the scaling verdict
    assert result["resumed"] and result["resumed_sequences"] == meta["resumed_sequences"]
    summary = json.loads((root / "results/summary.json").read_text())
    assert "production_ws2" in {r["label"] for r in summary["flagged_runs"] if r["resumed"]}
    perf03 = [v for v in summary["verdicts"] if v["id"] == "PERF-03" and v["scope"] == "production_ws2"]
    assert perf03 and perf03[0]["status"] == "N/A" and "resumed" in perf03[0]["reason"]


@pytest.fixture(scope="module")
def slurm_embed_run(cluster, tmp_path_factory):
    """`snakemake --profile profiles/slurm embed` with 4 shards; shard 1 is cancelled once after its first chunk."""
    from test_embed_target import write_input

    root = copy_project(tmp_path_factory.mktemp("wf_slurm_embed"))
    shutil.copy(ROOT / "tests" / "data" / "slurm_ci.yaml", root / "slurm_ci.yaml")
    log_sbatch_calls(root)
    ids = write_input(root / "input.fa", 240)
    (root / "embed.yaml").write_text(
        f"input:\n  fasta: {json.dumps(str(root / 'input.fa'))}\nengine:\n  checkpoint_every: 5\n"
        "embed:\n  shards: 4\n  allow_random_weights: true\n"
    )
    cmd = [sys.executable, "-m", "snakemake", "embed", "--profile", "profiles/slurm", "--configfile", "ci.yaml"]
    cmd += ["slurm_ci.yaml", "embed.yaml", "--slurm-status-command", "squeue"]
    cmd += ["--slurm-init-seconds-before-status-checks", "2", "--jobs", "4"]
    returncode, output, cancelled = run_cancelling_once(
        cmd, root, "rule_embed_shard_wildcards_1", root / "results/embed/shards/1/.partial"
    )
    assert returncode == 0, output[-5000:]
    return root, output, cancelled, ids


def test_embed_target_through_slurm_survives_a_cancelled_shard_and_equals_one_job(slurm_embed_run, tmp_path):
    from test_embed_target import assert_same_embeddings, single_embed

    root, output, cancelled, ids = slurm_embed_run
    assert cancelled is not None, "shard 1's job was never seen running"
    assert "Trying to restart job" in output
    calls = sbatch_calls(root)  # only the shard jobs queue: split, gather and report are local
    assert set(calls) == {f"rule_embed_shard_wildcards_{k}" for k in range(4)}, set(calls)
    assert all("--gpus=1" in c and "--nodes=1" in c and "--requeue" in c for c in calls.values())
    # shard 1: the cancelled attempt stopped after checkpointing, the retry (another Slurm job) resumed from it
    job = json.loads((root / "results/embed/shards/1/job.json").read_text())
    assert len(job["attempts"]) >= 2 and job["attempts"][0]["slurm_job_id"] == cancelled
    assert job["slurm_job_id"] != cancelled and job["resumed_sequences"] > 0
    single = single_embed(
        root / "input.fa", tmp_path / "single", "--model", "esm2_t6_8M_UR50D", "--random-weights", "--seed", "0"
    )
    assert_same_embeddings(root / "results/embed/embeddings.h5", single, ids)
    summary = json.loads((root / "results/embed/summary.json").read_text())
    assert summary["shards"][1]["attempts"] >= 2 and cancelled in summary["slurm_job_ids"]
    with h5py.File(root / "results/embed/embeddings.h5") as f:
        shards = json.loads(f.attrs["shards"])
    assert all(s["slurm_job_id"] for s in shards) and shards[1]["attempts"] >= 2


def test_without_root_the_reason_is_given(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in unavailable_reason()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "apt-get" in unavailable_reason()
