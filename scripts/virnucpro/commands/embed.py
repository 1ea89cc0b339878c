"""`virnucpro embed`: a protein FASTA -> `OUTDIR/embeddings.h5`, telemetry and `status.json`.

`add_arguments` and `embed_config` are shared with `run-point` and `measure`: the engine options come from
`virnucpro.settings`, the one definition of each setting."""

from __future__ import annotations

from pathlib import Path

from virnucpro import settings
from virnucpro.argtypes import nonempty_dir
from virnucpro.commands import help_style

EXAMPLE = "virnucpro embed reads.faa -o out/ --checkpoint esm2_t36_3B_UR50D.pt --precision bf16 --token-budget 16384"


def register(sub) -> None:
    p = sub.add_parser("embed", help="embed a protein FASTA with ESM-2 (packed, padding-free)", **help_style(EXAMPLE))
    add_arguments(p)
    p.set_defaults(handler=run)


def add_arguments(p, outdir: bool = True) -> None:
    """FASTA, -o OUTDIR (unless `outdir` is False: `measure` writes none) and every engine setting."""
    p.add_argument("fasta", type=Path)
    if outdir:
        p.add_argument("-o", "--outdir", required=True, type=nonempty_dir)
    settings.add_arguments(p)


def embed_config(args):
    """The EmbedConfig the parsed options describe."""
    from virnucpro.pipeline.runner import EmbedConfig

    outdir = getattr(args, "outdir", None) or Path("-")  # `measure` writes no OUTDIR
    return EmbedConfig(fasta=args.fasta, outdir=outdir, **settings.values(args))


def run(args) -> int:
    from virnucpro.pipeline.jobs import execute_embed

    return execute_embed(embed_config(args))
