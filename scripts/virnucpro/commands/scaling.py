"""`virnucpro scaling`: scaling.json: speedups, projections at the target size and the GPU model."""

from __future__ import annotations

from pathlib import Path

from virnucpro.argtypes import percentage, positive_int
from virnucpro.commands import help_style
from virnucpro.errors import EXIT_OK, UserError
from virnucpro import defaults


def register(sub) -> None:
    p = sub.add_parser(
        "scaling",
        help="scaling.json: speedups, projections at the target size and the GPU model",
        **help_style("virnucpro scaling results/production/ws1.json results/production/ws2.json -o scaling.json"),
    )
    p.add_argument("results", nargs="+", type=Path, help="result JSONs of the production runs")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--min-efficiency", type=percentage, default=95.0)
    p.add_argument("--target-sequences", type=positive_int, default=defaults.TARGET_SEQUENCES)
    p.add_argument("--max-hours", type=float, default=10.0, help="the time 'how many GPUs' answers for")
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.report.results import load_results
    from virnucpro.report.scaling import scaling_report
    from virnucpro.utils.jsonfile import check_output_paths

    if args.target_sequences < 1 or args.max_hours <= 0:
        raise UserError("scaling: --target-sequences and --max-hours must be positive")
    check_output_paths(args.output)
    production = load_results(args.results, lambda group: group == "production", "a production run")
    report = scaling_report(production, args.target_sequences, args.max_hours, args.min_efficiency)
    write_json_atomic(args.output, report)
    for r in report["rows"]:
        print(f"{r['world_size']} rank(s): {r['speedup']:.2f}x, {r['efficiency']:.1f} % efficiency")
    need = (report["model"].get("gpus_needed") or {}).get("fewest_gpus")
    if need:
        print(
            f"model: {need['gpus']} GPU(s) ({need['jobs']} job(s) x {need['gpus_per_job']}) finish "
            f"{args.target_sequences:,} sequences in {need['job_hours']:.2f} h"
        )
    return EXIT_OK
