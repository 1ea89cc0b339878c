"""One JSON per workflow job (a production run or a sweep point), and the choices made from them.

The GPU job writes a raw record (`collect_run`): what it was asked (`params`), how it ended (`status`, `reason`,
`exit_code`), whether it resumed an interrupted attempt, the merged telemetry summary and where its raw
telemetry lies. A cheap local job turns it into the result (`analyse_run`): the steady-state figures of each
rank (warm-up excluded, seed plan 10-02), their sum for the job, projections, and validity with reasons, so
that analysis settings never rerun a GPU job. Everything downstream (best configuration, verdicts, the report)
reads the results only.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Callable

from virnucpro.models.weights import ModelSpec
from virnucpro.report.significance import sweep_decision
from virnucpro.report.stats import describe
from virnucpro.errors import UserError
from virnucpro.utils.jsonfile import read_json
from virnucpro.defaults import TARGET_SEQUENCES, TARGET_TOKENS_PER_SEQUENCE
from virnucpro.utils.telemetry import calculate_scaling_efficiency, steady_state


def rank_steady(telemetry: dict, warmup_seconds: float, warmup_batches: int) -> dict:
    s = telemetry["summary"]
    return steady_state(
        telemetry["per_batch_metrics"],
        warmup_seconds,
        warmup_batches,
        target_sequences=s.get("projection_target_sequences", TARGET_SEQUENCES),
        target_tokens_per_sequence=s.get("projection_tokens_per_sequence", TARGET_TOKENS_PER_SEQUENCE),
    )


def loop_projection(
    target_sequences: int,
    seq_per_sec: float,
    tok_per_sec: float,
    tokens_per_sequence: float = TARGET_TOKENS_PER_SEQUENCE,
) -> dict[str, float]:
    """Hours the loop alone needs for `target_sequences` at a steady rate: by sequences, and by tokens for
    sequences of the production input's length."""
    return {
        "projected_hours": target_sequences / seq_per_sec / 3600,
        "projected_hours_tokens": target_sequences * tokens_per_sequence / tok_per_sec / 3600,
    }


def job_steady(
    ranks: list[dict], target_sequences: int, tokens_per_sequence: float = TARGET_TOKENS_PER_SEQUENCE
) -> dict | None:
    """The job's steady-state rate: ranks run at once, so their rates add up; elapsed is the slowest rank's."""
    steadies = [r["steady"] for r in ranks if r.get("steady") and r["steady"].get("avg_tokens_per_sec")]
    if not steadies:
        return None
    tps = sum(s["avg_tokens_per_sec"] for s in steadies)
    sps = sum(s["avg_sequences_per_sec"] for s in steadies)
    p95 = [s["p95_wait_time_ms"] for s in steadies if s.get("p95_wait_time_ms") is not None]
    gpu = [s["avg_gpu_util"] for s in steadies if s.get("avg_gpu_util") is not None]
    pack = [s["avg_packing_efficiency"] for s in steadies if s.get("avg_packing_efficiency") is not None]
    return {
        "avg_tokens_per_sec": tps,
        "avg_sequences_per_sec": sps,
        **loop_projection(target_sequences, sps, tps, tokens_per_sequence),
        "p95_wait_time_ms": max(p95) if p95 else None,
        "min_gpu_util": min(gpu) if gpu else None,
        "min_packing_efficiency": min(pack) if pack else None,
        "warmup_excluded": all(s.get("warmup_excluded") for s in steadies),
        "excluded_batches": sum(s.get("excluded_batches", 0) for s in steadies),
        "steady_batches": sum(s.get("total_batches", 0) for s in steadies),
    }


def with_flop_utilisation(steady: dict | None, ranks: list[dict]) -> dict | None:
    """Add `pct_of_matmul_ceiling`: the job's model FLOP rate (steady tokens/s x FLOPs per token at its mean
    sequence length) over the sum of the dense matmul rates its ranks measured at start-up, in the run's
    precision. None (with `ceiling_na_reason`) when a rank did not measure one."""
    if steady is None:
        return None
    rates = [r.get("matmul_tflops") for r in ranks]
    spec = next((r["model_spec"] for r in ranks if r.get("model_spec")), None)
    if not rates or None in rates or spec is None:
        return {
            **steady,
            "pct_of_matmul_ceiling": None,
            "ceiling_na_reason": "no matmul rate in the telemetry (run made before it was measured)",
        }
    mean_tokens = steady["avg_tokens_per_sec"] / steady["avg_sequences_per_sec"]
    flops = steady["avg_tokens_per_sec"] * ModelSpec(**spec).flops_per_token(mean_tokens)
    return {**steady, "pct_of_matmul_ceiling": 100 * flops / (sum(rates) * 1e12), "matmul_tflops": sum(rates)}


