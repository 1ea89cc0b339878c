"""`results/report.html` (Jinja2, autoescaped, one self-contained file), `report.txt` and `summary.json`."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, Undefined

from virnucpro.defaults import TARGET_TOKENS_PER_SEQUENCE, WARMUP_BATCHES, WARMUP_SECONDS
from virnucpro.report import plots
from virnucpro.report.compare import compare
from virnucpro.report.accuracy import result_precision
from virnucpro.report.peers import peer_comparison
from virnucpro.report.precision import precision_rows
from virnucpro.report.results import at_target, invalid_run, speedup
from virnucpro.report.significance import recommendation, same_configuration
from virnucpro.report.verdicts import DEFAULT_THRESHOLDS, accuracy_verdicts, checkpoint_verdict, production_verdicts
from virnucpro.utils.hardware import package_versions
from virnucpro.utils.jsonfile import check_output_paths, write_text_atomic

SWEEP_GROUPS = ("baseline", "dataloader", "packing", "interaction", "precision")
ENGINE_KNOBS = ("token_budget", "buffer_size", "num_workers", "prefetch_factor")


def git_commit(path: Path) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return res.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def _cell_label(result: dict) -> str:
    return "OOM" if result.get("reason") == "OOM" else "FAILED"


def _grid(results: list[dict], row_key: str, col_key: str, metric) -> tuple[list, list, dict]:
    rows = sorted({r["params"][row_key] for r in results})
    cols = sorted({r["params"][col_key] for r in results})
    cells = {
        (r["params"][row_key], r["params"][col_key]): (metric(r) if r["status"] == "ok" else _cell_label(r))
        for r in results
    }
    return rows, cols, cells


def _rel(path: str, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return path


def _best_section(best: dict | None, config: dict, validation: dict | None) -> dict[str, Any]:
    """What the report says about best.json (written by `best-config`; never re-chosen here) and its validation:
    the snippet is what `significance.recommendation` recommends (a winner only once validated). A precision other
    than the configured one goes in the snippet's `model` section, where the config holds it."""
    rec = recommendation(best, validation)
    if rec is None:
        return {"best": best, "snippet": None, "winner": False, "recommendation": None}
    params = rec.get("params") or {}
    snippet = {"engine": {k: params[k] for k in ENGINE_KNOBS if k in params}}
    if params.get("precision") not in (None, (config.get("model") or {}).get("precision")):
        snippet = {"model": {"precision": params["precision"]}, **snippet}
    return {
        "best": best,
        "winner": rec["status"] == "validated",
        "recommendation": rec,
        "snippet": yaml.safe_dump(snippet, sort_keys=False) if params else None,
    }


def _figures(production, by_group, scaling, warmup_seconds, warmup_batches) -> dict[str, Any]:
    def seqs(r):
        return r["steady"]["avg_sequences_per_sec"]

    def packing(r):
        return r["steady"]["min_packing_efficiency"]

    figures = {
        "throughput": [
            f for f in (plots.throughput_over_time(run, warmup_seconds, warmup_batches) for run in production) if f
        ],
        "heatmaps": [],
    }
    figures["scaling"] = plots.scaling([(r["world_size"], r["speedup"]) for r in scaling.get("rows") or []])
    figures["model"] = plots.gpu_model(
        scaling.get("model") or {}, scaling.get("projections") or [], scaling.get("max_hours")
    )
    if by_group.get("dataloader"):
        figures["heatmaps"].append(
            plots.heatmap(
                *_grid(by_group["dataloader"], "num_workers", "prefetch_factor", seqs),
                "num_workers",
                "prefetch_factor",
                "DataLoader sweep: sequences/s",
                ",.0f",
            )
        )
    if by_group.get("packing"):
        figures["heatmaps"].append(
            plots.heatmap(
                *_grid(by_group["packing"], "token_budget", "buffer_size", seqs),
                "token_budget",
                "buffer_size",
                "packing sweep: sequences/s",
                ",.0f",
            )
        )
        figures["heatmaps"].append(
            plots.heatmap(
                *_grid(by_group["packing"], "token_budget", "buffer_size", packing),
                "token_budget",
                "buffer_size",
                "packing sweep: packing efficiency",
                ".3f",
            )
        )
    figures["heatmaps"] = [f for f in figures["heatmaps"] if f]
    return figures


