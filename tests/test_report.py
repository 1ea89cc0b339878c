"""Report pieces without a workflow run: escaping, N/A for what was not run, best point and overhead rules."""

from __future__ import annotations

import json

from virnucpro.report.render import build_context, render_html
from virnucpro.report.results import best_point, checkpoint_overhead, job_steady, with_flop_utilisation


def test_nothing_run_renders_every_verdict_as_na_with_escaped_provenance(tmp_path):
    info = {
        "path": "/data/<b>x</b>&.fa",
        "sha256": "ab",
        "num_sequences": 3,
        "mean_length": 4.0,
        "source": "production",
        "example_ids": ["<script>alert(1)</script>"],
    }
    ctx = build_context([], info, {"model": {"name": "m<i>"}}, None, tmp_path)
    html = render_html({**ctx, "merged_links": []})
    assert "/data/&lt;b&gt;x&lt;/b&gt;&amp;.fa" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in html and "m&lt;i&gt;" in html
    statuses = {v["id"]: v["status"] for v in ctx["verdicts"]}
    assert statuses == {"PERF-01": "N/A", "PERF-03": "N/A", "CKPT": "N/A"}  # no runs: nothing passes
    assert "N/A: no finished 1-rank production run" in html


def point(label, sps, pack, status="ok", group="packing", elapsed=10.0):
    steady = {"avg_sequences_per_sec": sps, "min_packing_efficiency": pack} if status == "ok" else None
    return {
        "label": label,
        "group": group,
        "status": status,
        "steady": steady,
        "params": {"checkpoint_every": 5, "buffer_size": sum(map(ord, label))},  # one configuration per label
        "summary": {"elapsed_seconds": elapsed},
        "reason": None if status == "ok" else "OOM",
        "repeats": [sps * f for f in (0.99, 1.0, 1.01)] if status == "ok" else [],
    }


def test_best_point_needs_enough_packing_a_finished_run_and_a_significant_gain():
    base = point("base", 100, 0.95, group="baseline")
    pts = [
        base,
        point("fast_but_sparse", 300, 0.80),
        point("good", 200, 0.95),
        point("oom", 0, 0, "failed"),
        point("slower", 150, 0.99),
    ]
    assert best_point(pts, 0.90)["label"] == "good"
    # nothing eligible beats the baseline: the recommendation is the baseline itself, not the fastest point
    assert best_point([base] + pts[1:2] + pts[3:4], 0.90)["label"] == "base"
    assert best_point([base, point("noise", 101, 0.95)], 0.90)["label"] == "base"
    assert best_point(pts[1:], 0.90) is None  # no baseline: nothing to recommend over


def test_checkpoint_overhead_and_job_steady_hand_values():
    assert checkpoint_overhead(point("on", 1, 1, elapsed=11.5), point("off", 1, 1, elapsed=10.0)) == 15.0
    assert checkpoint_overhead(None, point("off", 1, 1)) is None
    ranks = [
        {
            "steady": {
                "avg_tokens_per_sec": 100.0,
                "avg_sequences_per_sec": 2.0,
                "p95_wait_time_ms": 3.0,
                "avg_gpu_util": 90.0,
                "avg_packing_efficiency": 0.95,
                "warmup_excluded": True,
                "excluded_batches": 20,
                "total_batches": 80,
            }
        },
        {
            "steady": {
                "avg_tokens_per_sec": 300.0,
                "avg_sequences_per_sec": 6.0,
                "p95_wait_time_ms": 9.0,
                "avg_gpu_util": None,
                "avg_packing_efficiency": 0.91,
                "warmup_excluded": False,
                "excluded_batches": 0,
                "total_batches": 10,
            }
        },
    ]
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
    ranks = [
        {"rank": r, "device": device, "steady": {"avg_gpu_util": 80.0, "avg_packing_efficiency": 0.95}}
        for r in range(n)
    ]
    return {
        "label": f"ws{n}",
        "status": "ok",
        "params": {"world_size": n},
        "summary": {"elapsed_seconds": elapsed},
        "steady": steady,
        "ranks": ranks,
    }


