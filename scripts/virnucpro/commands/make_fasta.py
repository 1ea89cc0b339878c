"""`virnucpro make-fasta`: a deterministic synthetic protein FASTA."""

from __future__ import annotations

from pathlib import Path

from virnucpro.argtypes import nonnegative_int, positive_int
from virnucpro.commands import help_style
from virnucpro.errors import EXIT_OK


def register(sub) -> None:
    p = sub.add_parser(
        "make-fasta",
        help="write a deterministic synthetic protein FASTA",
        **help_style("virnucpro make-fasta -o reads.faa --num-sequences 100000 --seed 1 --profile short-reads"),
    )
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--num-sequences", type=positive_int, required=True)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument(
        "--profile",
        default="seed-mix",
        choices=["seed-mix", "short-reads"],
        help="seed-mix (validation plan's mix) or short-reads",
    )
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.data.fasta import write_fasta
    from virnucpro.data.synthetic import make_sequences

    ids, seqs = make_sequences(args.num_sequences, args.seed, args.profile)
    write_fasta(args.output, ids, seqs)
    mean = sum(map(len, seqs)) / len(seqs)
    print(f"wrote {len(ids)} sequences ({args.profile}, seed {args.seed}, mean {mean:.1f} aa) to {args.output}")
    return EXIT_OK
