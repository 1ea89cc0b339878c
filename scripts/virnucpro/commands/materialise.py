"""`virnucpro materialise`: a gathered embeddings.h5 (rows in the shards' files) as one self-contained file."""

from __future__ import annotations

from pathlib import Path

from virnucpro.commands import help_style

EXAMPLE = "virnucpro materialise results/embed/embeddings.h5 -o /project/shared/sample1_embeddings.h5"


def register(sub) -> None:
    p = sub.add_parser(
        "materialise",
        help="copy a gathered embeddings.h5 into one self-contained file (to move or share it alone)",
        description="The embed target's embeddings.h5 holds no rows: its `embeddings` is a virtual dataset over "
        "the shards' files, so a copy of that file alone reads as NaN. This writes OUT with every row, the ids "
        "and the attributes, streaming in blocks; a row whose shard file is missing is refused, naming it.",
        **help_style(EXAMPLE),
    )
    p.add_argument("gathered", type=Path, help="the gathered file (results/embed/embeddings.h5)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the self-contained copy to write")
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.pipeline.gather import materialise

    rows = materialise(args.gathered, args.output)
    print(f"{rows:,} embeddings written into {args.output} (self-contained)")
    return 0
