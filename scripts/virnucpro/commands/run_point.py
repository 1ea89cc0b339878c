"""`virnucpro run-point`: a workflow job: embed as one measurement, then write the job's raw record."""

from __future__ import annotations

import os
from pathlib import Path

from virnucpro.commands import embed, help_style
from virnucpro.errors import UserError

EXAMPLE = (
    "virnucpro run-point results/data/sweep.fasta -o results/sweeps/baseline/baseline "
    "--random-weights --label baseline:baseline --group baseline "
    "--result results/sweeps/baseline/baseline.run.json"
)


def register(sub) -> None:
    p = sub.add_parser(
        "run-point",
        help="a workflow job: embed, then write the job's raw record (failures recorded)",
        description="Embed FASTA as one measurement (from a clean OUTDIR unless resuming an "
        "interrupted attempt of the same configuration) and write its raw record; "
        "`analyse-run` turns it into the result.",
        **help_style(EXAMPLE),
    )
    embed.add_arguments(p)
    progress_interval_from_workflow(p)
    p.add_argument("--result", required=True, type=Path, help="raw record (JSON) to write")
    p.add_argument("--label", required=True)
    p.add_argument("--group", required=True, help="production, baseline, dataloader, packing, interaction, ...")
    p.add_argument("--params-from", type=Path, help="a best-config JSON whose engine settings override these")
    p.add_argument(
        "--strict",
        action="store_true",
        help="a failure is the job's failure (production runs); without it, it is recorded and exit 0",
    )
    p.add_argument("--discard-embeddings", action="store_true", help="delete embeddings.h5 once measured")
    p.set_defaults(handler=run)


def progress_interval_from_workflow(p) -> None:
    """A workflow job's --progress-interval defaults to the workflow's (engine.progress_interval, passed in the
    environment so that changing it reruns no job)."""
    p.set_defaults(progress_interval=None)
    action = next(a for a in p._actions if a.dest == "progress_interval")
    action.help += " (default: $VIRNUCPRO_PROGRESS_INTERVAL, which the workflow sets, else 10)"


def progress_from_env() -> float:
    """run-point's progress interval: $VIRNUCPRO_PROGRESS_INTERVAL (the workflow's shell prefix sets it), else 10."""
    raw = os.environ.get("VIRNUCPRO_PROGRESS_INTERVAL", "10")
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"VIRNUCPRO_PROGRESS_INTERVAL={raw!r} is not a number of seconds") from None


def run(args) -> int:
    from virnucpro.pipeline.jobs import apply_params_from, run_point

    if args.progress_interval is None:
        args.progress_interval = progress_from_env()
    cfg = apply_params_from(embed.embed_config(args), args.params_from)
    return run_point(cfg, args.label, args.group, args.result, args.strict, args.discard_embeddings)