def _ran_differently(params: dict, status: dict, metas: list[dict]) -> list[str]:
    """Where what ran (status.json's config, each rank's telemetry) differs from the job's `params`."""
    sources = [("status.json", status.get("config") or {})] if status else []
    sources += [(f"rank {m.get('rank')}'s telemetry", m.get("engine") or {}) for m in metas]
    return [
        f"{knob}={value!r} asked but {where} says {ran[knob]!r}"
        for where, ran in sources
        for knob, value in params.items()
        if knob in ran and ran[knob] != value
    ]


def collect_run(
    outdir: Path, label: str, group: str, params: dict, exit_code: int, reason: str | None
) -> dict[str, Any]:
    """The raw record of the GPU job whose `virnucpro embed` output is in `outdir` (no analysis settings: warm-up,
    projections and validity are `analyse_run`'s, in a cheap local job). A run whose telemetry or status says
    it ran other settings than `params` is recorded as failed, with the difference as the reason."""
    status_path = outdir / "status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    ranks, metas = [], []
    for path in sorted((outdir / "telemetry").glob("telemetry_rank*.json")) if exit_code == 0 else []:
        meta = json.loads(path.read_text())["run_metadata"]
        metas.append(meta)
        ranks.append(
            {
                "rank": meta.get("rank"),
                "device": meta.get("device"),
                "precision": meta.get("precision"),  # what ran (auto resolved)
                "telemetry": str(path),
                "startup_seconds": meta.get("startup_seconds"),
                "model_load_seconds": meta.get("model_load_seconds"),
                "warmup_seconds": meta.get("warmup_seconds"),
                "gpu_monitor": meta.get("gpu_monitor"),
                "shard_sequences": meta.get("shard_sequences"),
                "shard_tokens": meta.get("shard_tokens"),
                "matmul_tflops": meta.get("matmul_tflops"),
                "model_spec": meta.get("model_spec"),
                "phases": meta.get("phases"),
            }
        )
    ok = exit_code == 0 and status.get("status") == "ok"
    mismatch = _ran_differently(params, status, metas) if ok else []
    if mismatch:
        ok, reason = False, "not a measurement of these params: " + "; ".join(mismatch)
    resumed = max((m.get("resumed_sequences") or 0 for m in metas), default=0)
    return {
        "label": label,
        "group": group,
        "params": params,
        "status": "ok" if ok else "failed",
        "reason": None if ok else (reason or status.get("reason") or f"exit code {exit_code}"),
        "exit_code": exit_code,
        "summary": status.get("summary") if ok else None,
        "ranks": ranks if ok else [],
        "resumed_sequences": resumed,
        "resumed": resumed > 0,
        "peak_memory_gb": status.get("peak_memory_gb"),
        # the process's phases (status.json summary, issue 12): what whole-job projections are built on
        "phases": (status.get("summary") or {}).get("phases") if ok else None,
        "job_wall_seconds": (status.get("summary") or {}).get("job_wall_seconds") if ok else None,
        "outdir": str(outdir),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "hostname": platform.node(),
        "hardware": next((m.get("hardware") for m in metas if m.get("hardware")), None),
        "weights": next((m.get("weights") for m in metas if m.get("weights")), None),
    }


def _measured_steady(m: dict, params: dict, target_sequences: int) -> tuple[dict, dict, dict, dict]:
    """A measurement's `steady` (the median window) and `summary` (all windows), and its per-window statistics."""
    windows = m["windows"]
    seq = describe([w["sequences_per_sec"] for w in windows])
    tok = describe([w["tokens_per_sec"] for w in windows])
    tokens, seqs = sum(w["tokens"] for w in windows), sum(w["sequences"] for w in windows)
    batches, seconds = sum(w["batches"] for w in windows), sum(w["seconds"] for w in windows)
    utils = [w["gpu_util"] for w in windows if w.get("gpu_util") is not None]
    steady = {
        "avg_tokens_per_sec": tok["median"],
        "avg_sequences_per_sec": seq["median"],
        **loop_projection(target_sequences, seq["median"], tok["median"]),
        "p95_wait_time_ms": max(w["p95_wait_ms"] for w in windows),
        "avg_gpu_util": sum(utils) / len(utils) if utils else None,
        "min_gpu_util": min(utils, default=None),
        "min_packing_efficiency": m["workload"]["packing_efficiency"],  # the plan's: windows see parts of it
        "window_packing_efficiency": tokens / (batches * params["token_budget"]),
        "warmup_excluded": True,
        "warmup_stabilised": m["warmup"]["stabilised"],
        "excluded_batches": None,
        "steady_batches": batches,
    }
    summary = {
        "total_sequences": seqs,
        "total_tokens": tokens,
        "total_batches": batches,
        "elapsed_seconds": seconds,
        "avg_tokens_per_sec": tokens / seconds,
        "avg_sequences_per_sec": seqs / seconds,
        "peak_memory_gb": m.get("peak_memory_gb"),
        "projected_hours": steady["projected_hours"],
    }
    return steady, summary, seq, tok