def test_perf03_hand_values_on_gpus_and_na_on_cpu_processes():
    from virnucpro.report.verdicts import production_verdicts

    from virnucpro.report.scaling import scaling_report

    def perf03(runs):  # speedups come from scaling.json (written once by `virnucpro scaling`), not recomputed
        return [v for v in production_verdicts(runs, {}, scaling_report(runs, 6_000_000, 10, 95)) if v.id == "PERF-03"]

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


def _cells(row: str) -> list[str]:
    import html as html_lib
    import re

    return [html_lib.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def html_verdicts(page: str) -> list[tuple]:
    import re

    table = re.search(r'<table id="verdicts">(.*?)</table>', page, re.S).group(1)
    rows = [_cells(r) for r in re.findall(r"<tr>(.*?)</tr>", table, re.S)][1:]  # the header has <th> only
    return [(c[0], c[5], c[2], c[1], c[3], c[4], c[6]) for c in rows]


def text_verdicts(text: str) -> list[tuple]:
    import re

    block = text.split("\nVerdicts\n", 1)[1].split("\n\n", 1)[0]
    pattern = re.compile(r"^(\S+)\s+(\S+)\s+(.*?): (.*?) = (.*?) \(threshold (.*?)\)(?: \[(.*)\])?$")
    return [tuple(g or "" for g in pattern.match(line).groups()) for line in block.splitlines()]


def full_context(tmp_path, best=None, peers=None, previous=None, extra=(), accuracy=None, config=None):
    from virnucpro.report.render import write_report
    from virnucpro.report.scaling import scaling_report

    runs = []
    for n, elapsed in ((1, 100.0), (2, 52.0)):
        r = production(n, elapsed, "cuda:0")
        r["steady"].update(avg_sequences_per_sec=10.0 * n, avg_tokens_per_sec=510.0 * n, min_packing_efficiency=0.95)
        r["summary"]["total_sequences"] = 1000
        r["phases"] = {
            "read_input": 1.0,
            "load_weights": 5.0,
            "compile": 2.0,
            "warmup": 1.0,
            "loop": elapsed,
            "finalize": 2.0,
        }
        r["group"], r["label"] = "production", f"production_ws{n}"
        for k in r["ranks"]:
            k["telemetry"] = str(tmp_path / f"ws{n}_rank{k['rank']}.json")
        runs.append(r)
    sweeps = [point("baseline", 100.0, 0.95, group="baseline"), point("packing:b2", 101.0, 0.95)]
    for p, budget in zip(sweeps, (4096, 2)):
        p["params"] = {"token_budget": budget, "buffer_size": 2000, "num_workers": 1, "prefetch_factor": 2}
        p["steady"].update(avg_tokens_per_sec=50 * p["steady"]["avg_sequences_per_sec"], p95_wait_time_ms=1.0)
    results = runs + sweeps + list(extra)
    info = {"path": "/x.fa", "sha256": "ab", "num_sequences": 1000, "mean_length": 49.0, "source": "synthetic"}
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = {k: tmp_path / f"report.{k}" for k in ("html", "txt", "json")}
    ctx = write_report(
        results,
        info,
        {"targets": {"target_sequences": 100_000}, **(config or {})},
        best,
        paths["html"],
        paths["txt"],
        paths["json"],
        [],
        None,
        scaling_report(runs, 100_000, 10, 95),
        peers,
        previous,
        accuracy,
    )
    return ctx, {k: p.read_text() for k, p in paths.items()}


def test_report_txt_html_and_summary_render_the_same_verdicts(tmp_path):
    ctx, out = full_context(tmp_path)
    from_html, from_text = html_verdicts(out["html"]), text_verdicts(out["txt"])
    assert len(from_html) == len(ctx["verdicts"]) >= 8
    assert from_text == from_html
    summary = json.loads(out["json"])
    assert [(v["id"], v["status"], v["scope"], v["title"]) for v in summary["verdicts"]] == [
        row[:4] for row in from_html
    ]
    perf01 = [v for v in summary["verdicts"] if v["id"] == "PERF-01"]
    # widest run: read and finalize x 100, fixed 8 s + 2 s of loop ramp (52 s for 1,000 at 20/s), 20 sequences/s
    job = (1 * 100 + 2 * 100 + 8 + 2 + 100_000 / 20) / 3600
    assert perf01[0]["status"] == "PASS" and abs(perf01[0]["value"] - job) < 1e-9
    assert "Requirements" not in out["txt"]  # no second verdict engine (telemetry's own PASS/FAIL list)
    proj = summary["production"][0]["projection"]
    assert {"target_sequences", "loop_hours", "job_hours"} <= set(proj) and proj["target_sequences"] == 100_000


def test_a_sweep_point_with_the_baseline_settings_is_marked_as_such(tmp_path):
    """A grid point that repeats the baseline's settings measures noise, not a setting: the table says so."""
    same = point("packing:b4096_buf2000", 103.0, 0.95)
    same["params"] = {"token_budget": 4096, "buffer_size": 2000, "num_workers": 1, "prefetch_factor": 2}
    same["steady"].update(avg_tokens_per_sec=5150.0, p95_wait_time_ms=1.0)
    ctx, out = full_context(tmp_path, extra=[same])
    marked = {r["label"] for r in ctx["sweep_rows"] if r["baseline_settings"]}
    assert marked == {"packing:b4096_buf2000"}  # not the baseline itself, not packing:b2
    assert out["html"].count("the baseline's configuration: its speedup is run-to-run noise") == 1
    points = {p["label"]: p for p in json.loads(out["json"])["sweep_points"]}
    assert points["packing:b4096_buf2000"]["baseline_settings"] and not points["packing:b2"]["baseline_settings"]


def test_the_sweep_table_shows_the_decisions_speedup_interval_and_why_a_point_was_not_compared(tmp_path):
    """One statistic for the table and the decision: best.json's ratio of geometric means and its simultaneous
    interval (not a ratio of medians), or the reason a point was left out; without best.json, the median ratio."""
    from virnucpro.report.significance import sweep_decision

    sparse = point("packing:sparse", 300.0, 0.5)
    sparse["params"] = {"token_budget": 9, "buffer_size": 2000, "num_workers": 1, "prefetch_factor": 2}
    ctx, out = full_context(tmp_path / "plain", extra=[sparse])
    rows = {r["label"]: r for r in ctx["sweep_rows"]}
    assert rows["packing:sparse"]["speedup"] == 3.0 and rows["packing:sparse"]["speedup_source"] == "ratio of medians"
    assert "ratio of medians (best.json was not given: no interval)" in " ".join(out["html"].split())
    results = [r for r in ctx["sweep_rows"] if r["group"] in ("baseline", "packing")]
    best = sweep_decision(results, 0.90, between_job_cv=0.01)
    ctx, out = full_context(tmp_path / "best", best=best, extra=[sparse])
    rows = {r["label"]: r for r in ctx["sweep_rows"]}
    b2 = rows["packing:b2"]
    assert b2["speedup_source"] == "best.json" and b2["speedup_ci95"][0] < b2["speedup"] < b2["speedup_ci95"][1]
    assert rows["packing:sparse"]["speedup"] is None
    table = out["html"].split('id="sweeps"')[1].split("</table>")[0]
    assert "not compared: packing efficiency 0.500 &lt; 0.90" in table
    assert f"{b2['speedup']:.2f}× [{b2['speedup_ci95'][0]:.2f}–{b2['speedup_ci95'][1]:.2f}]" in table
    points = {p["label"]: p for p in json.loads(out["json"])["sweep_points"]}
    assert points["packing:b2"]["speedup_ci95"] == b2["speedup_ci95"] and points["packing:b2"]["significant"] is False
    assert points["packing:sparse"]["not_compared_because"].startswith("packing efficiency")
    assert "Noise check: no two points ran one configuration" in " ".join(out["html"].split())


def test_best_json_is_shown_not_rechosen_and_no_winner_says_so(tmp_path):
    params = {"token_budget": 4096, "buffer_size": 2000, "num_workers": 1, "prefetch_factor": 2}
    no_winner = {
        "label": None,
        "params": params,
        "steady": None,
        "speedup_over_baseline": None,
        "significant": False,
        "speedup_ci95": [0.97, 1.04],
        "note": "no point beats the baseline beyond noise",
    }
    ctx, out = full_context(tmp_path, best=no_winner)
    assert not ctx["winner"] and "No winner:</b> no point beats the baseline beyond noise" in out["html"]
    assert "token_budget: 4096" in ctx["snippet"] and "Ready to paste" not in out["html"]
    summary = json.loads(out["json"])
    assert summary["best"]["significant"] is False and summary["best"]["speedup_ci95"] == [0.97, 1.04]
    winner = {
        "label": "packing:b2",
        "params": {**params, "token_budget": 2},
        "steady": {"avg_sequences_per_sec": 1.0},
        "speedup": 1.2,
        "speedup_over_baseline": 1.2,
        "significant": True,
        "speedup_ci95": [1.1, 1.3],
        "baseline_label": "baseline",
        "sweep_points": [{"label": "baseline", "params": params}],
    }
    # a sweep's winner is a candidate until its own job confirms it: before that, the baseline's settings
    ctx, out = full_context(tmp_path, best=winner)
    assert not ctx["winner"] and ctx["recommendation"]["status"] == "not validated"
    assert "Not recommended:</b> packing:b2 (1.20x the baseline in the sweep) is not recommended" in out["html"]
    assert "token_budget: 4096" in ctx["snippet"] and "Ready to paste" not in out["html"]
    assert "NOT RECOMMENDED" in out["txt"]
    optimal = point("optimal_validation", 1.0, 0.95, group="optimal")
    optimal["validation"] = {"speedup": 1.15, "speedup_ci95": [1.08, 1.22], "confirmed": True, "contradicted": False}
    ctx, out = full_context(tmp_path, best=winner, extra=[optimal])
    assert ctx["winner"] and "Ready to paste" in out["html"] and "token_budget: 2" in ctx["snippet"]
    assert "confirmed by its validation: 1.15x" in out["html"]
    optimal["validation"] |= {"speedup": 0.99, "speedup_ci95": [0.95, 1.03], "confirmed": False, "contradicted": True}
    ctx, out = full_context(tmp_path, best=winner, extra=[optimal])
    assert (
        not ctx["winner"]
        and "its validation contradicts the sweep" in out["html"]
        and "Ready to paste" not in out["html"]
    )
    best = json.loads(out["json"])["best"]
    assert best["recommendation"]["status"] == "contradicted" and best["recommendation"]["params"] == params
    assert best["validation"]["contradicted"] and best["validation"]["speedup_ci95"] == [0.95, 1.03]


def test_compare_to_marks_changes_significant_only_with_separate_intervals(tmp_path):
    from virnucpro.report.compare import compare

    before = {
        "sweep_points": [
            {"label": "a", "sequences_per_sec": 100.0, "ci95": [98.0, 102.0]},
            {"label": "b", "sequences_per_sec": 100.0, "ci95": [98.0, 102.0]},
            {"label": "c", "sequences_per_sec": 100.0},
        ],
        "production": [{"label": "ws1", "steady": {"avg_tokens_per_sec": 1000.0}, "projection": {"job_hours": 2.0}}],
        "precision": [{"precision": "fp8", "cosine_p01": 0.995, "rel_l2_median": 0.09}],
    }
    now = {
        "sweep_points": [
            {"label": "a", "sequences_per_sec": 110.0, "ci95": [108.0, 112.0]},
            {"label": "b", "sequences_per_sec": 101.0, "ci95": [99.0, 103.0]},
            {"label": "c", "sequences_per_sec": 150.0},
        ],
        "production": [{"label": "ws1", "steady": {"avg_tokens_per_sec": 900.0}, "projection": {"job_hours": 2.5}}],
        "precision": [{"precision": "fp8", "cosine_p01": 0.9995, "rel_l2_median": None}],
    }
    rows = {r["figure"]: r for r in compare(now, before, "prev.json")["rows"]}
    assert rows["precision fp8: cosine p01"]["current"] == 0.9995  # accuracy is compared too (no interval)
    assert "precision fp8: relative L2 median" not in rows  # N/A now: not a number to compare
    assert rows["a: sequences/s"]["significant"] is True and rows["a: sequences/s"]["better"] is True
    assert abs(rows["a: sequences/s"]["change_pct"] - 10.0) < 1e-9
    assert rows["b: sequences/s"]["significant"] is False
    assert rows["c: sequences/s"]["significant"] is None and rows["c: sequences/s"]["note"] == "no interval"
    assert rows["ws1: job hours at target"]["change_pct"] == 25.0
    # with the windows on both sides, two jobs are compared as the sweep compares them: a 0.5 % shift with tight
    # windows is a change only if jobs never drift (between_job_cv 0); the H200 runs of one setting moved 0.3 %
    tight = {"sweep_points": [{"label": "a", "sequences_per_sec": 100.5, "repeats": [100.4, 100.5, 100.6]}]}
    prior = {"sweep_points": [{"label": "a", "sequences_per_sec": 100.0, "repeats": [99.9, 100.0, 100.1]}]}
    row = compare(tight, prior, "p")["rows"][0]
    assert row["significant"] is True and "with the between-job allowance" in row["note"]
    assert compare(tight, prior, "p", between_job_cv=0.01)["rows"][0]["significant"] is False
    ctx, out = full_context(tmp_path / "a")
    ctx2, out2 = full_context(tmp_path / "b", previous=("prev/summary.json", json.loads(out["json"])))
    table = out2["html"].split('id="comparison-table"')[1].split("</table>")[0]
    assert "production_ws1: job hours at target" in table and "no interval" in table
    assert json.loads(out2["json"])["comparison"]["previous"] == "prev/summary.json"


def test_peers_ratios_use_each_kind_at_its_best(tmp_path):
    rows = [
        {"engine": "x", "kind": "fair-esm", "tokens_per_sec": 200.0},
        {"engine": "y", "kind": "fair-esm", "tokens_per_sec": 255.0},
        {"engine": "z", "kind": "hf", "tokens_per_sec": 170.0},
        {"engine": "e", "kind": "extract.py", "tokens_per_sec": 51.0},
    ]
    ctx, out = full_context(
        tmp_path, peers={"model": "m", "device": "H100", "runs": rows, "na": {"hf bfloat16": "not installed"}}
    )
    ratios = ctx["peers"]["ratios"]  # this engine: production_ws1, 510 tokens/s per GPU
    assert ratios == {
        "x fair-esm (at its best)": 2.0,
        "x HF EsmModel (at its best)": 3.0,
        "x fair-esm extract.py recipe": 10.0,
    }
    assert "2.00 x fair-esm (at its best)" in out["html"] and "not installed" in out["html"]
    assert ctx["peers"]["spread_pct"] is None and "Uncertain" not in out["html"]  # no probes: nothing to say


def test_peers_that_disagree_with_their_own_probe_are_marked_uncertain(tmp_path):
    """On 3,000 reads (H200, 2026-12-07) HF bf16 probed 40,812 tokens/s at 16,384 tokens and then ran 47,354."""
    grid = [{"token_budget": 16384, "tokens_per_sec": 40812.0}, {"token_budget": 65536, "tokens_per_sec": 38426.0}]
    steady = {"engine": "y", "kind": "fair-esm", "tokens_per_sec": 255.0, "token_budget": 16384}
    steady["budget_grid"] = [{"token_budget": 16384, "tokens_per_sec": 250.0}]  # 2 %: within the note's bound
    rows = [
        steady,
        {"engine": "z", "kind": "hf", "tokens_per_sec": 47354.0, "token_budget": 16384, "budget_grid": grid},
    ]
    ctx, out = full_context(tmp_path, peers={"model": "m", "device": "H200", "runs": rows})
    assert abs(ctx["peers"]["spread_pct"] - 100 * (47354 - 40812) / 47354) < 1e-9
    assert "differ by up to 14 %" in out["html"] and "UNCERTAIN: a peer's budget probe" in out["txt"]
    rows[1]["budget_grid"] = [{"token_budget": 16384, "tokens_per_sec": 47000.0}]  # 0.7 %: no caveat
    ctx, out = full_context(tmp_path, peers={"model": "m", "device": "H200", "runs": rows})
    assert "caveat" not in ctx["peers"] and "UNCERTAIN" not in out["txt"]


def test_merge_telemetry_reads_the_shards_its_result_lists(tmp_path, capsys):
    from virnucpro.cli import main
    from virnucpro.utils.telemetry import TelemetryLogger

    shards = []
    for rank in (0, 1):
        t = TelemetryLogger(tmp_path / "telemetry", run_id=f"rank{rank}")
        t.set_run_metadata(rank=rank, model="m")
        t.record_batch(0, {"num_sequences": 3 + rank, "num_tokens": 30, "batch_seconds": 0.1})
        shards.append(t.finalize(elapsed_seconds=1.0))
    result = tmp_path / "ws2.json"
    result.write_text(
        json.dumps(
            {
                "label": "production_ws2",
                "group": "production",
                "params": {},
                "status": "ok",
                "ranks": [{"rank": r, "telemetry": str(p)} for r, p in enumerate(shards)],
            }
        )
    )
    assert main(["merge-telemetry", "--result", str(result), "-o", str(tmp_path / "m.json")]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["summary"]["total_sequences"] == 7 and merged["run_metadata"]["shards"] == [str(p) for p in shards]
    shards[1].unlink()
    assert main(["merge-telemetry", "--result", str(result), "-o", str(tmp_path / "m2.json")]) == 2
    assert "rank telemetry missing" in capsys.readouterr().err and not (tmp_path / "m2.json").exists()
    assert (
        main(
            [
                "report",
                str(result),
                "--input-info",
                str(tmp_path / "nope.json"),
                "--config",
                str(result),
                "--scaling",
                str(result),
                "--html",
                str(tmp_path / "r.html"),
            ]
        )
        == 2
    )
    assert "--input-info" in capsys.readouterr().err and not (tmp_path / "r.html").exists()


def test_perf03_of_a_resumed_run_is_na_with_scaling_json_reason():
    from virnucpro.report.scaling import scaling_report
    from virnucpro.report.verdicts import production_verdicts

    runs = [production(1, 100.0, "cuda:0"), production(2, 52.0, "cuda:0")]
    runs[1].update(resumed=True, resumed_sequences=300)
    [v] = [v for v in production_verdicts(runs, {}, scaling_report(runs, 6_000_000, 10, 95)) if v.id == "PERF-03"]
    assert v.status == "N/A" and v.value is None and "resumed run" in v.reason and "300" in v.reason


def test_no_verdict_rests_on_an_invalid_run_but_its_figure_stays_visible():
    """A PASS or FAIL from a run flagged INVALID (here: too few steady batches) is N/A, names the run and why,
    and keeps the measured figure; the same figures from valid runs are judged."""
    from virnucpro.report.scaling import scaling_report
    from virnucpro.report.verdicts import checkpoint_verdict, production_verdicts

    runs = [production(1, 100.0, "cuda:0"), production(2, 52.0, "cuda:0")]
    runs[0].update(valid=False, invalid_reasons=["3 steady batches (< 20)"])
    verdicts = production_verdicts(runs, {}, scaling_report(runs, 6_000_000, 10, 95))
    on_ws1 = [v for v in verdicts if v.scope.startswith("ws1")] + [v for v in verdicts if v.id == "PERF-03"]
    assert {v.id for v in on_ws1} == {"PERF-02", "PERF-03", "PERF-05", "LOADER"}  # PERF-03 compares with ws1
    for v in on_ws1:
        assert v.status == "N/A" and v.value is not None, v
        assert v.reason.startswith("not judged: ws1 INVALID (see Runs flagged); the figure alone: PASS"), v
    ws2 = [v for v in verdicts if v.scope.startswith("ws2") and v.id not in ("PERF-01", "PERF-03")]  # no phases
    assert ws2 and all(v.status == "PASS" for v in ws2)
    on, off = production(1, 11.0, "cuda:0"), production(1, 10.0, "cuda:0")
    on["params"]["checkpoint_every"] = 100
    assert checkpoint_verdict(on, off, {}).status == "PASS"  # 10 %
    off.update(valid=False, invalid_reasons=["warm-up not excluded"])
    v = checkpoint_verdict(on, off, {})
    assert v.status == "N/A" and abs(v.value - 10.0) < 1e-9 and "ws1 INVALID" in v.reason


def test_report_txt_lists_the_runs_flagged_that_its_verdicts_point_to(tmp_path):
    flagged = production(1, 10.0, "cuda:0")
    flagged.update(label="checkpoint_off", group="checkpoint", valid=False, invalid_reasons=["warm-up not excluded"])
    for k in flagged["ranks"]:
        k["telemetry"] = str(tmp_path / "off.json")
    _, out = full_context(tmp_path, extra=[flagged])
    assert "Runs flagged\n  checkpoint_off: INVALID (warm-up not excluded)\n" in out["txt"]
    assert 'id="flagged"' in out["html"]


def test_the_precision_table_puts_accuracy_next_to_speed_and_says_why_where_not_measured(tmp_path):
    from test_measure import accuracy_file

    from virnucpro.report.accuracy import load_accuracy

    bf16 = point("precision:bf16", 150.0, 0.95, group="precision")
    fp8 = point("precision:fp8", 0, 0, "failed", group="precision")  # e.g. no Hopper GPU: exit 2, recorded
    fp8["reason"] = "--precision fp8 needs a Hopper GPU"
    fp16 = point("precision:fp16", 120.0, 0.95, group="precision")  # measured, but no accuracy result
    for p, name in ((bf16, "bf16"), (fp8, "fp8"), (fp16, "fp16")):
        p["params"] = {"token_budget": 4096, "precision": name}
    bf16.update(median=150.0, ci95=[140.0, 160.0], measurement={"precision": "bf16"})
    ckpt = {"weights": "checkpoint", "path": "/w/esm2.pt", "sha256": "abcdef0123456789"}
    accuracy = load_accuracy(
        [
            accuracy_file(tmp_path / "bf16.json", "bf16", True),
            accuracy_file(tmp_path / "fp8.json", "fp8", False, fraction=0.93, weights=ckpt),
        ]
    )
    winner = {"label": "precision:bf16", "params": bf16["params"], "significant": True, "speedup_ci95": [1.4, 1.6]}
    optimal = point("optimal_validation", 150.0, 0.95, group="optimal")
    optimal["validation"] = {"speedup": 1.5, "speedup_ci95": [1.4, 1.6], "confirmed": True}
    ctx, out = full_context(
        tmp_path / "r",
        best=winner,
        extra=[bf16, fp8, fp16, optimal],
        accuracy=accuracy,
        config={"model": {"precision": "auto"}},
    )
    rows = {r["label"]: r for r in ctx["precision_rows"]}
    assert list(rows) == ["baseline", "precision:bf16", "precision:fp16", "precision:fp8"]
    assert rows["precision:bf16"]["speedup"] == 1.5 and rows["precision:bf16"]["gate"] == "PASS"
    assert "random weights" in rows["precision:bf16"]["provenance"]
    assert rows["precision:fp8"]["gate"] == "FAIL" and rows["precision:fp8"]["sequences_per_sec"] is None
    assert "Hopper" in rows["precision:fp8"]["speed_na_reason"] and "/w/esm2.pt" in rows["precision:fp8"]["provenance"]
    assert (
        rows["precision:fp16"]["gate"] == "N/A" and "no accuracy measurement" in rows["precision:fp16"]["gate_reason"]
    )
    assert rows["baseline"]["precision"] is None and rows["baseline"]["gate"] == "N/A"  # it ran before precision
    table = out["html"].split('id="precision-table"')[1].split("</table>")[0]
    assert "N/A: did not finish: --precision fp8 needs a Hopper GPU" in table and "FAIL: 93.0 %" in table
    assert "1.50×" in table and "140.0–160.0" in table and "random weights" in table
    summary = json.loads(out["json"])
    assert [r["label"] for r in summary["precision"]] == list(rows)
    assert summary["precision"][1]["cosine_p01"] == 0.9997 and summary["precision"][1]["rel_l2_p99"] == 9e-3
    acc = {v["scope"]: v for v in summary["verdicts"] if v["id"] == "ACCURACY"}
    assert {k: v["status"] for k, v in acc.items()} == {
        "precision bf16": "PASS",
        "precision fp16": "N/A",
        "precision fp8": "FAIL",
    }
    assert text_verdicts(out["txt"]) == html_verdicts(out["html"])  # the gate is one verdict engine's
    assert "fp8 (precision:fp8): speed N/A: did not finish" in out["txt"] and "accuracy gate FAIL" in out["txt"]
    assert ctx["snippet"].startswith("model:\n  precision: bf16\n")  # a recommended precision goes where it lives
    ctx, out = full_context(tmp_path / "none")
    assert (
        ctx["precision_rows"] == [] and "N/A: no precision sweep" in out["html"] and "N/A: no precision" in out["txt"]
    )


def test_the_validation_shows_the_in_job_comparison_when_there_is_one(tmp_path):
    winner = {"label": "packing:b2", "params": {"token_budget": 2}, "steady": None, "significant": True}
    winner |= {"speedup_over_baseline": 1.2, "speedup_ci95": [1.1, 1.3]}
    optimal = point("optimal_validation", 100.0, 0.95, group="optimal")
    optimal["steady"]["projected_hours"] = 1.5
    v = {"significant_claim": True, "speedup": 1.004, "speedup_ci95": [0.98, 1.03], "confirmed": False}
    optimal |= {"baseline_in_job": point("optimal_validation:baseline_in_job", 99.6, 0.95, group="optimal")}
    optimal["validation"] = {**v, "contradicted": True, "drift_between_jobs": True}
    _, out = full_context(tmp_path / "a", best=winner, extra=[optimal])
    html = " ".join(out["html"].split())
    assert "1.004× (95 % interval 0.980–1.030) over the baseline's settings, measured in the same job" in html
    assert "contradicts the sweep" in html and "jobs drifted" in html
    del optimal["baseline_in_job"]
    optimal["validation"] = {**v, "significant_claim": False, "contradicted": False, "drift_between_jobs": False}
    _, out = full_context(tmp_path / "b", best=winner, extra=[optimal])
    assert "the sweep's baseline job: agrees (no gain claimed)" in " ".join(out["html"].split())


def test_the_report_says_which_precision_auto_ran():
    from virnucpro.report.render import precision_text

    ran = [{"ranks": [{"precision": "fp32"}, {"precision": "fp32"}]}]
    assert precision_text("auto", ran) == "auto (ran fp32)"
    assert precision_text("bf16", [{"ranks": [{"precision": "bf16"}]}]) == "bf16"
    assert precision_text("auto", [{"ranks": []}]) == "auto"  # no production rank finished: nothing to add
