"""`virnucpro embed-shard`: one shard job of the embed target: `embed` + the best configuration + a job record."""

from __future__ import annotations

import sys
from pathlib import Path

from virnucpro.commands import embed, help_style
from virnucpro.commands.run_point import progress_from_env, progress_interval_from_workflow

EXAMPLE = (
    "virnucpro embed-shard results/embed/input/0.fasta -o results/embed/shards/0 --random-weights "
    "--params-from results/sweeps/best.json --record results/embed/shards/0/job.json"
)


def register(sub) -> None:
    p = sub.add_parser(
        "embed-shard",
        help="a workflow job: embed one shard (resuming its checkpoints), then write its job record",
        description="`virnucpro embed` of one shard; every attempt (a cancelled one too) is logged in "
        "OUTDIR/attempts.jsonl, and the job record (written last) lists them with the shard's status.",
        **help_style(EXAMPLE),
    )
    embed.add_arguments(p)
    progress_interval_from_workflow(p)
    p.add_argument(
        "--params-from", type=Path, help="a best-config JSON whose engine settings and precision override these"
    )
    p.add_argument("--record", type=Path, required=True, help="the job record (JSON) to write once embedded")
    p.set_defaults(handler=run)


#: What the job record's settings leave out: paths (the record has them) and what does not change the result.
NOT_SETTINGS = ("fasta", "outdir", "extra_metadata", "progress_interval")


def run(args) -> int:
    from virnucpro.pipeline.jobs import apply_params_from, config_dict
    from virnucpro.pipeline.shards import attempt, prepare_shard_outdir, remember_finished, restore_finished
    from virnucpro.pipeline.shards import what_made, write_job_record

    if args.progress_interval is None:
        args.progress_interval = progress_from_env()
    cfg = apply_params_from(embed.embed_config(args), args.params_from)
    settings = {k: v for k, v in config_dict(cfg).items() if k not in NOT_SETTINGS}
    made = what_made(cfg.fasta, settings)
    prepared = prepare_shard_outdir(cfg.outdir, cfg.fasta, made["shard_sha256"])  # the shard hashed once
    for note in (prepared, restore_finished(cfg.outdir, cfg.fasta, made)):
        if note:
            print(note, file=sys.stderr)
    with attempt(cfg.outdir, cfg.world_size or 1, made["key"]) as state:
        state["exit_code"] = code = _embed_over_other_runs(cfg)
    if code == 0:
        write_job_record(args.record, cfg.outdir, cfg.fasta, settings)
        remember_finished(cfg.outdir, made)
    return code


def _embed_over_other_runs(cfg) -> int:
    """`embed`, discarding results of other settings that it refuses (the workflow reran this shard for its new
    settings: `embed`'s advice, a new directory or --overwrite, is no option a workflow user has)."""
    from virnucpro.errors import OtherRunsResults
    from virnucpro.pipeline.jobs import execute_embed
    from virnucpro.pipeline.shards import discard_other_runs

    try:
        return execute_embed(cfg)
    except OtherRunsResults as exc:
        print(f"{str(exc).split(';')[0]}: discarded (this job runs the workflow's new settings)", file=sys.stderr)
        discard_other_runs(cfg.outdir)
        return execute_embed(cfg)
