"""`results/report.html` (Jinja2, autoescaped, one self-contained file), `report.txt` and `summary.json`."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, Undefined, select_autoescape

from virnucpro.report import plots
from virnucpro.report.results import best_point, scaling_table, speedup
from virnucpro.report.verdicts import DEFAULT_THRESHOLDS, checkpoint_verdict, production_verdicts
from virnucpro.utils.hardware import package_versions

SWEEP_GROUPS = ("baseline", "dataloader", "packing", "interaction")


def git_commit(path: Path) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return res.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def _cell_label(result: dict) -> str:
    return "OOM" if result.get("reason") == "OOM" else "FAILED"


def _grid(results: list[dict], row_key: str, col_key: str, metric) -> tuple[list, list, dict]:
    rows = sorted({r["params"][row_key] for r in results})
    cols = sorted({r["params"][col_key] for r in results})
    cells = {(r["params"][row_key], r["params"][col_key]): (metric(r) if r["status"] == "ok" else _cell_label(r))
             for r in results}
    return rows, cols, cells


def _rel(path: str, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return path


def build_context(results: list[dict], input_info: dict, config: dict, best: dict | None, out_dir: Path,
                  workflow_dir: Path | None = None) -> dict[str, Any]:
    thresholds = {**DEFAULT_THRESHOLDS, **(config.get("targets") or {})}
    warm = config.get("warmup") or {}
    warmup_seconds, warmup_batches = float(warm.get("seconds", 60)), int(warm.get("batches", 20))
    by_group: dict[str, list[dict]] = {}
    for r in results:
        by_group.setdefault(r["group"], []).append(r)
    production = sorted(by_group.get("production", []), key=lambda r: r["params"]["world_size"])
    baseline = (by_group.get("baseline") or [None])[0]
    ckpt = {r["label"]: r for r in by_group.get("checkpoint", [])}
    ckpt_on, ckpt_off = ckpt.get("checkpoint_on"), ckpt.get("checkpoint_off")

    verdicts = production_verdicts(production, thresholds) + [checkpoint_verdict(ckpt_on, ckpt_off, thresholds)]
    scaling_rows = scaling_table(production, thresholds["min_scaling_efficiency"])

    def seqs(r):
        return r["steady"]["avg_sequences_per_sec"]

    def packing(r):
        return r["steady"]["min_packing_efficiency"]

    figures = {"throughput": [], "heatmaps": []}
    for run in production:
        svg = plots.throughput_over_time(run, warmup_seconds, warmup_batches)
        if svg:
            figures["throughput"].append(svg)
    figures["scaling"] = plots.scaling([(r["world_size"], r["speedup"]) for r in scaling_rows])
    if by_group.get("dataloader"):
        figures["heatmaps"].append(plots.heatmap(*_grid(by_group["dataloader"], "num_workers", "prefetch_factor", seqs),
                                                 "num_workers", "prefetch_factor", "DataLoader sweep: sequences/s",
                                                 ",.0f"))
    if by_group.get("packing"):
        figures["heatmaps"].append(plots.heatmap(*_grid(by_group["packing"], "token_budget", "buffer_size", seqs),
                                                 "token_budget", "buffer_size", "packing sweep: sequences/s", ",.0f"))
        figures["heatmaps"].append(plots.heatmap(*_grid(by_group["packing"], "token_budget", "buffer_size", packing),
                                                 "token_budget", "buffer_size", "packing sweep: packing efficiency",
                                                 ".3f"))
    figures["heatmaps"] = [f for f in figures["heatmaps"] if f]

    sweep_rows = []
    for group in SWEEP_GROUPS:
        for r in sorted(by_group.get(group, []), key=lambda r: r["label"]):
            sweep_rows.append({**r, "speedup": speedup(r, baseline)})
    chosen = best_point([r for g in SWEEP_GROUPS for r in by_group.get(g, [])], thresholds["min_packing"])
    optimal = (by_group.get("optimal") or [None])[0]
    snippet = None
    if chosen:
        engine = {k: chosen["params"][k] for k in ("token_budget", "buffer_size", "num_workers", "prefetch_factor")}
        snippet = yaml.safe_dump({"engine": engine}, sort_keys=False)

    weights = next((r.get("weights") for r in results if r.get("weights")), None) or {}
    hardware = next((r.get("hardware") for r in production if r.get("hardware")), None) or \
        next((r.get("hardware") for r in results if r.get("hardware")), None) or {}
    telemetry_links = [{"label": r["label"], "rank": k["rank"], "href": _rel(k["telemetry"], out_dir)}
                       for r in results for k in r.get("ranks", [])]
    slurm_ids = sorted({r["slurm_job_id"] for r in results if r.get("slurm_job_id")})
    counts = {s: sum(v.status == s for v in verdicts) for s in ("PASS", "FAIL", "N/A")}
    return {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(workflow_dir) if workflow_dir else None,
        "config_yaml": yaml.safe_dump(config, sort_keys=False),
        "input": input_info,
        "model": (config.get("model") or {}).get("name") or weights.get("model"),
        "weights": weights,
        "random_weights": weights.get("weights") == "random",
        "precision": (config.get("model") or {}).get("precision"),
        "hardware": hardware,
        "versions": package_versions(),
        "slurm_job_ids": slurm_ids,
        "thresholds": thresholds,
        "warmup_seconds": warmup_seconds,
        "warmup_batches": warmup_batches,
        "verdicts": [v.as_dict() for v in verdicts],
        "verdict_counts": counts,
        "production": production,
        "scaling": scaling_rows,
        "figures": figures,
        "sweep_rows": sweep_rows,
        "interaction": sorted(by_group.get("interaction", []), key=lambda r: (r["params"]["num_workers"],
                                                                             r["params"]["token_budget"])),
        "baseline": baseline,
        "best": chosen,
        "best_speedup": speedup(chosen, baseline) if chosen else None,
        "best_file": best,
        "optimal": optimal,
        "optimal_speedup": speedup(optimal, baseline) if optimal else None,
        "snippet": snippet,
        "subset": by_group.get("subset", []),
        "checkpoint_runs": [r for r in (ckpt_off, ckpt_on) if r],
        "telemetry_links": telemetry_links,
        "site": config.get("site"),
        "flagged": [r for r in results if r["status"] == "ok" and (r.get("resumed") or not r.get("valid", True))],
    }


def _fmt(value, spec=",.1f", na="N/A"):
    if value is None or isinstance(value, Undefined):
        return na
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def render_html(context: dict) -> str:
    env = Environment(loader=PackageLoader("virnucpro.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"], default=True))
    env.filters["fmt"] = _fmt
    return env.get_template("report.html.j2").render(**context)


def summary_json(context: dict) -> dict:
    keep = ("generated", "git_commit", "input", "model", "weights", "precision", "hardware", "versions",
            "slurm_job_ids", "thresholds", "verdicts", "verdict_counts", "scaling")
    out = {k: context[k] for k in keep}
    out["production"] = [{k: r.get(k) for k in ("label", "params", "status", "reason", "steady")}
                         for r in context["production"]]
    out["best"] = ({k: context["best"][k] for k in ("label", "params", "steady")} if context["best"] else None)
    out["best_speedup_over_baseline"] = context["best_speedup"]
    out["flagged_runs"] = [{k: r.get(k) for k in ("label", "valid", "invalid_reasons", "resumed", "resumed_sequences")}
                           for r in context["flagged"]]
    out["sweep_points"] = [{k: r.get(k) for k in ("label", "group", "params", "status", "reason")}
                           for r in context["sweep_rows"]]
    return out


def write_report(results: list[dict], input_info: dict, config: dict, best: dict | None, html_path: Path,
                 text_path: Path | None = None, json_path: Path | None = None, merged_telemetry: list[Path] = (),
                 workflow_dir: Path | None = None) -> dict:
    from virnucpro.utils.telemetry import generate_performance_report

    html_path.parent.mkdir(parents=True, exist_ok=True)
    context = build_context(results, input_info, config, best, html_path.parent, workflow_dir)
    context["merged_links"] = [_rel(str(p), html_path.parent) for p in merged_telemetry]
    html_path.write_text(render_html(context))
    if text_path is not None:
        th = context["thresholds"]
        parts = [generate_performance_report(p, max_hours=th["max_hours"], min_gpu_util=th["min_gpu_util"],
                                             min_packing=th["min_packing"], max_p95_wait_ms=th["max_p95_wait_ms"])
                 for p in merged_telemetry]
        verdict_lines = [f"{v['id']:8} {v['status']:5} {v['scope']}: {v['title']} = {_fmt(v['value'], '.3g')}"
                         f"{' ' + v['unit'] if v['value'] is not None else ''} (threshold {v['threshold']})" + (f" [{v['reason']}]" if v["reason"] else "")
                         for v in context["verdicts"]]
        text_path.write_text("\n".join(["Verdicts", *verdict_lines, "", *parts]))
    if json_path is not None:
        json_path.write_text(json.dumps(summary_json(context), indent=2, default=str))
    return context
