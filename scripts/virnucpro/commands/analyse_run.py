"""`virnucpro analyse-run`: a run-point record and its raw telemetry -> the job's result (a local job)."""

from __future__ import annotations

from pathlib import Path

from virnucpro.commands import help_style
from virnucpro.errors import EXIT_OK, UserError
from virnucpro import defaults


def register(sub) -> None:
    p = sub.add_parser(
        "analyse-run",
        help="a run-point record + its raw telemetry -> the job's result (local)",
        description="Steady state (warm-up excluded), projections and validity of one measured "
        "run, from its raw telemetry: analysis settings never rerun a GPU job.",
        **help_style(
            "virnucpro analyse-run results/sweeps/baseline/baseline.run.json "
            "-o results/sweeps/baseline/baseline.json --warmup-seconds 2"
        ),
    )
    p.add_argument("run", type=Path, help="the raw record written by run-point --result")
    p.add_argument("-o", "--output", type=Path, required=True, help="result JSON to write")
    p.add_argument(
        "--warmup-seconds", type=float, default=defaults.WARMUP_SECONDS, help="warm-up excluded from steady state"
    )
    p.add_argument(
        "--warmup-batches",
        type=int,
        default=defaults.WARMUP_BATCHES,
        help="warm-up excluded from steady state; the larger of the two applies",
    )
    p.add_argument(
        "--min-steady-batches",
        type=int,
        default=defaults.MIN_STEADY_BATCHES,
        help="fewer steady batches on any rank marks the run invalid",
    )
    p.add_argument(
        "--target-sequences", type=int, default=defaults.TARGET_SEQUENCES, help="sequence count projections are for"
    )
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.report.results import analyse_run, load_results

    if args.min_steady_batches < 1 or args.target_sequences < 1:
        raise UserError("--min-steady-batches and --target-sequences must be at least 1")
    if args.warmup_seconds < 0 or args.warmup_batches < 0:
        raise UserError("--warmup-seconds and --warmup-batches must be >= 0")
    result = analyse_run(
        load_results([args.run])[0],
        args.warmup_seconds,
        args.warmup_batches,
        args.min_steady_batches,
        args.target_sequences,
    )
    write_json_atomic(args.output, result)
    print(
        f"{result['label']}: {result['status']}, "
        + ("valid" if result["valid"] else "INVALID: " + "; ".join(result["invalid_reasons"]))
    )
    return EXIT_OK
