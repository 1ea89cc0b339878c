"""`virnucpro shard`: split a FASTA into token-balanced contiguous shards + manifest (the embed target's split)."""

from __future__ import annotations

from pathlib import Path

from virnucpro.commands import help_style

from virnucpro.argtypes import nonnegative_int, positive_int

EXAMPLE = "virnucpro shard reads.faa --shards 4 -o results/embed/input --manifest results/embed/manifest.json"


def register(sub) -> None:
    p = sub.add_parser(
        "shard",
        help="split a FASTA into token-balanced contiguous shards (the embed target's first step)",
        description="Write OUTDIR/{k}.fasta for k < SHARDS (contiguous input ranges cut at k/SHARDS of the "
        "cumulative token count) and a manifest that `gather` verifies against. Reads the input twice, streaming.",
        **help_style(EXAMPLE),
    )
    p.add_argument("fasta", type=Path)
    p.add_argument("--shards", type=positive_int, required=True, help="number of shards")
    p.add_argument("-o", "--outdir", type=Path, required=True, help="directory of the shard FASTA files")
    p.add_argument("--manifest", type=Path, required=True, help="manifest JSON to write")
    p.add_argument(
        "--window-overlap",
        type=nonnegative_int,
        default=None,
        help="the shard jobs run --long-sequences chunk with this overlap: balance by the windows' tokens "
        "(default: long sequences count as truncated)",
    )
    p.add_argument(
        "--refuse-long",
        action="store_true",
        help="the shard jobs run --long-sequences error: refuse a sequence over 1022 residues here, before any job",
    )
    p.add_argument(
        "--token-budget",
        type=positive_int,
        default=None,
        help="the shard jobs' token budget: refuse a sequence (or window) that cannot fit it here, before any job",
    )
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.pipeline.shards import split_fasta

    manifest = split_fasta(
        args.fasta, args.shards, args.outdir, args.manifest, args.window_overlap, args.refuse_long, args.token_budget
    )
    sizes = ", ".join(f"{s['sequences']:,} seq/{s['tokens']:,} tok" for s in manifest["shards"])
    print(f"{manifest['num_sequences']:,} sequences in {args.shards} shards: {sizes}")
    return 0
