"""The Snakemake workflow: lint and format, dry runs of both profiles, and one small local run to the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro.data.fasta import write_fasta
from virnucpro.data.synthetic import make_sequences

ROOT = Path(__file__).resolve().parents[1]
RULES = (
    "synthetic_fasta",
    "input_info",
    "workload_fasta",
    "production",
    "subset_profiling",
    "checkpoint_overhead",
    "sweep_point",
    "best_config",
    "optimal_validation",
    "analyse_run",
    "merge_telemetry",
    "scaling",
    "report",
)
GPU_RULES = {"production", "subset_profiling", "checkpoint_overhead", "sweep_point", "optimal_validation"}


def snakemake(*args, cwd=ROOT, env=None, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def copy_project(dest: Path) -> Path:
    """The workflow's files in a scratch directory, so a test run never touches the checkout's results/."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("workflow", "config", "profiles", "scripts", "envs"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy(ROOT / "tests" / "data" / "workflow_ci.yaml", dest / "ci.yaml")
    return dest


def test_lint_and_format_are_clean():
    lint = snakemake("--lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Lints for" not in lint.stdout + lint.stderr
    fmt = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "workflow"], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stderr


def test_catalog_standard_files_exist():
    for name in (
        "workflow/Snakefile",
        "config/README.md",
        "config/config.yaml",
        ".snakemake-workflow-catalog.yml",
        "workflow/schemas/config.schema.yaml",
        "profiles/default/config.yaml",
        "profiles/slurm/config.yaml",
    ):
        assert (ROOT / name).is_file(), name


def job_counts(text: str) -> dict[str, int]:
    counts, inside = {}, False
    for line in text.splitlines():
        if line.startswith("job ") and "count" in line:
            inside = True
            continue
        if inside:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if parts[0].startswith("---"):
                continue
            counts[parts[0]] = int(parts[1])
    return counts


def test_default_profile_dry_run_plans_every_stage():
    res = snakemake("-n")
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert set(RULES) <= set(counts), counts
    assert counts["production"] == 2 and counts["sweep_point"] == 1 + 6 + 6 + 2  # baseline + grids + pairs
    assert counts["analyse_run"] == 2 + 1 + 2  # one cheap local analysis per run-point job
    assert "esm2_t6_8M_UR50D" in res.stdout and "--device auto" in res.stdout and "--exact-gelu" not in res.stdout


def shell_commands(text: str, rule: str | None = None) -> list[str]:
    lines, current = [], None
    for line in text.splitlines():
        if line.startswith(("rule ", "localrule ")):
            current = line.split()[1].rstrip(":")
        elif line.startswith("Shell command:") and (rule is None or current == rule):
            lines.append(line)
    return lines


def test_slurm_profile_layers_a_configfile_over_the_cluster_overlay(tmp_path):
    """Issue 14 point 1: `--configfile x.yaml` must not drop config/cluster.yaml (x.yaml goes on top of it)."""
    extra = tmp_path / "x.yaml"
    extra.write_text(
        "production:\n  world_sizes: [1, 2, 4]\nengine:\n  exact_gelu: true\n  token_budget: 2048\n"
        "resources:\n  gpu_job:\n    gpu_model: h100\n    slurm_partition: gpu\n"
    )
    res = snakemake("--profile", "profiles/slurm", "-n", "--configfile", str(extra))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Using profiles profiles/slurm and workflow specific profile profiles/default" in out
    assert job_counts(res.stdout)["production"] == 3
    runs = shell_commands(res.stdout, "sweep_point") + shell_commands(res.stdout, "production")
    assert len(runs) == 15 + 3
    for cmd in runs:  # cluster.yaml's model, precision and device, x.yaml's budget and switch
        assert "--model esm2_t36_3B_UR50D --precision bf16" in cmd and "--device cuda" in cmd, cmd
        point = "--token-budget 2048" in cmd or "packing:" in cmd or "interaction:" in cmd
        assert "--exact-gelu" in cmd and point, cmd
    # point 6: every GPU job on one node, with the partition and GPU model set once in the config
    gpu_jobs = [ln for ln in out.splitlines() if "resources:" in ln and "gpu=" in ln]
    assert len(gpu_jobs) == 3 + 1 + 2 + 15 + 1 and any("gpu=4" in ln for ln in gpu_jobs)
    for ln in gpu_jobs:
        assert "nodes=1" in ln and "gpu_model=h100" in ln and "slurm_partition=gpu" in ln, ln
        assert "cpus_per_gpu=8" in ln and "cpus_per_task" not in ln, ln  # else the plugin ignores cpus_per_gpu


