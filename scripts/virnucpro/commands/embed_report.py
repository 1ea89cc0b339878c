"""`virnucpro embed-report`: the embed target's production report (per-shard times, stragglers, GPU-hours)."""

from __future__ import annotations

from pathlib import Path

from virnucpro.commands import help_style

from virnucpro.argtypes import positive_int

EXAMPLE = (
    "virnucpro embed-report results/embed/manifest.json results/embed/shards/{0,1,2} "
    "--gathered results/embed/embeddings.h5 --html results/embed/report.html --summary results/embed/summary.json"
)


def register(sub) -> None:
    p = sub.add_parser(
        "embed-report",
        help="report on the embed target's shard jobs (HTML + summary.json)",
        **help_style(EXAMPLE),
    )
    p.add_argument("manifest", type=Path, help="the manifest written by `virnucpro shard`")
    p.add_argument("shards", type=Path, nargs="+", help="the shard output directories, in shard order")
    p.add_argument("--gathered", type=Path, required=True, help="the gathered embeddings.h5")
    p.add_argument("--best", type=Path, help="results/sweeps/best.json when the shards ran it (the projection)")
    p.add_argument("--gpus-per-job", type=positive_int, default=1)
    p.add_argument("--html", type=Path, required=True)
    p.add_argument("--summary", type=Path, required=True)
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.report import embed_report

    context = embed_report.build(args.manifest, args.shards, args.gathered, args.best, args.gpus_per_job)
    embed_report.write(context, args.html, args.summary)
    print(f"{args.html}: {len(context['shards'])} shards, {context['total_gpu_hours']:.4f} {context['hours_unit']}")
    return 0
