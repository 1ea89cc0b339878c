"""How an embedding job ends: `status.json` for every ending and its exit code (`embed`), and the workflow's
measurement jobs built on it (`run-point`: a raw record; `measure`: a throughput result), whose failures are
recorded as the point's result unless the job is strict.
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import asdict, replace
from pathlib import Path

from virnucpro.errors import EXIT_FAILURE, EXIT_OK, EXIT_OOM, EXIT_PREEMPTED, UserError, out_of_memory
from virnucpro.pipeline.output import write_json_atomic
from virnucpro.settings import KNOBS
from virnucpro.utils.jsonfile import read_object


def config_dict(cfg) -> dict:
    """`cfg` as JSON-ready values (paths as strings): what status.json records as the run's config."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}


def _failed(cfg, reason: str, **extra) -> dict:
    return {"status": "failed", "reason": reason, **extra, "config": config_dict(cfg)}


def execute_embed(cfg) -> int:
    """Run an embedding job; write `status.json` for every ending; return the exit code (UserError raised)."""
    from virnucpro.data.loader import WorkerDied
    from virnucpro.pipeline import runner
    from virnucpro.pipeline.launcher import RankFailed
    from virnucpro.pipeline.preemption import Preempted, StopFlag

    outdir = cfg.outdir
    status_path = outdir / "status.json"
    try:
        with StopFlag() as stop:  # from the start: a SIGTERM during loading also ends with exit 75
            summary = runner.run_embed(cfg, stop=stop)
    except UserError:
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: chunks already renamed into place stay valid
        if outdir.is_dir():
            write_json_atomic(status_path, _failed(cfg, "interrupted", resumable=True))
        raise
    except Preempted as exc:
        if outdir.is_dir():
            write_json_atomic(status_path, _failed(cfg, "preempted", resumable=True, detail=str(exc)))
        print(f"virnucpro: {exc}; rerun the same command to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    except WorkerDied as exc:  # not out of memory for sure (a SIGKILL may be anyone's): the failure code
        reason = f"DataLoader worker {exc.how}"
        write_json_atomic(status_path, _failed(cfg, reason, detail=str(exc), resumable=True))
        print(f"virnucpro: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except RankFailed as exc:
        write_json_atomic(status_path, _failed(cfg, str(exc).splitlines()[0]))
        print(f"virnucpro: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:
        return _unexpected_ending(cfg, exc)
    if summary.get("already_complete"):
        print(f"{outdir / 'embeddings.h5'} is already complete for this input and model: nothing to do")
        _record_earlier_completion(status_path, cfg, summary)
        return EXIT_OK
    write_json_atomic(status_path, {"status": "ok", "reason": None, "config": config_dict(cfg), "summary": summary})
    n, rate = summary["total_sequences"], summary["avg_tokens_per_sec"]
    print(
        f"embedded {n:,} sequence{'' if n == 1 else 's'} in {summary['elapsed_seconds']:.2f} s "
        f"({'N/A' if rate is None else f'{rate:,.0f}'} tokens/s) -> {outdir / 'embeddings.h5'}"
    )
    return EXIT_OK


def _unexpected_ending(cfg, exc: Exception) -> int:
    """Out of memory: status reason OOM, exit 3; anything else is recorded and re-raised (a bug)."""
    status_path = cfg.outdir / "status.json"
    oom = out_of_memory(exc)
    if oom is not None:
        cfg.outdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            status_path, _failed(cfg, "OOM", peak_memory_gb=oom[1], error=str(exc).splitlines()[0] if str(exc) else "")
        )
        print(f"virnucpro: out of memory ({exc.__class__.__name__}); see {status_path}", file=sys.stderr)
        return EXIT_OOM
    if cfg.outdir.is_dir():
        write_json_atomic(status_path, _failed(cfg, f"{exc.__class__.__name__}: {exc}"))
    raise exc


def _record_earlier_completion(status_path: Path, cfg, summary: dict) -> None:
    """A run killed after its final rename but before its status write left a complete result and a stale
    status; make the status say what is true (ok), from the rank telemetry that run wrote."""
    try:
        if json.loads(status_path.read_text()).get("status") == "ok":
            return
    except (OSError, ValueError):
        pass
    write_json_atomic(
        status_path,
        {
            "status": "ok",
            "reason": None,
            "config": config_dict(cfg),
            "summary": summary,
            "note": "the result was completed by an earlier run; status written on rerun",
        },
    )


def apply_params(cfg, params: dict):
    """Override `cfg`'s sweep knobs with those in `params` (world size excepted); returns `cfg`."""
    for knob in KNOBS:
        if knob in params and knob != "world_size":
            setattr(cfg, knob, params[knob])
    return cfg


def apply_params_from(cfg, path: Path | None):
    """Override `cfg`'s sweep knobs with the `params` of a best-config JSON (world size excepted): precision too,
    which best-config recommends only when it passes the accuracy gate (`report.accuracy`)."""
    if path is None:
        return cfg
    return apply_params(cfg, read_object(path, "--params-from").get("params") or {})


def in_job_baseline(cfg, baseline: dict | None):
    """The baseline's settings as a config to measure beside `cfg` in the validation job, or None when they are
    `cfg`'s own (no winner: one configuration is measured, as before)."""
    params = (baseline or {}).get("params") or {}
    if not any(knob in params and params[knob] != getattr(cfg, knob) for knob in KNOBS if knob != "world_size"):
        return None
    return apply_params(replace(cfg), params)


def _failure(exc: Exception) -> tuple[int, str]:
    """(exit code, reason) of a failure recorded as a point's result; the traceback of a bug stays in the log."""
    if isinstance(exc, UserError):
        print(f"virnucpro: error: {exc}", file=sys.stderr)
        return exc.exit_code, str(exc)
    traceback.print_exc()
    return EXIT_FAILURE, f"{exc.__class__.__name__}: {exc}"


def run_point(cfg, label: str, group: str, result_path: Path, strict: bool, discard_embeddings: bool) -> int:
    """`run-point`: embed from a clean (or resumable) OUTDIR, then write the raw record (`collect_run`)."""
    from virnucpro.pipeline.measurement import prepare_outdir
    from virnucpro.report.results import collect_run

    if cfg.world_size is None:  # the default, made explicit: the record names the ranks that ran (scaling needs it)
        cfg = replace(cfg, world_size=_default_world_size(cfg))
    cleared = prepare_outdir(cfg)
    if cleared:
        print(f"{label}: cleared {cfg.outdir}: {cleared}", file=sys.stderr)
    reason = None
    try:
        code = execute_embed(cfg)
    except Exception as exc:
        if strict:
            raise
        code, reason = _failure(exc)
    if code == EXIT_PREEMPTED or (code != EXIT_OK and strict):
        return code  # no result: the scheduler retries (or the workflow stops) and a rerun resumes
    result = collect_run(cfg.outdir, label, group, {k: getattr(cfg, k) for k in KNOBS}, code, reason)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result_path, result)
    if discard_embeddings:
        (cfg.outdir / "embeddings.h5").unlink(missing_ok=True)
    print(
        f"{label}: {result['status']}"
        + (f" ({result['reason']})" if result["reason"] else "")
        + (f", resumed {result['resumed_sequences']:,} sequences" if result["resumed"] else "")
    )
    if strict and result["status"] != "ok":
        return EXIT_FAILURE
    return EXIT_OK


def _default_world_size(cfg) -> int | None:
    """The number of ranks `--world-size`'s default gives here; None where the device is not usable (the run
    failed on it, and its record says why)."""
    try:
        return cfg.resolved_world_size(cfg.resolved_device())
    except UserError:
        return None


def _measure(cfgs, protocol, strict: bool):
    """(measurements, exit code, reason): failures are recorded unless `strict` (out of memory always is)."""
    from virnucpro.pipeline.measure import measure_configs
    from virnucpro.pipeline.preemption import StopFlag

    try:
        with StopFlag() as stop:
            return measure_configs(cfgs, protocol, stop), EXIT_OK, None
    except Exception as exc:
        if out_of_memory(exc) is not None:
            print(f"virnucpro: out of memory ({exc.__class__.__name__})", file=sys.stderr)
            return None, EXIT_OOM, "OOM"
        if strict:
            raise
        return (None, *_failure(exc))


def _summary_line(label: str, result: dict, measurement: dict, protocol) -> str:
    lo, hi = result["ci95"] or (float("nan"),) * 2
    return (
        f"{label}: {result['median']:,.1f} sequences/s median of {len(result['repeats'])} windows of "
        f"{protocol.seconds:g} s (95 % interval {lo:,.1f}-{hi:,.1f}); warm-up "
        f"{'stable' if measurement['warmup']['stabilised'] else 'NOT stable'} after "
        f"{measurement['warmup']['seconds']:.1f} s"
    )


def measure_point(cfg, protocol, label: str, group: str, result_path: Path, strict: bool, baseline, params_from) -> int:
    """`measure`: write the throughput result of one configuration (none when strict and it failed, or when
    preempted: a rerun measures again); with `baseline` and `params_from`, whether it agrees with the
    best-config claim (`validation`). When the recommended settings differ from the baseline's, the baseline's
    are measured in the same job, windows alternating (`baseline_in_job`), and the claim is checked against them."""
    from virnucpro.pipeline.preemption import Preempted
    from virnucpro.report.results import measured_result
    from virnucpro.report.significance import validation_check

    base_result = read_object(baseline, "--baseline") if baseline and params_from else None
    base_cfg = in_job_baseline(cfg, base_result)
    cfgs = [cfg] if base_cfg is None else [cfg, base_cfg]
    try:
        measurements, code, reason = _measure(cfgs, protocol, strict)
    except Preempted as exc:
        print(f"virnucpro: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED  # nothing to keep: a rerun measures again
    if code != EXIT_OK and strict:
        return code
    measurements = measurements or [None] * len(cfgs)
    results = [
        measured_result(
            name, group, {k: getattr(c, k) for k in KNOBS} | {"world_size": 1}, m, code, reason, cfg.target_sequences
        )
        for name, c, m in zip((label, f"{label}:baseline_in_job"), cfgs, measurements)
    ]
    result = results[0]
    if base_cfg is not None:
        result["baseline_in_job"] = results[1]
    if base_result is not None:
        result["validation"] = validation_check(result, base_result, read_object(params_from, "--params-from"))
    write_json_atomic(result_path, result)
    if result["status"] != "ok":
        print(f"{label}: failed ({result['reason']})")
        return EXIT_OK
    for r, m in zip(results, measurements):
        print(_summary_line(r["label"], r, m, protocol))
    return EXIT_OK