def verdict_rows(verdicts: list) -> list[dict]:
    """The verdicts as display rows: report.txt and the HTML print these same strings (one engine, one text)."""
    rows = []
    for v in verdicts:
        d = v.as_dict()
        d["value_text"] = _fmt(d["value"], ".3g") + (f" {d['unit']}" if d["value"] is not None and d["unit"] else "")
        rows.append(d)
    return rows


def precision_text(configured: str | None, production: list[dict]) -> str | None:
    """The configured precision, with what the production runs' ranks ran where that differs ("auto (ran fp32)")."""
    ran = sorted({r["precision"] for run in production for r in run.get("ranks", []) if r.get("precision")})
    return configured if not ran or ran == [configured] else f"{configured} (ran {', '.join(ran)})"


def _provenance(results: list[dict], production: list[dict], config: dict, workflow_dir: Path | None) -> dict:
    """Where the numbers come from: date, commit, config, model and weights, hardware, versions, Slurm jobs."""
    weights = next((r.get("weights") for r in results if r.get("weights")), None) or {}
    hardware = (
        next((r.get("hardware") for r in production if r.get("hardware")), None)
        or next((r.get("hardware") for r in results if r.get("hardware")), None)
        or {}
    )
    return {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(workflow_dir) if workflow_dir else None,
        "config_yaml": yaml.safe_dump(config, sort_keys=False),
        "model": (config.get("model") or {}).get("name") or weights.get("model"),
        "weights": weights,
        "random_weights": weights.get("weights") == "random",
        "precision": precision_text((config.get("model") or {}).get("precision"), production),
        "hardware": hardware,
        "versions": package_versions(),
        "slurm_job_ids": sorted({r["slurm_job_id"] for r in results if r.get("slurm_job_id")}),
    }


def _by_group(results: list[dict], scaling: dict) -> tuple[dict[str, list[dict]], list[dict]]:
    """The results by group, and the production runs (each with its projection) in world-size order."""
    by_group: dict[str, list[dict]] = {}
    for r in results:
        by_group.setdefault(r["group"], []).append(r)
    projections = {p["label"]: p["projection"] for p in scaling.get("projections") or []}
    production = sorted(
        ({**r, "projection": projections.get(r["label"])} for r in by_group.get("production", [])),
        key=lambda r: r["params"]["world_size"],
    )
    return by_group, production


#: What the sweep table takes from best.json's row of each point: the decision's own figures.
DECISION_KEYS = ("speedup", "speedup_ci95", "significant", "compared", "not_compared_because")


def _sweep_row(r: dict, baseline: dict | None, decided: dict | None) -> dict:
    """One point as the sweep table shows it: with best.json, the speedup (ratio of geometric means) and the
    simultaneous interval the decision used, or why the point was not compared; without it, the ratio of
    medians alone (`speedup_source` says which)."""
    row = {**r, "precision": result_precision(r)}
    row["baseline_settings"] = bool(baseline) and r is not baseline and same_configuration(r, baseline)
    if decided is not None:
        return {**row, **{k: decided.get(k) for k in DECISION_KEYS}, "speedup_source": "best.json"}
    return {**row, "speedup": speedup(r, baseline), "speedup_ci95": None, "speedup_source": "ratio of medians"}


def _sweeps(
    by_group: dict[str, list[dict]], baseline: dict | None, best: dict | None, optimal: dict | None
) -> dict[str, Any]:
    """The sweep table (each point's speedup over the baseline), the interaction table and the optimal run."""
    decided = {row["label"]: row for row in (best or {}).get("sweep_points") or []}
    return {
        "sweep_rows": [
            _sweep_row(r, baseline, decided.get(r["label"]) if decided else None)
            for group in SWEEP_GROUPS
            for r in sorted(by_group.get(group, []), key=lambda r: r["label"])
        ],
        "noise_check": (best or {}).get("noise_check"),
        "interaction": sorted(
            by_group.get("interaction", []), key=lambda r: (r["params"]["num_workers"], r["params"]["token_budget"])
        ),
        "baseline": baseline,
        "optimal": optimal,
        "optimal_speedup": speedup(optimal, baseline) if optimal else None,
        "validation": (optimal or {}).get("validation"),  # its speedup: over the in-job baseline when measured
    }


