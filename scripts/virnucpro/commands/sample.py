"""`virnucpro sample`: a seeded random subset of a FASTA (input order kept), or just its description."""

from __future__ import annotations

from pathlib import Path

from virnucpro.argtypes import nonnegative_int, positive_int
from virnucpro.commands import help_style
from virnucpro.errors import EXIT_OK, UserError


def register(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="a seeded random subset of a FASTA (input order kept), or just describe it",
        **help_style("virnucpro sample reads.faa -o subset.faa -n 1000 --seed 42 --info subset.json"),
    )
    p.add_argument("fasta", type=Path)
    p.add_argument("-o", "--output", type=Path, help="subset FASTA to write (omit to only describe the input)")
    p.add_argument("-n", "--num-sequences", type=positive_int, help="subset size (at most the input's count)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--info", type=Path, required=True, help="JSON describing the written (or given) FASTA")
    p.add_argument("--source", default="synthetic", help="synthetic or production (recorded in --info)")
    p.add_argument("--profile", help="synthetic profile (recorded in --info)")
    p.add_argument("--profile-seed", type=int, help="synthetic seed (recorded in --info)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.data.fasta import read_fasta
    from virnucpro.data.sample import describe, sample_fasta
    from virnucpro.pipeline.output import write_json_atomic

    if args.num_sequences is not None and args.output is None:
        raise UserError("sample: --num-sequences needs -o/--output (the subset FASTA to write)")
    if args.output is None:
        path, parent, records = args.fasta, None, read_fasta(args.fasta)
    else:
        path, parent = args.output, args.fasta
        records = sample_fasta(args.fasta, args.output, args.num_sequences, args.seed)
    info = describe(records, path, parent, args.source, args.profile, args.profile_seed)
    args.info.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.info, info)
    print(f"{path}: {len(records):,} sequences ({args.source}), sha256 {records.sha256[:12]}…")
    return EXIT_OK
