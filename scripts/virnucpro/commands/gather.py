"""`virnucpro gather`: the embed target's shards -> one embeddings.h5 (ids copied, rows as a virtual dataset)."""

from __future__ import annotations

from pathlib import Path

from virnucpro.commands import help_style

EXAMPLE = "virnucpro gather results/embed/manifest.json results/embed/shards/{0,1,2} -o results/embed/embeddings.h5"


def register(sub) -> None:
    p = sub.add_parser(
        "gather",
        help="verify the embed target's shards and gather them into one embeddings.h5 (no row is copied)",
        description="Check every shard against the split's manifest (its input, its ids in order, exactly "
        "once) and that all shards computed the same thing, then write OUT with `ids` and a virtual "
        "`embeddings` dataset over the shards' files (relative paths: move the folder as a whole).",
        **help_style(EXAMPLE),
    )
    p.add_argument("manifest", type=Path, help="the manifest written by `virnucpro shard`")
    p.add_argument("shards", type=Path, nargs="+", help="the shard output directories, in shard order")
    p.add_argument("-o", "--output", type=Path, required=True, help="the gathered embeddings.h5")
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.pipeline.gather import gather

    attrs = gather(args.manifest, args.shards, args.output)
    print(f"gathered {attrs['num_sequences']:,} embeddings from {len(args.shards)} shards -> {args.output}")
    return 0
