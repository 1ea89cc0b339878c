"""Whole-job projections, the GPU model and scaling.json against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from virnucpro.report.projection import projection
from virnucpro.report.scaling import scaling_report
from virnucpro.report.verdicts import production_verdicts

PHASES = {"read_input": 2.0, "load_weights": 10.0, "compile": 5.0, "warmup": 3.0, "loop": 100.0, "finalize": 4.0}


def run(ws=1, sps=10.0, tps=1000.0, phases=PHASES, n=1000, device="cuda:0", status="ok"):
    return {
        "label": f"production_ws{ws}",
        "group": "production",
        "status": status,
        "params": {"world_size": ws},
        "summary": {"total_sequences": n, "elapsed_seconds": n / sps, "projection_tokens_per_sequence": 50.0},
        "steady": {"avg_sequences_per_sec": sps, "avg_tokens_per_sec": tps, "p95_wait_time_ms": 1.0},
        "phases": phases,
        "job_wall_seconds": 124.0 if phases else None,
        "ranks": [
            {"rank": r, "device": device, "steady": {"avg_gpu_util": 90.0, "avg_packing_efficiency": 0.95}}
            for r in range(ws)
        ],
    }


def test_projection_hand_values():
    p = projection(run(), 100_000, 50.0)
    c = p["components"]
    # fixed 10 + 5 + 3 = 18 s; read 2 s x 100 = 200 s; finalize 4 s x 100 = 400 s; loop 100,000 / 10 = 10,000 s
    assert c["fixed_seconds"] == 18.0
    assert c["fixed"] == {"load_weights": 10.0, "compile": 5.0, "warmup": 3.0, "loop_ramp": 0.0}
    assert c["read_input_seconds"] == 200.0 and c["finalize_seconds"] == 400.0 and c["loop_seconds"] == 10_000.0
    assert p["loop_hours"] == pytest.approx(10_000 / 3600) and p["job_hours"] == pytest.approx(10_618 / 3600)
    # token-based: 100,000 x 50 tokens / 1,000 tokens/s = 5,000 s of loop
    assert p["loop_hours_tokens"] == pytest.approx(5_000 / 3600)
    assert p["job_hours_tokens"] == pytest.approx(5_618 / 3600)
    assert p["target_sequences"] == 100_000 and p["na_reason"] is None
    # a phase the projection does not know is paid once per job, with the fixed ones
    q = projection(run(phases={**PHASES, "other": 7.0, "prepare_output": 1.0}), 100_000, 50.0)
    assert q["components"]["fixed_seconds"] == 25.0 and q["job_hours"] == pytest.approx(10_725 / 3600)
    assert q["components"]["finalize_seconds"] == 500.0  # the output's preallocation grows with N too
    # status.json keeps the phases in its summary; a resumed run's phases cover only part of the work
    nested = run(phases=None)
    nested["summary"].update(phases=PHASES, job_wall_seconds=124.0)
    assert projection(nested, 100_000, 50.0)["job_hours"] == pytest.approx(10_618 / 3600)
    nested["summary"]["resumed_sequences"] = 500
    assert "resumed" in projection(nested, 100_000, 50.0)["na_reason"]
    # a loop of 1,000 sequences that took 112 s at a steady 10/s: 12 s of ramp (warm-up batches), once per job
    r = projection(run(phases={**PHASES, "loop": 112.0}), 100_000, 50.0)
    assert r["components"]["fixed"]["loop_ramp"] == pytest.approx(12.0)
    assert r["job_hours"] == pytest.approx(10_630 / 3600) and r["loop_hours"] == pytest.approx(10_000 / 3600)


@pytest.mark.parametrize("phases", [None, {"read_input": 1.0}, {**PHASES, "loop": -1.0}, {**PHASES, "loop": "x"}])
def test_without_usable_phases_the_job_is_na_never_zero(phases):
    p = projection(run(phases=phases), 100_000, 50.0)
    assert p["job_hours"] is None and p["job_hours_tokens"] is None and "phases" in p["na_reason"]
    assert p["loop_hours"] == pytest.approx(10_000 / 3600)  # the loop alone is still projected
    perf01 = [
        v
        for v in production_verdicts(
            [run(phases=phases)], {"target_sequences": 100_000}, scaling_report([run(phases=phases)], 100_000, 10, 95)
        )
        if v.id == "PERF-01"
    ]
    assert [v.status for v in perf01] == ["N/A", "N/A"] and all(v.value is None for v in perf01)
    assert "loop alone: 2.78 h" in perf01[0].reason


def test_perf01_is_judged_on_job_hours_not_loop_hours():
    # loop 2.78 h, job 2.95 h: a 2.9 h limit passes on the loop and must fail on the job
    verdicts = production_verdicts(
        [run()], {"target_sequences": 100_000, "max_hours": 2.9}, scaling_report([run()], 100_000, 2.9, 95)
    )
    seq = next(v for v in verdicts if v.id == "PERF-01" and "sequence-based" in v.title)
    assert seq.status == "FAIL" and seq.value == pytest.approx(10_618 / 3600)


def test_scaling_report_at_target_and_model_hand_values():
    ws2 = run(ws=2, sps=19.0, tps=1900.0, phases={**PHASES, "loop": 52.0}, n=1000)
    rep = scaling_report([ws2, run()], 100_000, 1.0, 95)
    json.dumps(rep)  # scaling.json must serialise
    [one, two] = rep["at_target"]
    assert one["world_size"] == 1 and one["job_speedup"] == 1.0
    job2 = 18 + 600 + 100_000 / 19
    assert two["loop_speedup"] == pytest.approx(19 / 10) and two["job_speedup"] == pytest.approx(10_618 / job2)
    model = rep["model"]
    assert model["basis"] == "production_ws1" and model["per_gpu_sequences_per_sec"] == 10.0
    grid = {(g["gpus_per_job"], g["jobs"]): g["job_hours"] for g in model["grid"]}
    assert grid[(2, 1)] == pytest.approx((18 + 600 + 5_000) / 3600)  # serial read + finalize, loop halved
    assert grid[(1, 4)] == pytest.approx((18 + 150 + 2_500) / 3600)  # 4 jobs on quarter shards
    need = model["gpus_needed"]
    # within 1 h (3,582 s after the fixed 18 s): 1-GPU jobs need ceil(10,600 / 3,582) = 3; one job needs 4 GPUs
    assert need["fewest_gpus"] == {
        "gpus_per_job": 1,
        "jobs": 3,
        "gpus": 3,
        "job_hours": pytest.approx((18 + 200 + 10_000 / 3) / 3600),
    }
    assert need["as_one_job"]["gpus_per_job"] == 4 and need["as_one_job"]["job_hours"] == pytest.approx(3_118 / 3600)
    assert all(g["job_hours"] <= 1.0 for g in need["per_gpus_per_job"])
    assert "model, not a measurement" in model["assumptions"]
    # the measured 2-rank run agrees with the model within 10 % (5,881 s vs 5,618 s): no caveat
    [check] = model["measured_checks"]
    assert check["world_size"] == 2 and check["ratio"] == pytest.approx(job2 / (18 + 600 + 5_000))
    assert model["caveat"] is None
    # a 2-rank run that scaled poorly (11 sequences/s): the model's ideal 2-GPU hours are called out
    slow = scaling_report([run(ws=2, sps=11.0, tps=1100.0, n=1000), run()], 100_000, 1.0, 95)["model"]
    assert "the measured 2-GPU run (production_ws2) projects 2.7 h where the model predicts 1.56 h" in slow["caveat"]


def test_model_says_when_fixed_costs_alone_exceed_the_limit_and_without_phases():
    rep = scaling_report([run()], 100_000, 18 / 3600 * 0.5, 95)
    assert rep["model"]["gpus_needed"]["fewest_gpus"] is None
    assert "fixed costs alone" in rep["model"]["gpus_needed"]["na_reason"]
    bare = scaling_report([run(phases=None)], 100_000, 1.0, 95)
    assert bare["model"]["basis"] is None and "phases" in bare["model"]["na_reason"]
    assert math.isclose(bare["projections"][0]["projection"]["loop_hours"], 10_000 / 3600)


def test_perf01_judges_the_widest_gpu_run_but_the_fastest_of_cpu_processes():
    """CPU ranks share one host's cores: the 2-rank CPU run is not the configuration a user would pick."""
    for device, want in (("cuda:0", "production_ws2"), ("cpu", "production_ws1")):
        runs = [run(device=device), run(ws=2, sps=6.0, tps=600.0, device=device)]
        verdicts = production_verdicts(runs, {"target_sequences": 100_000}, scaling_report(runs, 100_000, 10, 95))
        assert {v.scope.split()[0] for v in verdicts if v.id == "PERF-01"} == {want}