def test_gpu_jobs_carry_no_machine_paths_or_analysis_settings():
    """Issue 14 point 5: the checkout path, the interpreter and analysis-only settings stay out of GPU jobs."""
    res = snakemake("-n")
    assert res.returncode == 0, res.stderr
    commands = shell_commands(res.stdout)
    for cmd in commands:
        assert str(ROOT) not in cmd and sys.executable not in cmd and "PYTHONPATH" not in cmd, cmd
    runs = [c for c in commands if "run-point" in c]
    assert len(runs) == 2 + 1 + 2
    for cmd in runs:
        for analysis in ("--warmup", "--target-sequences", "--progress-interval", "--min-packing"):
            assert analysis not in cmd, cmd
    # measure jobs (sweep points, optimal validation): their warm-up protocol is what they measure, the target
    # of the projections is not (the report projects their rates)
    measures = [c for c in commands if "virnucpro measure" in c]
    assert len(measures) == 15 + 1
    for cmd in measures:
        for analysis in ("--target-sequences", "--progress-interval", "--min-packing"):
            assert analysis not in cmd, cmd


def test_the_conda_environment_pins_a_cuda_pytorch_build():
    """Issue 14 point 7: on a GPU-less login node an unpinned pytorch resolves to the CPU build."""
    import yaml

    deps = yaml.safe_load((ROOT / "envs" / "virnucpro.yaml").read_text())["dependencies"]
    torch = [d for d in deps if isinstance(d, str) and d.split("=")[0] == "pytorch"]
    pinned = next(
        ln.split("==")[1] for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln.startswith("torch==")
    )
    assert torch == [f"pytorch={pinned}=cuda*"]
    assert "CONDA_OVERRIDE_CUDA" in (ROOT / "envs" / "virnucpro.yaml").read_text()
    assert "CONDA_OVERRIDE_CUDA" in (ROOT / "README.md").read_text()


def test_optional_peers_job_and_compare_to_are_inputs_of_the_report(tmp_path):
    previous = tmp_path / "prev summary.json"
    previous.write_text("{}")
    extra = tmp_path / "extra.yaml"
    extra.write_text(f"peers:\n  enabled: true\ncompare_to: {json.dumps(str(previous))}\n")
    res = snakemake("-n", "-p", "--configfile", str(extra))
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout)["peers"] == 1 and "bench peers --fasta" in res.stdout
    report_cmd = next(ln for ln in res.stdout.splitlines() if " report " in ln and "--scaling" in ln)
    assert "--peers results/peers/peers.json" in report_cmd and f"--compare-to '{previous}'" in report_cmd
    assert "peers" not in job_counts(snakemake("-n").stdout)  # off by default
    extra.write_text("compare_to: results/summary.json\n")
    res = snakemake("-n", "--configfile", str(extra))
    assert res.returncode != 0 and "copy the previous one elsewhere" in res.stdout + res.stderr


def test_a_config_typo_is_one_line_naming_the_key_not_the_schema(tmp_path):
    """A misspelled key printed the whole JSON schema (1,302 lines for a top-level typo)."""
    extra = tmp_path / "typo.yaml"
    for text, expected in (
        ("enigne:\n  num_workers: 1\n", "at top level: Additional properties are not allowed ('enigne' was"),
        ("engine:\n  token_bugdet: 4096\n", "at engine: Additional properties are not allowed ('token_bugdet'"),
        ("engine:\n  token_budget: lots\n", "at engine.token_budget: 'lots' is not of type 'integer'"),
    ):
        extra.write_text(text)
        res = snakemake("-n", "--configfile", str(extra))
        out = res.stdout + res.stderr
        assert res.returncode != 0 and f"invalid configuration {expected}" in out, out[-2000:]
        assert len(out.splitlines()) < 12 and "schema[" not in out, out[-2000:]


