"""`virnucpro merge-telemetry`: merge per-rank telemetry into one JSON (elapsed = slowest rank)."""

from __future__ import annotations

from pathlib import Path

from virnucpro.commands import help_style
from virnucpro.errors import EXIT_OK


def register(sub) -> None:
    p = sub.add_parser(
        "merge-telemetry",
        help="merge per-rank telemetry into one JSON (elapsed = slowest rank)",
        **help_style("virnucpro merge-telemetry --result results/production/ws2.run.json -o merged.json"),
    )
    p.add_argument("shards", nargs="*", type=Path, help="rank telemetry JSONs (or give --result)")
    p.add_argument("--result", type=Path, help="a run-point result JSON: merge the rank telemetry it lists")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.utils.telemetry_merge import merged_telemetry, shards_to_merge

    write_json_atomic(args.output, merged_telemetry(shards_to_merge(args.shards, args.result)))
    return EXIT_OK
