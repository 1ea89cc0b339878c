"""`virnucpro` command line: make-fasta, embed, bench.

Exit codes: 0 ok; 2 bad input or usage (one line on stderr); 3 out of memory; 75 stopped by SIGTERM/SIGINT
after flushing checkpoints (rerun to resume); 1 anything unexpected (with its traceback, since that is a bug).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from virnucpro.errors import EXIT_FAILURE, EXIT_OK, EXIT_OOM, EXIT_PREEMPTED, UserError


def _add_make_fasta(sub) -> None:
    p = sub.add_parser("make-fasta", help="write a deterministic synthetic protein FASTA")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--num-sequences", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="seed-mix", help="seed-mix (validation plan's mix) or short-reads")


def _add_embed(sub) -> None:
    from virnucpro.pipeline.runner import EmbedConfig

    d = EmbedConfig(fasta=Path("-"), outdir=Path("-"))
    p = sub.add_parser("embed", help="embed a protein FASTA with ESM-2 (packed, padding-free)")
    p.add_argument("fasta", type=Path)
    p.add_argument("-o", "--outdir", required=True, type=Path)
    p.add_argument("--model", default=d.model,
                   help="fair-esm model name (default: the checkpoint's architecture, else esm2_t36_3B_UR50D)")
    p.add_argument("--checkpoint", help="path to a fair-esm esm2_*.pt file")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights for throughput work only; recorded as 'weights: random'")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of --random-weights (default %(default)s)")
    p.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--token-budget", type=int, default=d.token_budget, help="tokens per packed batch")
    p.add_argument("--buffer-size", type=int, default=d.buffer_size, help="sequences per packing lookahead buffer")
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="DataLoader worker processes")
    p.add_argument("--prefetch-factor", type=int, default=d.prefetch_factor, help="batches prefetched per worker")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="flush results to a checkpoint chunk every N sequences")
    p.add_argument("--long-sequences", default=d.long_sequences, choices=["truncate", "error"],
                   help="sequences over 1022 residues: truncate (counted, warned) or refuse")
    p.add_argument("--compile", default=d.compile, choices=["auto", "on", "off"],
                   help="torch.compile the dense layer kernels (auto = on CUDA); batches are padded to the budget")
    p.add_argument("--repr-layer", type=int, default=d.repr_layer, help="layer to pool (-1 = last, fair-esm style)")
    p.add_argument("--target-sequences", type=int, default=d.target_sequences,
                   help="sequence count the runtime projection is for")
    p.add_argument("--world-size", type=int, default=d.world_size,
                   help="processes, one per device (default: every visible CUDA device, 1 on CPU)")
    p.add_argument("--progress-interval", type=float, default=d.progress_interval,
                   help="seconds between progress lines when stderr is not a terminal")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks for the GPU machine: accuracy vs fair-esm, engine throughput")
    p.add_argument("what", choices=["accuracy", "engines"])
    p.add_argument("--model", default="esm2_t36_3B_UR50D")
    p.add_argument("--num-sequences", type=int, default=200, help="accuracy: seed-mix sequences compared")
    p.add_argument("--seed-mix", type=int, default=10000, help="engines: seed-mix sequences")
    p.add_argument("--short-reads", type=int, default=50000, help="engines: short-reads sequences")
    p.add_argument("--fair-subset", type=int, default=3000, help="engines: sequences given to fair-esm")
    p.add_argument("--token-budget", type=int, default=16384)
    p.add_argument("--workdir", type=Path, default=Path("results/bench"))
    p.add_argument("-o", "--output", type=Path, help="write the result JSON here")


def cmd_bench(args) -> int:
    import json

    import torch

    from virnucpro import bench

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.what == "accuracy":
        result = bench.accuracy(args.model, args.num_sequences, 0, device)
        print(json.dumps(result, indent=2))
    else:
        result = bench.engines(args.model, args.workdir, device, args.seed_mix, args.short_reads, args.fair_subset,
                               args.token_budget)
        bench.print_table(result)
    if args.output:
        from virnucpro.utils.hardware import capture_hardware_info, package_versions

        result.update(hardware=capture_hardware_info(), versions=package_versions())
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="virnucpro", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_make_fasta(sub)
    _add_embed(sub)
    _add_bench(sub)
    return parser


def cmd_make_fasta(args) -> int:
    from virnucpro.data.fasta import write_fasta
    from virnucpro.data.synthetic import make_sequences

    ids, seqs = make_sequences(args.num_sequences, args.seed, args.profile)
    write_fasta(args.output, ids, seqs)
    mean = sum(map(len, seqs)) / len(seqs)
    print(f"wrote {len(ids)} sequences ({args.profile}, seed {args.seed}, mean {mean:.1f} aa) to {args.output}")
    return EXIT_OK


def cmd_embed(args) -> int:
    from virnucpro.pipeline.launcher import RankFailed
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.pipeline.preemption import Preempted, StopFlag
    from virnucpro.pipeline.runner import EmbedConfig, run_embed

    cfg = EmbedConfig(
        fasta=args.fasta, outdir=args.outdir, model=args.model, checkpoint=args.checkpoint,
        random_weights=args.random_weights, seed=args.seed, precision=args.precision, device=args.device,
        token_budget=args.token_budget, buffer_size=args.buffer_size, num_workers=args.num_workers,
        prefetch_factor=args.prefetch_factor, checkpoint_every=args.checkpoint_every,
        long_sequences=args.long_sequences, repr_layer=args.repr_layer, compile=args.compile,
        target_sequences=args.target_sequences, world_size=args.world_size, progress_interval=args.progress_interval,
    )
    status_path = args.outdir / "status.json"
    try:
        with StopFlag() as stop:  # from the start: a SIGTERM during loading also ends with exit 75
            summary = run_embed(cfg, stop=stop)
    except UserError:
        raise
    except Preempted as exc:
        if args.outdir.is_dir():
            write_json_atomic(status_path, {"status": "failed", "reason": "preempted", "resumable": True,
                                            "detail": str(exc), "config": _config_dict(cfg)})
        print(f"virnucpro: {exc}; rerun the same command to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    except RankFailed as exc:
        write_json_atomic(status_path, {"status": "failed", "reason": str(exc).splitlines()[0],
                                        "config": _config_dict(cfg)})
        print(f"virnucpro: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:
        import torch

        if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
            peak = getattr(exc, "peak_memory_gb", None)
            if peak is None and torch.cuda.is_available():
                peak = torch.cuda.max_memory_allocated() / 1024**3
            args.outdir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(status_path, {"status": "failed", "reason": "OOM", "config": _config_dict(cfg),
                                            "peak_memory_gb": peak, "error": str(exc).splitlines()[0]})
            print(f"virnucpro: out of memory ({exc.__class__.__name__}); see {status_path}", file=sys.stderr)
            return EXIT_OOM
        if args.outdir.is_dir():
            write_json_atomic(status_path, {"status": "failed", "reason": f"{exc.__class__.__name__}: {exc}",
                                            "config": _config_dict(cfg)})
        raise
    if summary.get("already_complete"):
        print(f"{args.outdir / 'embeddings.h5'} is already complete for this input and model: nothing to do")
        return EXIT_OK
    write_json_atomic(status_path, {"status": "ok", "reason": None, "config": _config_dict(cfg),
                                    "summary": summary})
    print(f"embedded {summary['total_sequences']} sequences in {summary['elapsed_seconds']:.2f} s "
          f"({summary['avg_tokens_per_sec'] or 0:,.0f} tokens/s) -> {args.outdir / 'embeddings.h5'}")
    return EXIT_OK


def _config_dict(cfg) -> dict:
    from dataclasses import asdict

    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}


def _stop_during_startup(signum, frame) -> None:
    raise SystemExit(EXIT_PREEMPTED)  # nothing computed yet, nothing to flush: "stopped, rerun to resume"


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_during_startup)  # until `embed` installs its flushing handler
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handlers = {"make-fasta": cmd_make_fasta, "embed": cmd_embed, "bench": cmd_bench}
    try:
        return handlers[args.command](args)
    except UserError as exc:
        print(f"virnucpro: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
