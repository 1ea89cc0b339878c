"""`results/production/scaling.json`: measured scaling, each run's projection at the target, and the GPU model.

Written once by `virnucpro scaling` and read by the report (which never recomputes it): the measured loop
speedups over the 1-rank run, loop and whole-job speedups at the target size, a predicted curve for 1-8 GPUs
per job and 1-8 independent jobs (nodes) labelled as a model, and how many GPUs finish the target in time.
"""

from __future__ import annotations

from typing import Any

from virnucpro.report.projection import MODEL_GPUS_PER_JOB, MODEL_JOBS, jobs_needed, model_job_hours, projection
from virnucpro.report.results import scaling_table
from virnucpro.defaults import TARGET_TOKENS_PER_SEQUENCE

MODEL_ASSUMPTIONS = (
    "model, not a measurement: the loop is ideally data-parallel at the measured per-GPU steady "
    "rate; read_input and finalize are serial within a job and scale with its sequences; "
    "load_weights, compile and warmup are paid once per job (ranks load in parallel); "
    "several jobs run independently on shards of the input (no merge)"
)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _tokens_per_sequence(production: list[dict]) -> float:
    return next(
        (
            (r.get("summary") or {}).get("projection_tokens_per_sequence")
            for r in production
            if (r.get("summary") or {}).get("projection_tokens_per_sequence")
        ),
        TARGET_TOKENS_PER_SEQUENCE,
    )


def _against_measured(runs: list[tuple[dict, dict]], basis: dict, c: dict, rate: float, target: int) -> dict:
    """The model's one-job hours against each other measured run's own projection: where a measured run of k
    GPUs is more than 10 % slower than the model says, the ideal data-parallel loop overstates k-GPU jobs here."""
    checks = []
    for r, p in runs:
        k = r["params"]["world_size"]
        if r is basis or not p.get("job_hours"):
            continue
        modelled = model_job_hours(c, rate, target, k, 1)
        checks.append(
            {"world_size": k, "measured_job_hours": p["job_hours"], "model_job_hours": modelled}
            | {"ratio": p["job_hours"] / modelled, "label": r["label"]}
        )
    worst = max(checks, key=lambda ch: ch["ratio"], default=None)
    caveat = None
    if worst and worst["ratio"] > 1.1:
        caveat = (
            f"the measured {worst['world_size']}-GPU run ({worst['label']}) projects "
            f"{worst['measured_job_hours']:.3g} h where the model predicts {worst['model_job_hours']:.3g} h "
            f"({worst['ratio']:.2f}x): the model's ideal scaling overstates multi-GPU jobs here"
        )
    return {"measured_checks": checks, "caveat": caveat}


def gpus_model(runs: list[tuple[dict, dict]], target: int, max_hours: float) -> dict[str, Any]:
    """The predicted curve from the narrowest run with measured phases; `runs` is [(result, projection)]."""
    basis = next(((r, p) for r, p in runs if p["components"]), None)
    if basis is None:
        return {"basis": None, "na_reason": "no finished production run with measured phases"}
    result, proj = basis
    k0 = result["params"]["world_size"]
    rate = result["steady"]["avg_sequences_per_sec"] / k0
    c = proj["components"]
    grid = [
        {"gpus_per_job": k, "jobs": m, "gpus": k * m, "job_hours": model_job_hours(c, rate, target, k, m)}
        for k in MODEL_GPUS_PER_JOB
        for m in MODEL_JOBS
    ]
    needed = []
    for k in MODEL_GPUS_PER_JOB:
        m = jobs_needed(c, rate, target, k, max_hours)
        if m is not None:
            needed.append(
                {"gpus_per_job": k, "jobs": m, "gpus": k * m, "job_hours": model_job_hours(c, rate, target, k, m)}
            )
    one_job = next((n for n in needed if n["jobs"] == 1), None)
    best = min(needed, key=lambda n: (n["gpus"], n["jobs"])) if needed else None
    return {
        "basis": result["label"],
        "per_gpu_sequences_per_sec": rate,
        "assumptions": MODEL_ASSUMPTIONS,
        **_against_measured(runs, result, c, rate, target),
        "grid": grid,
        "gpus_needed": {
            "max_hours": max_hours,
            "fewest_gpus": best,
            "as_one_job": one_job,
            "per_gpus_per_job": needed,
            "na_reason": None if needed else f"the fixed costs alone exceed {max_hours:g} h",
        },
        "na_reason": None,
    }


def scaling_report(production: list[dict], target: int, max_hours: float, min_efficiency: float) -> dict:
    """Everything scaling.json holds (see the module docstring)."""
    tps = _tokens_per_sequence(production)
    runs = sorted(
        ((r, projection(r, target, tps)) for r in production if r.get("group", "production") == "production"),
        key=lambda rp: rp[0]["params"]["world_size"],
    )
    projections = [{"label": r["label"], "world_size": r["params"]["world_size"], "projection": p} for r, p in runs]
    ok = {r["params"]["world_size"]: p for r, p in runs if r["status"] == "ok"}
    base = ok.get(1)
    at_target = (
        [
            {
                "world_size": k,
                "loop_speedup": _ratio(base["loop_hours"], p["loop_hours"]),
                "job_speedup": _ratio(base["job_hours"], p["job_hours"]),
                "loop_hours": p["loop_hours"],
                "job_hours": p["job_hours"],
            }
            for k, p in sorted(ok.items())
        ]
        if base
        else []
    )
    rows = scaling_table(production, min_efficiency)
    return {
        "target_sequences": target,
        "max_hours": max_hours,
        "rows": rows,
        "projections": projections,
        "at_target": at_target,
        "model": gpus_model([rp for rp in runs if rp[0]["status"] == "ok"], target, max_hours),
        "note": None if rows else "no finished 1-rank run",
    }
