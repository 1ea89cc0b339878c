"""A measurement job measures what its params say: clean OUTDIRs, params checked against what ran, resumed runs
flagged and refused for time comparisons, warm-up validity, and the CLI's help (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from virnucpro.cli import main
from virnucpro.errors import UserError
from virnucpro.data.fasta import write_fasta
from virnucpro.data.synthetic import make_sequences
from virnucpro.report.results import analyse_run, collect_run
from virnucpro.report.scaling import scaling_report
from virnucpro.report.verdicts import checkpoint_verdict, production_verdicts

KNOBS = {
    "num_workers": 0,
    "prefetch_factor": 2,
    "token_budget": 1024,
    "buffer_size": 500,
    "checkpoint_every": 50,
    "world_size": 1,
}


def run_point(capsys, fasta, outdir, result, *extra):
    """`virnucpro run-point` in this process (the model and torch are loaded once for all calls)."""
    code = main(
        [
            "run-point",
            str(fasta),
            "-o",
            str(outdir),
            "--model",
            "esm2_t6_8M_UR50D",
            "--random-weights",
            "--device",
            "cpu",
            "--num-workers",
            "0",
            "--label",
            "p",
            "--group",
            "packing",
            "--result",
            str(result),
            *extra,
        ]
    )
    return code, capsys.readouterr().err


def test_a_rerun_with_other_settings_measures_them_not_the_old_output(tmp_path, capsys):
    """Point 2: a complete embeddings.h5 of the same input and model must not stand in for a 2048-token run."""
    ids, seqs = make_sequences(60, 3, "short-reads")
    fasta = tmp_path / "in.fa"
    write_fasta(fasta, ids, seqs)
    out, result = tmp_path / "point", tmp_path / "point.run.json"
    assert run_point(capsys, fasta, out, result, "--token-budget", "1024")[0] == 0
    code, err = run_point(capsys, fasta, out, result, "--token-budget", "2048")
    assert code == 0 and "cleared" in err and "token_budget" in err, err
    rec = json.loads(result.read_text())
    assert rec["status"] == "ok" and rec["params"]["token_budget"] == 2048
    meta = json.loads((out / "telemetry" / "telemetry_rank0.json").read_text())["run_metadata"]
    assert meta["engine"]["token_budget"] == 2048  # measured again, with the new setting


def test_only_an_interrupted_attempt_of_the_same_configuration_is_kept(tmp_path):
    """A finished result is measured again (`snakemake -R`); partial chunks of the same settings are resumed."""
    from virnucpro.pipeline.measurement import prepare_outdir
    from virnucpro.pipeline.runner import EmbedConfig

    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKV\n")
    cfg = EmbedConfig(fasta=fasta, outdir=tmp_path / "out", token_budget=1024)
    assert prepare_outdir(cfg) is None  # nothing there yet
    (cfg.outdir / ".partial").mkdir()
    (cfg.outdir / ".partial" / "chunk_r0_x.h5").write_bytes(b"rows")
    cfg.progress_interval = 99.0  # a log setting: still the same measurement
    assert prepare_outdir(cfg) is None and (cfg.outdir / ".partial" / "chunk_r0_x.h5").exists()
    (cfg.outdir / "status.json").write_text('{"status": "ok"}')
    assert "finished result" in prepare_outdir(cfg)
    assert not (cfg.outdir / ".partial").exists() and not (cfg.outdir / "status.json").exists()
    (cfg.outdir / ".partial").mkdir()
    cfg.token_budget = 2048
    assert "token_budget" in prepare_outdir(cfg) and not (cfg.outdir / ".partial").exists()
    (cfg.outdir / "measurement.json").unlink()
    (cfg.outdir / "telemetry").mkdir()
    assert "unknown configuration" in prepare_outdir(cfg)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        prepare_outdir(EmbedConfig(fasta=fasta, outdir=tmp_path / "file"))


def fake_outdir(tmp_path, engine: dict, resumed: int = 0, status_config: dict | None = None, batches=None) -> Path:
    out = tmp_path / "out"
    (out / "telemetry").mkdir(parents=True)
    batches = (
        batches
        if batches is not None
        else [
            {
                "timestamp": 100.0 + 0.5 * k,
                "batch_seconds": 0.5,
                "num_sequences": 10,
                "num_tokens": 500,
                "tokens_per_sec": 1000.0,
                "packing_efficiency": 0.95,
                "wait_time_ms": 1.0,
            }
            for k in range(1, 61)
        ]
    )
    tel = {
        "run_metadata": {
            "rank": 0,
            "device": "cuda:0",
            "engine": engine,
            "resumed_sequences": resumed,
            "matmul_tflops": None,
            "model_spec": None,
        },
        "summary": {"elapsed_seconds": 30.0},
        "per_batch_metrics": batches,
    }
    (out / "telemetry" / "telemetry_rank0.json").write_text(json.dumps(tel))
    (out / "status.json").write_text(
        json.dumps({"status": "ok", "config": status_config or engine, "summary": {"elapsed_seconds": 30.0}})
    )
    return out


def test_a_result_whose_telemetry_ran_other_params_is_not_a_measurement_of_them(tmp_path):
    out = fake_outdir(tmp_path, {**KNOBS, "token_budget": 1024})
    rec = collect_run(out, "p", "packing", {**KNOBS, "token_budget": 2048}, 0, None)
    assert rec["status"] == "failed" and "token_budget=2048 asked" in rec["reason"] and "1024" in rec["reason"]
    assert collect_run(out, "p", "packing", {**KNOBS, "token_budget": 1024}, 0, None)["status"] == "ok"


def test_resumed_runs_are_flagged_and_refused_for_scaling_and_checkpoint_overhead(tmp_path):
    """Point 3: a resumed attempt timed only what was left: no speedup or overhead is computed from it."""
    rec = collect_run(fake_outdir(tmp_path, KNOBS, resumed=300), "production_ws2", "production", KNOBS, 0, None)
    assert rec["resumed"] and rec["resumed_sequences"] == 300

    def prod(n, elapsed, resumed=False):
        return {
            "label": f"production_ws{n}",
            "status": "ok",
            "params": {"world_size": n, "checkpoint_every": 9},
            "summary": {"elapsed_seconds": elapsed},
            "ranks": [{"rank": 0, "device": "cuda:0"}],
            "steady": None,
            "resumed": resumed,
            "resumed_sequences": 300 if resumed else 0,
        }

    def perf03(runs):
        scaling = scaling_report(runs, 6_000_000, 10.0, 95.0)  # what the report reads from scaling.json
        return [v for v in production_verdicts(runs, {}, scaling) if v.id == "PERF-03"]

    resumed = perf03([prod(1, 10.0), prod(2, 2.0, resumed=True)])
    assert [v.status for v in resumed] == ["N/A"] and "resumed" in resumed[0].reason and resumed[0].value is None
    ok03 = perf03([prod(1, 10.0), prod(2, 5.0)])
    assert ok03[0].status == "PASS"
    ckpt = checkpoint_verdict({**prod(1, 10.0, resumed=True), "label": "checkpoint_on"}, prod(1, 10.0), {})
    assert ckpt.status == "N/A" and "resumed" in ckpt.reason
    faster_with = checkpoint_verdict({**prod(1, 2.62), "label": "checkpoint_on"}, prod(1, 2.80), {})
    assert faster_with.value < 0 and "below what these runs resolve" in faster_with.reason  # H200, 2026-12-07
    slower_with = checkpoint_verdict({**prod(1, 2.9), "label": "checkpoint_on"}, prod(1, 2.8), {})
    assert slower_with.status == "PASS" and slower_with.reason is None


def test_without_world_size_the_record_names_the_ranks_that_ran_and_scaling_reads_it(tmp_path, capsys):
    """`--world-size` left at its default recorded `null`, and `scaling` and `report` then failed on it with a
    TypeError (exit 1); the record now says 1 on the CPU, what the default ran."""
    from virnucpro.report.results import analyse_run as analyse
    from virnucpro.report.scaling import scaling_report

    ids, seqs = make_sequences(30, 5, "short-reads")
    fasta = tmp_path / "in.fa"
    write_fasta(fasta, ids, seqs)
    result = tmp_path / "ws.run.json"
    assert run_point(capsys, fasta, tmp_path / "ws", result)[0] == 0
    rec = json.loads(result.read_text())
    assert rec["status"] == "ok" and rec["params"]["world_size"] == 1
    [row] = scaling_report([analyse(rec, 0.0, 0, 1, 6_000_000)], 6_000_000, 10, 95)["rows"]
    assert row["world_size"] == 1 and row["speedup"] == 1.0


def test_every_run_is_marked_valid_or_invalid_by_its_warm_up(tmp_path):
    """Point 4: a 30-second run under a 60-second warm-up excluded nothing: it must say so, not pass as steady."""
    rec = collect_run(fake_outdir(tmp_path, KNOBS), "p", "packing", KNOBS, 0, None)
    long_warmup = analyse_run(rec, 60.0, 20, 20, 6_000_000)
    assert long_warmup["valid"] is False and "nothing was excluded" in long_warmup["invalid_reasons"][0]
    few_left = analyse_run(rec, 1.0, 50, 20, 6_000_000)
    assert few_left["valid"] is False and "left 10 steady batches, fewer than 20" in few_left["invalid_reasons"][0]
    fine = analyse_run(rec, 3.0, 10, 20, 1_000_000)
    assert fine["valid"] and fine["invalid_reasons"] == [] and fine["steady"]["avg_sequences_per_sec"] > 0
    assert abs(fine["steady"]["projected_hours"] - 1_000_000 / fine["steady"]["avg_sequences_per_sec"] / 3600) < 1e-9


def test_help_shows_defaults_an_example_and_the_exit_codes(capsys):
    """Point 8."""
    for command in (["embed", "--help"], ["run-point", "--help"], ["--help"]):
        with pytest.raises(SystemExit) as stop:
            main(command)
        assert stop.value.code == 0
        text = capsys.readouterr().out
        assert "example:" in text and "exit codes:" in text and "75 stopped by SIGTERM" in text
        if command[0] == "embed":
            assert "(default: 16384)" in text and "(default: truncate)" in text