def measured_result(
    label: str,
    group: str,
    params: dict,
    measurement: dict | None,
    exit_code: int,
    reason: str | None,
    target_sequences: int,
) -> dict[str, Any]:
    """The result of a `virnucpro measure` job: an embedding job's keys (`steady` = the median measured window)
    plus `repeats` (per-window sequences/s), `median`, `ci95`, `tokens_per_sec` and the whole `measurement`."""
    ok = exit_code == 0 and measurement is not None
    m = measurement or {}
    base = {
        "label": label,
        "group": group,
        "params": params,
        "kind": "measurement",
        "status": "ok" if ok else "failed",
        "reason": None if ok else (reason or f"exit code {exit_code}"),
        "exit_code": exit_code,
        "ranks": [],
        "outdir": None,
        "peak_memory_gb": m.get("peak_memory_gb"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "hostname": platform.node(),
        "hardware": m.get("hardware"),
        "weights": m.get("weights"),
    }
    if not ok:
        empty = {"summary": None, "steady": None, "repeats": [], "median": None, "ci95": None, "tokens_per_sec": None}
        return {**base, **empty, "measurement": measurement}
    steady, summary, seq, tok = _measured_steady(m, params, target_sequences)
    return {
        **base,
        "summary": summary,
        "steady": steady,
        "repeats": seq["repeats"],
        "median": seq["median"],
        "ci95": seq["ci95"],
        "tokens_per_sec": tok,
        "measurement": measurement,
    }


def at_target(result: dict, target_sequences: int) -> dict:
    """`result` with a measurement's projections made for `target_sequences`. A measure job (a GPU job) is not
    told the target, so that changing it reruns no GPU job; its rates are projected here, where the report runs.
    Embedding runs get theirs from `analyse-run`, a local job that is given the target."""
    if result.get("kind") != "measurement" or result["status"] != "ok":
        return result
    steady = dict(result["steady"])
    steady.update(loop_projection(target_sequences, steady["avg_sequences_per_sec"], steady["avg_tokens_per_sec"]))
    steady["projection_target_sequences"] = target_sequences
    summary = {**result["summary"], "projected_hours": steady["projected_hours"]}
    return {**result, "steady": steady, "summary": summary}


def run_validity(ranks: list[dict], min_steady_batches: int) -> list[str]:
    """Why a finished run's steady-state figures are not a sound measurement (empty: valid)."""
    reasons = []
    for rank in ranks:
        steady = rank.get("steady") or {}
        kept = steady.get("total_batches", 0)
        if not steady.get("warmup_excluded"):
            reasons.append(f"rank {rank['rank']}: the run was shorter than its warm-up window, nothing was excluded")
        elif kept < min_steady_batches:
            reasons.append(
                f"rank {rank['rank']}: the warm-up rule left {kept} steady batches, fewer than "
                f"{min_steady_batches} (warmup.min_steady_batches)"
            )
    return reasons


def analyse_run(
    run: dict, warmup_seconds: float, warmup_batches: int, min_steady_batches: int, target_sequences: int
) -> dict[str, Any]:
    """The job's result: its raw record plus, from each rank's raw telemetry, the steady state (warm-up
    excluded), the job's summed rate and projections for `target_sequences`, and whether the run is valid."""
    result = {
        **run,
        "ranks": [dict(r) for r in run.get("ranks", [])],
        "steady": None,
        "valid": False,
        "invalid_reasons": [] if run["status"] == "ok" else [f"the run failed: {run['reason']}"],
    }
    if run["status"] != "ok":
        return result
    for rank in result["ranks"]:
        tel = json.loads(Path(rank["telemetry"]).read_text())
        tel["summary"] = {**tel["summary"], "projection_target_sequences": target_sequences}
        rank["summary"] = tel["summary"]
        rank["steady"] = rank_steady(tel, warmup_seconds, warmup_batches)
        rank["series"] = [
            {"t": b["timestamp"], "tokens_per_sec": b.get("tokens_per_sec"), "batch_seconds": b.get("batch_seconds")}
            for b in tel["per_batch_metrics"]
        ]
    result["steady"] = with_flop_utilisation(job_steady(result["ranks"], target_sequences), result["ranks"])
    result["invalid_reasons"] = run_validity(result["ranks"], min_steady_batches)
    result["valid"] = not result["invalid_reasons"]
    result["analysis"] = {
        "warmup_seconds": warmup_seconds,
        "warmup_batches": warmup_batches,
        "min_steady_batches": min_steady_batches,
        "target_sequences": target_sequences,
    }
    return result


def resumed_na_reason(*results: dict | None) -> str | None:
    """Why a verdict comparing whole-run times must not use these results: a resumed attempt timed only the
    sequences its interrupted predecessor left, so its loop time is not the whole run's."""
    names = [
        f"{r['label']} ({r.get('resumed_sequences', 0):,} sequences came from an interrupted attempt)"
        for r in results
        if r and r.get("resumed")
    ]
    return f"resumed run: {', '.join(names)}; rerun it without interruption to compare times" if names else None


#: What every result has (`collect_result`, `measured_result`); a file without them is not one.
RESULT_KEYS = ("label", "group", "status", "params")


def invalid_run(result: dict | None) -> bool:
    """A finished run that `analyse_run` marked invalid: what it measured is shown, but nothing is judged on it."""
    return bool(result) and result["status"] == "ok" and not result.get("valid", True)


def load_results(paths: list[str | Path], groups: Callable[[str], bool] | None = None, wanted: str = "") -> list[dict]:
    """The results at `paths`; with `groups`, each result's group must pass it (else: "a <group> result, not
    `wanted`", exit 2: a sweep point given to `scaling` would be measured as a production run)."""
    results = [read_json(p, "run-point/measure result", RESULT_KEYS) for p in paths]
    for path, result in zip(paths, results):
        if groups is not None and not groups(result["group"]):
            raise UserError(f"{path}: a {result['group']!r} result, not {wanted}")
    return results


def best_point(
    results: list[dict], min_packing: float, min_gain: float = 0.02, between_job_cv: float = 0.0
) -> dict | None:
    """The result whose settings to recommend: the significant winner of `sweep_decision`, else the baseline
    (no point beats it beyond noise); None without a baseline."""
    decision = sweep_decision(results, min_packing, min_gain, between_job_cv=between_job_cv)
    return next((r for r in results if r["label"] == decision["label"]), None) if decision["label"] else None


def speedup(result: dict, baseline: dict | None) -> float | None:
    """Ratio of the steady sequences/s (a measurement's median window) of `result` over `baseline`'s."""
    if not baseline or baseline["status"] != "ok" or result["status"] != "ok":
        return None
    return result["steady"]["avg_sequences_per_sec"] / baseline["steady"]["avg_sequences_per_sec"]


def checkpoint_overhead(on: dict | None, off: dict | None) -> float | None:
    """Percent more time the run with frequent checkpoints took over the same run without (loop time)."""
    if not on or not off or on["status"] != "ok" or off["status"] != "ok":
        return None
    t_on, t_off = on["summary"]["elapsed_seconds"], off["summary"]["elapsed_seconds"]
    return (t_on - t_off) / t_off * 100 if t_off > 0 else None


def scaling_table(production: list[dict], min_efficiency: float) -> list[dict]:
    """Speedup of each finished production run over the finished 1-rank run (loop time of the slowest rank)."""
    ok = {r["params"]["world_size"]: r for r in production if r["status"] == "ok"}
    if 1 not in ok:
        return []
    base = ok[1]["summary"]["elapsed_seconds"]
    rows = []
    for n in sorted(ok):
        sc = calculate_scaling_efficiency(base, ok[n]["summary"]["elapsed_seconds"], n, min_efficiency)
        rows.append(
            {
                "world_size": n,
                "label": ok[n]["label"],
                "elapsed": ok[n]["summary"]["elapsed_seconds"],
                **sc,
                "not_comparable": resumed_na_reason(ok[1], ok[n]),
            }
        )
    return rows