def test_a_precision_sweep_plans_one_point_and_one_accuracy_job_per_precision(tmp_path):
    """sweeps.precision (issue 17): each precision a point of group `precision` overriding model.precision, each
    checked by an accuracy job on the same weights; best-config and the report read those results (inputs)."""
    extra = tmp_path / "p.yaml"
    extra.write_text("sweeps:\n  precision: [fp32]\nmeasure:\n  accuracy_sequences: 7\n")
    res = snakemake("-n", "-p", "--configfile", "tests/data/workflow_ci.yaml", str(extra))
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["accuracy"] == 1 and counts["sweep_point"] == 1 + 2 + 2 + 1 + 1  # precision auto/device auto
    [point] = [c for c in shell_commands(res.stdout, "sweep_point") if "--label precision:fp32" in c]
    assert "--precision fp32" in point and "--group precision" in point
    [acc] = shell_commands(res.stdout, "accuracy")
    assert "bench accuracy --precision fp32 --model esm2_t6_8M_UR50D --seed 0 --num-sequences 7" in acc
    assert "--token-budget 1024 --device auto -o results/accuracy/fp32.json" in acc
    [best] = shell_commands(res.stdout, "best_config")
    assert "results/sweeps/precision/fp32.json --accuracy results/accuracy/fp32.json -o" in best
    [report] = shell_commands(res.stdout, "report")
    assert "--accuracy results/accuracy/fp32.json" in report
    # a device that names the baseline's precision: it is checked too; the accuracy job runs on that device
    extra.write_text("sweeps:\n  precision: [bf16]\nengine:\n  device: cpu\n")
    res = snakemake("-n", "-p", "--configfile", "tests/data/workflow_ci.yaml", str(extra))
    assert res.returncode == 0, res.stderr
    accs = shell_commands(res.stdout, "accuracy")
    assert sorted(c.split("--precision ")[1].split()[0] for c in accs) == ["bf16", "fp32"]
    assert all("--device cpu" in c for c in accs)
    # weights the accuracy job cannot be given (the torch hub cache's) are refused, not swapped for random ones
    extra.write_text("sweeps:\n  precision: [bf16]\nmodel:\n  random_weights: false\n")
    res = snakemake("-n", "--configfile", str(extra))
    assert res.returncode != 0 and "sweeps.precision checks each precision's accuracy" in res.stdout + res.stderr
    # none of it without a precision sweep (the default)
    res = snakemake("-n", "-p")
    assert "accuracy" not in job_counts(res.stdout) and "--accuracy" not in res.stdout


def test_a_production_path_with_angle_brackets_is_refused_clearly(tmp_path):
    fasta = tmp_path / "a<b>.fa"
    fasta.write_text(">x\nMKV\n")
    res = snakemake("-n", env={"VIRNUCPRO_PRODUCTION_FASTA": str(fasta)})
    assert res.returncode != 0 and "path variable" in res.stdout + res.stderr


def test_a_missing_production_fasta_is_an_error_not_a_fallback(tmp_path):
    res = snakemake("-n", env={"VIRNUCPRO_PRODUCTION_FASTA": str(tmp_path / "nope.fa")})
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "VIRNUCPRO_PRODUCTION_FASTA" in out and "nope.fa" in out and "not a file" in out