def build_context(
    results: list[dict],
    input_info: dict,
    config: dict,
    best: dict | None,
    out_dir: Path,
    workflow_dir: Path | None = None,
    scaling: dict | None = None,
    peers: dict | None = None,
    accuracy: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """Everything the three renderings show; `best` and `scaling` are the workflow's best.json and scaling.json,
    `accuracy` the precision sweep's `bench accuracy` rows (`report.accuracy.load_accuracy`)."""
    thresholds = {**DEFAULT_THRESHOLDS, **(config.get("targets") or {})}
    results = [at_target(r, int(thresholds["target_sequences"])) for r in results]
    warm = config.get("warmup") or {}
    warmup_seconds = float(warm.get("seconds", WARMUP_SECONDS))
    warmup_batches = int(warm.get("batches", WARMUP_BATCHES))
    scaling = scaling or {"note": "scaling.json was not given"}
    by_group, production = _by_group(results, scaling)
    ckpt = {r["label"]: r for r in by_group.get("checkpoint", [])}
    ckpt_on, ckpt_off = ckpt.get("checkpoint_on"), ckpt.get("checkpoint_off")
    baseline = (by_group.get("baseline") or [None])[0]
    optimal = (by_group.get("optimal") or [None])[0]  # the validation of the recommended settings
    precision = precision_rows(by_group, baseline, accuracy or {})
    verdicts = (
        production_verdicts(production, thresholds, scaling)
        + [checkpoint_verdict(ckpt_on, ckpt_off, thresholds)]
        + accuracy_verdicts(precision)
    )
    return {
        **_provenance(results, production, config, workflow_dir),
        "input": input_info,
        "thresholds": thresholds,
        "warmup_seconds": warmup_seconds,
        "warmup_batches": warmup_batches,
        "target_tokens_per_sequence": TARGET_TOKENS_PER_SEQUENCE,
        "verdicts": verdict_rows(verdicts),
        "verdict_counts": {s: sum(v.status == s for v in verdicts) for s in ("PASS", "FAIL", "N/A")},
        "production": production,
        "scaling": scaling.get("rows") or [],
        "scaling_file": scaling,
        "figures": _figures(production, by_group, scaling, warmup_seconds, warmup_batches),
        **_sweeps(by_group, baseline, best, optimal),
        "precision_rows": precision,
        **_best_section(best, config, (optimal or {}).get("validation")),
        "subset": by_group.get("subset", []),
        "checkpoint_runs": [r for r in (ckpt_off, ckpt_on) if r],
        "telemetry_links": [
            {"label": r["label"], "rank": k["rank"], "href": _rel(k["telemetry"], out_dir)}
            for r in results
            for k in r.get("ranks", [])
        ],
        "site": config.get("site"),
        "flagged": [r for r in results if invalid_run(r) or (r["status"] == "ok" and r.get("resumed"))],
        "invalid_labels": [r["label"] for r in results if invalid_run(r)],
        "peers": peer_comparison(peers, production),
        "comparison": None,
    }


def _fmt(value, spec=",.1f", na="N/A"):
    if value is None or isinstance(value, Undefined):
        return na
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("virnucpro.report", "templates"),
        autoescape=lambda name: not (name or "").endswith(".txt.j2"),
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = _fmt
    return env


def render_html(context: dict) -> str:
    return _environment().get_template("report.html.j2").render(**context)


def render_text(context: dict) -> str:
    """report.txt: the same context (and the same verdict rows) as the HTML, as plain text."""
    return _environment().get_template("report.txt.j2").render(**context)


def _result_fields(r: dict, keys: tuple[str, ...]) -> dict:
    return {k: r.get(k) for k in keys}


#: What summary.json keeps of the context as it is, and of each production run and sweep point.
SUMMARY_KEYS = (
    "generated",
    "git_commit",
    "input",
    "model",
    "weights",
    "precision",
    "hardware",
    "versions",
    "slurm_job_ids",
    "thresholds",
    "verdicts",
    "verdict_counts",
    "scaling",
    "peers",
    "comparison",
)
PRODUCTION_KEYS = (
    "label",
    "params",
    "status",
    "reason",
    "steady",
    "projection",
    "phases",
    "job_wall_seconds",
    "repeats",
    "ci95",
    "ci95_tokens_per_sec",
)
SWEEP_POINT_KEYS = ("label", "group", "params", "precision", "status", "reason", "repeats", "ci95", "baseline_settings")
SWEEP_POINT_KEYS += ("speedup", "speedup_ci95", "significant", "not_compared_because", "speedup_source")
VALIDATION_KEYS = ("comparison", "speedup", "speedup_ci95", "confirmed", "contradicted", "drift_between_jobs", "note")
FLAGGED_KEYS = ("label", "valid", "invalid_reasons", "resumed", "resumed_sequences")


def _summary_best(best: dict | None, validation: dict | None, rec: dict | None) -> dict | None:
    if not best:
        return None
    return {
        **_result_fields(best, ("label", "params", "steady", "speedup_over_baseline", "note")),
        "significant": best.get("significant"),
        "speedup_ci95": best.get("speedup_ci95"),
        "noise_check": best.get("noise_check"),
        "validation": _result_fields(validation, VALIDATION_KEYS) if validation else None,
        "recommendation": rec,
    }


def summary_json(context: dict) -> dict:
    """results/summary.json: the context's machine-readable part (the same verdicts as the HTML and text)."""
    out = {k: context[k] for k in SUMMARY_KEYS}
    out["scaling_model"] = {k: context["scaling_file"].get(k) for k in ("at_target", "model", "note")}
    out["production"] = [_result_fields(r, PRODUCTION_KEYS) for r in context["production"]]
    best = context["best"]
    out["best"] = _summary_best(best, context["validation"], context["recommendation"])
    out["best_speedup_over_baseline"] = best.get("speedup_over_baseline") if best else None
    out["flagged_runs"] = [_result_fields(r, FLAGGED_KEYS) for r in context["flagged"]]
    out["precision"] = context["precision_rows"]
    out["sweep_points"] = [
        {
            **_result_fields(r, SWEEP_POINT_KEYS),
            "sequences_per_sec": (r.get("steady") or {}).get("avg_sequences_per_sec"),
        }
        for r in context["sweep_rows"]
    ]
    return out


def write_report(
    results: list[dict],
    input_info: dict,
    config: dict,
    best: dict | None,
    html_path: Path,
    text_path: Path | None = None,
    json_path: Path | None = None,
    merged_telemetry: list[Path] = (),
    workflow_dir: Path | None = None,
    scaling: dict | None = None,
    peers: dict | None = None,
    previous: tuple[str, dict] | None = None,
    accuracy: dict[str, dict] | None = None,
) -> dict:
    """Render report.html, report.txt and summary.json from one context; `previous` = (path, summary.json)."""
    check_output_paths(html_path, text_path, json_path)
    context = build_context(results, input_info, config, best, html_path.parent, workflow_dir, scaling, peers, accuracy)
    context["merged_links"] = [_rel(str(p), html_path.parent) for p in merged_telemetry]
    if previous is not None:
        cv = float((config.get("measure") or {}).get("between_job_cv", 0.0))
        context["comparison"] = compare(summary_json(context), previous[1], previous[0], cv)
    outputs = [(html_path, render_html(context))]  # all rendered first: a failure writes nothing
    if text_path is not None:
        outputs.append((text_path, render_text(context)))
    if json_path is not None:
        outputs.append((json_path, json.dumps(summary_json(context), indent=2, default=str)))
    for path, text in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    return context
