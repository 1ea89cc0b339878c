"""`virnucpro measure`: a workflow job: time-boxed, repeated throughput of one engine configuration."""

from __future__ import annotations

from pathlib import Path

from virnucpro.commands import embed, help_style


def register(sub) -> None:
    p = sub.add_parser(
        "measure",
        help="a workflow job: time-boxed, repeated throughput of one engine configuration "
        "(warm-up until stable, then --repeats windows of --seconds) -> result JSON",
        **help_style(
            "virnucpro measure results/data/sweep.fasta --random-weights --seconds 60 "
            "--repeats 3 --label baseline:baseline --group baseline --result b.json"
        ),
    )
    embed.add_arguments(p, outdir=False)
    p.add_argument("--result", required=True, type=Path, help="result JSON to write")
    p.add_argument("--label", required=True)
    p.add_argument("--group", required=True, help="baseline, dataloader, packing, interaction, optimal, ...")
    p.add_argument("--seconds", type=float, default=3.0, help="length of one measured window (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="measured windows (default %(default)s)")
    p.add_argument(
        "--warmup-window",
        type=float,
        default=1.0,
        help="warm-up window seconds; stable when two in a row agree (default %(default)s)",
    )
    p.add_argument("--warmup-max", type=float, default=10.0, help="warm-up bound in seconds (default %(default)s)")
    p.add_argument(
        "--stable-tolerance",
        type=float,
        default=0.02,
        help="relative change between two warm-up windows that counts as stable (default %(default)s)",
    )
    p.add_argument(
        "--params-from", type=Path, help="a best-config JSON whose engine settings and precision override these"
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="with --params-from: the baseline's result JSON; adds `validation` (does this measurement "
        "agree with the best-config claim?); when its settings differ, they are measured in this job too, "
        "windows alternating (`baseline_in_job`)",
    )
    p.add_argument("--strict", action="store_true", help="a failure is the job's failure (no result written)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.pipeline.jobs import apply_params_from, measure_point
    from virnucpro.pipeline.measure import Protocol

    protocol = Protocol(args.seconds, args.repeats, args.warmup_window, args.warmup_max, args.stable_tolerance)
    protocol.validate()
    cfg = apply_params_from(embed.embed_config(args), args.params_from)
    return measure_point(
        cfg, protocol, args.label, args.group, args.result, args.strict, args.baseline, args.params_from
    )