HTML_NAME = "prod&x'y.fa"  # Snakemake itself refuses < and > in paths (path variables): see the render test
HTML_ID = "r<i>0</i>"


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    """One local run of the whole workflow on a production FASTA whose path and ids contain HTML."""
    root = copy_project(tmp_path_factory.mktemp("wf"))
    ids, seqs = make_sequences(400, 5, "short-reads")
    ids = [f"{HTML_ID}_{k}" for k in range(len(ids))]
    fasta = root / HTML_NAME
    write_fasta(fasta, ids, seqs)
    res = snakemake("--configfile", "ci.yaml", cwd=root, env={"VIRNUCPRO_PRODUCTION_FASTA": str(fasta)}, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return root


def test_local_run_produces_the_report(workflow_run):
    results = workflow_run / "results"
    for name in (
        "report.html",
        "report.txt",
        "summary.json",
        "production/scaling.json",
        "telemetry/production_ws1.json",
        "telemetry/production_ws2.json",
    ):
        assert (results / name).is_file(), name
    summary = json.loads((results / "summary.json").read_text())
    assert summary["input"]["source"] == "production" and summary["input"]["num_sequences"] == 400
    assert summary["weights"]["weights"] == "random"
    by_id = {}
    for v in summary["verdicts"]:
        by_id.setdefault(v["id"], []).append(v)
    assert {"PERF-01", "PERF-02", "PERF-03", "PERF-05", "LOADER", "CKPT"} <= set(by_id)
    # no GPU here: GPU figures are N/A with the reason, never a made-up number
    assert all(v["status"] == "N/A" and v["value"] is None and "CPU" in v["reason"] for v in by_id["PERF-02"])
    # PERF-01 is the whole job at the target, from the run's measured phases; a run without them is N/A, never 0
    ws = json.loads((results / "production/ws2.json").read_text())
    analysed = [p for p in (results / "production").glob("ws*.json") if not p.name.endswith(".run.json")]
    runs = {r["label"]: r for r in map(json.loads, map(Path.read_text, analysed))}
    if ws.get("phases"):
        for v in by_id["PERF-01"]:  # a figure from an INVALID run is kept but not judged (N/A, saying why)
            judged = runs[v["scope"].split()[0]]
            expected = ("PASS", "FAIL") if judged["valid"] else ("N/A",)
            assert v["value"] > 0 and v["status"] in expected, v
            assert judged["valid"] or "INVALID" in v["reason"], v
    else:
        assert all(v["status"] == "N/A" and v["value"] is None and "phases" in v["reason"] for v in by_id["PERF-01"])
    scaling = json.loads((results / "production/scaling.json").read_text())
    assert [p["label"] for p in scaling["projections"]] == ["production_ws1", "production_ws2"]
    assert all(p["projection"]["loop_hours"] > 0 for p in scaling["projections"])
    assert summary["production"][0]["projection"] == scaling["projections"][0]["projection"]  # read, not redone
    assert summary["slurm_job_ids"] == []
    merged = json.loads((results / "telemetry/production_ws2.json").read_text())
    assert merged["summary"]["num_shards"] == 2 and merged["summary"]["total_sequences"] == 400
    text = (results / "report.txt").read_text()
    assert "PERF-01" in text and "VirNucPro embedding performance report" in text
    from test_report import html_verdicts, text_verdicts

    assert text_verdicts(text) == html_verdicts((results / "report.html").read_text())  # one verdict engine


def test_runs_are_marked_valid_or_not_with_the_reason(workflow_run):
    """Issue 14 point 4: the CPU runs are shorter than the default 60-second warm-up: invalid, and said so."""
    results = workflow_run / "results"
    run = json.loads((results / "production/ws1.json").read_text())
    assert run["valid"] is False and "warm-up" in run["invalid_reasons"][0]  # nothing or too little excluded
    assert run["resumed"] is False and run["analysis"]["warmup_seconds"] == 60
    summary = json.loads((results / "summary.json").read_text())
    assert "production_ws1" in {r["label"] for r in summary["flagged_runs"]}
    assert "INVALID" in (results / "report.html").read_text()
    on_it = [v for v in summary["verdicts"] if v["scope"].startswith("production_ws1")]  # no verdict rests on it
    assert on_it and all(v["status"] == "N/A" for v in on_it), on_it
    model = json.loads((results / "production/scaling.json").read_text())["model"]
    assert model["basis"] == "production_ws1"  # and the GPU model built on it says what it rests on
    assert "from production_ws1 (an INVALID run: see Runs flagged)" in (results / "report.txt").read_text()


def test_moving_the_checkout_or_changing_analysis_settings_reruns_no_gpu_job(workflow_run, tmp_path):
    """Issue 14 point 5: no machine path in params; warm-up, targets, thresholds, the progress interval and the
    compile cache's place are applied by local analysis jobs or the jobs' environment only."""
    moved = tmp_path / "moved checkout"
    shutil.copytree(workflow_run, moved, symlinks=True)  # keeps mtimes and .snakemake's records
    env = {"VIRNUCPRO_PRODUCTION_FASTA": str(workflow_run / HTML_NAME)}
    res = snakemake("-n", "--configfile", "ci.yaml", cwd=moved, env=env)
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr, res.stdout[-3000:]
    (moved / "analysis.yaml").write_text(
        "warmup:\n  seconds: 1\n  batches: 2\n  min_steady_batches: 3\n"
        "targets:\n  min_packing: 0.5\n  min_scaling_efficiency: 50\n"
        "engine:\n  progress_interval: 1\n  compile_cache: kernel cache\n"
    )
    res = snakemake("-n", "--configfile", "ci.yaml", "analysis.yaml", cwd=moved, env=env)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["analyse_run"] == 2 + 1 + 2 and counts["report"] == 1
    # the best point may change with the analysis, so its validation runs again; no other GPU job does
    assert not (GPU_RULES - {"optimal_validation"}) & set(counts), counts


def test_a_checkpoint_path_with_a_space_and_command_substitution_works_and_runs_nothing(tmp_path):
    """Issue 18: model.checkpoint (and engine.compile_cache) reach the shell quoted."""
    from virnucpro.models.weights import write_fairesm_checkpoint

    root = copy_project(tmp_path / "wf")
    ckpt = write_fairesm_checkpoint(tmp_path / "my weights $(touch PWNED)" / "esm2_tiny_test.pt")
    cache = tmp_path / "kernels $(touch PWNED)"
    (root / "ckpt.yaml").write_text(
        f"model:\n  name: ''\n  checkpoint: {json.dumps(str(ckpt))}\n  random_weights: false\n"
        f"engine:\n  compile_cache: {json.dumps(str(cache))}\n"  # reaches the job's environment quoted too
    )
    res = snakemake("results/sweeps/baseline/baseline.json", "--configfile", "ci.yaml", "ckpt.yaml", cwd=root)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads((root / "results/sweeps/baseline/baseline.json").read_text())
    assert result["status"] == "ok", result["reason"]
    assert result["weights"]["path"] == str(ckpt.resolve())
    assert not list(tmp_path.rglob("PWNED")) and not (root / "PWNED").exists()


def test_an_impossible_sweep_point_is_recorded_and_marked(workflow_run):
    results = workflow_run / "results"
    point = json.loads((results / "sweeps/packing/b8_buf500.json").read_text())
    assert point["status"] == "failed" and point["exit_code"] == 2 and "token budget" in point["reason"]
    summary = json.loads((results / "summary.json").read_text())
    failed = [p for p in summary["sweep_points"] if p["status"] == "failed"]
    assert [p["label"] for p in failed] == ["packing:b8_buf500"]
    html = (results / "report.html").read_text()
    assert "FAILED" in html  # the crossed heat-map cell
    assert summary["best"] is not None and summary["best"]["params"]["token_budget"] != 8


def test_sweep_points_are_repeated_measurements_and_the_best_is_a_decision(workflow_run):
    results = workflow_run / "results"
    base = json.loads((results / "sweeps/baseline/baseline.json").read_text())
    assert base["kind"] == "measurement" and len(base["repeats"]) == 2  # measure.repeats of ci.yaml
    assert base["ci95"][0] <= base["median"] <= base["ci95"][1] and "stabilised" in base["measurement"]["warmup"]
    best = json.loads((results / "sweeps/best.json").read_text())
    assert isinstance(best["significant"], bool) and "speedup_ci95" in best and best["params"]
    if not best["significant"]:
        assert best["label"] == base["label"] and best["params"] == base["params"]
    rows = (results / "sweeps.tsv").read_text().splitlines()
    assert rows[0].startswith("group\tlabel\tparams\tstatus") and len(rows) == 1 + 1 + 2 + 2 + 1
    validation = json.loads((results / "sweeps/optimal.json").read_text())["validation"]
    assert validation["significant_claim"] == best["significant"] and "contradicted" in validation


def test_report_escapes_html_from_the_input(workflow_run):
    html = (workflow_run / "results" / "report.html").read_text()
    assert "prod&amp;x&#39;y.fa" in html and "r&lt;i&gt;0&lt;/i&gt;_0" in html
    assert HTML_NAME not in html and HTML_ID not in html
    assert "<script" not in html
    for remote in ('src="http', "src='http", 'href="http', "href='http", "url(http", "@import"):
        assert remote not in html  # self-contained: nothing is fetched (the SVGs' xmlns URIs are names, not loads)


def chromium() -> str | None:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("VIRNUCPRO_REQUIRE_BROWSER"):
            pytest.fail("VIRNUCPRO_REQUIRE_BROWSER is set but chromium is not installed")
        pytest.skip("chromium not installed (Debian: apt-get install chromium); `make test` installs it when root")
    return path


def test_report_renders_in_headless_chromium(workflow_run, tmp_path):
    import matplotlib.image as mpimg
    import numpy as np

    browser = chromium()
    png = tmp_path / "report.png"
    res = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,8000",  # the whole report down to the heat maps and plots
            f"--screenshot={png}",
            (workflow_run / "results" / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert png.is_file(), res.stderr[-2000:]
    img = mpimg.imread(png)[..., :3]
    assert img.shape[0] >= 4000

    def share(rgb, tol=0.06):
        return float((np.abs(img - np.array(rgb)).max(axis=-1) < tol).mean())

    # the heat maps' viridis ends and matplotlib's first line colour are drawn: the SVG plots rendered
    assert share((0.993, 0.906, 0.144)) > 1e-4 or share((0.267, 0.005, 0.329)) > 1e-4
    assert share((0.122, 0.467, 0.706)) > 1e-5
    assert share((1.0, 0.953, 0.804)) > 1e-3  # the random-weights banner's background


def test_a_failed_production_run_fails_the_workflow_with_its_error(tmp_path):
    root = copy_project(tmp_path)
    (root / "bad.yaml").write_text("input:\n  synthetic:\n    num_sequences: 50\nengine:\n  token_budget: 8\n")
    res = snakemake("results/production/ws1.json", "--configfile", "ci.yaml", "bad.yaml", cwd=root)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "Error in rule production" in out and "token budget" in out  # show-failed-logs prints the job's log
    assert not (root / "results/production/ws1.json").exists()
