"""`virnucpro best-config`: the sweep point that beats the baseline beyond noise, else the baseline."""

from __future__ import annotations

from pathlib import Path

from virnucpro.argtypes import fraction, nonnegative_float, positive_float
from virnucpro.commands import help_style
from virnucpro.errors import EXIT_OK


def register(sub) -> None:
    p = sub.add_parser(
        "best-config",
        help="the sweep point that beats the baseline beyond noise, else the baseline",
        **help_style("virnucpro best-config results/sweeps/*/*.json -o best.json --tsv sweeps.tsv"),
    )
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--min-packing", type=fraction, default=0.90)
    p.add_argument(
        "--min-gain",
        type=nonnegative_float,
        default=0.02,
        help="a winner's simultaneous 95 %% speedup interval must lie above 1 + this (default %(default)s)",
    )
    p.add_argument(
        "--between-job-cv",
        type=positive_float,
        default=0.01,
        help="relative spread of one configuration's rate between jobs, which the repeats inside a job "
        "cannot show; added to every speedup interval and checked on points that repeat one configuration "
        "(the workflow passes measure.between_job_cv; > 0: no two jobs run at exactly one rate)",
    )
    p.add_argument(
        "--accuracy",
        nargs="+",
        type=Path,
        default=[],
        help="`bench accuracy` results of the precisions swept: a point whose precision fails the gate is never best",
    )
    p.add_argument("--tsv", type=Path, help="also write one row per point here (results/sweeps.tsv)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.report.accuracy import load_accuracy
    from virnucpro.report.results import load_results
    from virnucpro.report.significance import sweep_decision, write_sweeps_tsv

    points = load_results(args.results, lambda group: group != "production", "a sweep point or the baseline")
    decision = sweep_decision(
        points,
        args.min_packing,
        args.min_gain,
        between_job_cv=args.between_job_cv,
        accuracy=load_accuracy(args.accuracy),
    )
    write_json_atomic(args.output, decision)
    if args.tsv:
        write_sweeps_tsv(decision, args.tsv)
    print(f"best configuration: {decision['label']} ({decision['note']})")
    return EXIT_OK
