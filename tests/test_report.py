"""Report pieces without a workflow run: escaping, N/A for what was not run, best point and overhead rules."""

from __future__ import annotations

from virnucpro.report.render import build_context, render_html
from virnucpro.report.results import best_point, checkpoint_overhead, job_steady, with_flop_utilisation


def test_nothing_run_renders_every_verdict_as_na_with_escaped_provenance(tmp_path):
    info = {"path": "/data/<b>x</b>&.fa", "sha256": "ab", "num_sequences": 3, "mean_length": 4.0,
            "source": "production", "example_ids": ["<script>alert(1)</script>"]}
    ctx = build_context([], info, {"model": {"name": "m<i>"}}, None, tmp_path)
    html = render_html({**ctx, "merged_links": []})
    assert "/data/&lt;b&gt;x&lt;/b&gt;&amp;.fa" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in html and "m&lt;i&gt;" in html
    statuses = {v["id"]: v["status"] for v in ctx["verdicts"]}
    assert statuses == {"PERF-01": "N/A", "PERF-03": "N/A", "CKPT": "N/A"}  # no runs: nothing passes
    assert "N/A: no finished 1-rank production run" in html


def point(label, sps, pack, status="ok", group="packing", elapsed=10.0):
    steady = {"avg_sequences_per_sec": sps, "min_packing_efficiency": pack} if status == "ok" else None
    return {"label": label, "group": group, "status": status, "steady": steady, "params": {"checkpoint_every": 5},
            "summary": {"elapsed_seconds": elapsed}, "reason": None if status == "ok" else "OOM",
            "repeats": [sps * f for f in (0.99, 1.0, 1.01)] if status == "ok" else []}


def test_best_point_needs_enough_packing_a_finished_run_and_a_significant_gain():
    base = point("base", 100, 0.95, group="baseline")
    pts = [base, point("fast_but_sparse", 300, 0.80), point("good", 200, 0.95), point("oom", 0, 0, "failed"),
           point("slower", 150, 0.99)]
    assert best_point(pts, 0.90)["label"] == "good"
    # nothing eligible beats the baseline: the recommendation is the baseline itself, not the fastest point
    assert best_point([base] + pts[1:2] + pts[3:4], 0.90)["label"] == "base"
    assert best_point([base, point("noise", 101, 0.95)], 0.90)["label"] == "base"
    assert best_point(pts[1:], 0.90) is None  # no baseline: nothing to recommend over


def test_checkpoint_overhead_and_job_steady_hand_values():
    assert checkpoint_overhead(point("on", 1, 1, elapsed=11.5), point("off", 1, 1, elapsed=10.0)) == 15.0
    assert checkpoint_overhead(None, point("off", 1, 1)) is None
    ranks = [{"steady": {"avg_tokens_per_sec": 100.0, "avg_sequences_per_sec": 2.0, "p95_wait_time_ms": 3.0,
                         "avg_gpu_util": 90.0, "avg_packing_efficiency": 0.95, "warmup_excluded": True,
                         "excluded_batches": 20, "total_batches": 80}},
             {"steady": {"avg_tokens_per_sec": 300.0, "avg_sequences_per_sec": 6.0, "p95_wait_time_ms": 9.0,
                         "avg_gpu_util": None, "avg_packing_efficiency": 0.91, "warmup_excluded": False,
                         "excluded_batches": 0, "total_batches": 10}}]
    s = job_steady(ranks, 7200, 50.0)
    assert s["avg_tokens_per_sec"] == 400.0 and s["avg_sequences_per_sec"] == 8.0
    assert s["projected_hours"] == 7200 / 8.0 / 3600 and s["projected_hours_tokens"] == 7200 * 50 / 400 / 3600
    assert s["p95_wait_time_ms"] == 9.0 and s["min_gpu_util"] == 90.0 and s["min_packing_efficiency"] == 0.91
    assert not s["warmup_excluded"] and s["steady_batches"] == 90
    assert job_steady([{"steady": None}], 10) is None


def test_flop_utilisation_hand_values_and_na_without_a_measured_rate():
    spec = {"num_layers": 36, "embed_dim": 2560, "attention_heads": 40}
    steady = {"avg_tokens_per_sec": 100_000.0, "avg_sequences_per_sec": 2_000.0}  # 50 tokens a sequence
    ranks = [{"matmul_tflops": 400.0, "model_spec": spec}, {"matmul_tflops": 357.0, "model_spec": spec}]
    flops_per_token = 36 * (24 * 2560**2 + 4 * 50 * 2560)  # 5.68 GFLOP
    got = with_flop_utilisation(steady, ranks)
    assert abs(got["pct_of_matmul_ceiling"] - 100 * 100_000 * flops_per_token / 757e12) < 1e-9
    assert 75.0 < got["pct_of_matmul_ceiling"] < 75.1
    missing = with_flop_utilisation(steady, [ranks[0], {"matmul_tflops": None, "model_spec": spec}])
    assert missing["pct_of_matmul_ceiling"] is None and "no matmul rate" in missing["ceiling_na_reason"]
    assert with_flop_utilisation(None, ranks) is None


def production(n, elapsed, device):
    steady = {"projected_hours": 5.0, "projected_hours_tokens": 4.0, "p95_wait_time_ms": 1.0}
    ranks = [{"rank": r, "device": device, "steady": {"avg_gpu_util": 80.0, "avg_packing_efficiency": 0.95}}
             for r in range(n)]
    return {"label": f"ws{n}", "status": "ok", "params": {"world_size": n}, "summary": {"elapsed_seconds": elapsed},
            "steady": steady, "ranks": ranks}


def test_perf03_hand_values_on_gpus_and_na_on_cpu_processes():
    from virnucpro.report.verdicts import production_verdicts

    def perf03(runs):
        return [v for v in production_verdicts(runs, {}) if v.id == "PERF-03"]

    [v] = perf03([production(1, 100.0, "cuda:0"), production(2, 52.0, "cuda:0")])
    assert v.status == "PASS" and abs(v.value - 100 / 52) < 1e-12  # 1.92x, 96.2 % efficiency
    [v] = perf03([production(1, 100.0, "cuda:0"), production(2, 53.0, "cuda:0")])
    assert v.status == "FAIL"  # 1.89x: below 1.9x
    [v] = perf03([production(1, 100.0, "cpu"), production(2, 40.0, "cpu")])
    assert v.status == "N/A" and "CPU processes" in v.reason and v.value == 2.5
    [v] = perf03([production(2, 40.0, "cuda:0")])
    assert v.status == "N/A" and v.reason == "no 1-rank run to compare with"
    perf02 = [v for v in production_verdicts([production(2, 40.0, "cuda:0")], {}) if v.id == "PERF-02"]
    assert len(perf02) == 2 and all(v.status == "PASS" for v in perf02)  # one verdict per GPU
