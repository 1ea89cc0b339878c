"""`virnucpro bench`: benchmarks for the GPU machine (accuracy vs fair-esm, engine throughput, peers, scale)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from virnucpro.argtypes import nonnegative_int, positive_int
from virnucpro.commands import help_style
from virnucpro.errors import EXIT_OK


def _budgets(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated token counts") from None
    if not values or min(values) < 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: every budget must be at least 1024 tokens")
    return values


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks for the GPU machine: accuracy vs fair-esm, engine throughput, peers",
        **help_style("virnucpro bench engines -o docs/benchmarks/engines.json"),
    )
    p.add_argument("what", choices=["accuracy", "engines", "peers", "scale"])
    p.add_argument(
        "--model", default="esm2_t36_3B_UR50D", help="random weights of this architecture (ignored with --checkpoint)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _workload_options(p)
    p.add_argument(
        "--token-budget", type=positive_int, default=16384, help="accuracy, engines: this engine's token budget"
    )
    p.add_argument(
        "--engine-precisions",
        "--precision",
        help="accuracy, engines: this engine's precisions, comma-separated (default: accuracy fp32,bf16,fp16 and "
        "fp8 on a Hopper GPU; engines bf16,fp16)",
    )
    p.add_argument(
        "--outliers",
        type=_outliers,
        metavar="K:M",
        help="accuracy: K hidden channels made M times larger in every layer's pre-norms (trained models' outlier "
        "features; see models.weights.OutlierStateDict)",
    )
    p.add_argument("--fasta", type=Path, help="peers: one workload sampled from this FASTA instead of synthetic ones")
    p.add_argument(
        "--checkpoint", help="accuracy, engines, peers: a fair-esm checkpoint (default: random weights, --seed)"
    )
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="accuracy, engines, peers: seed of the random weights (and the sample)",
    )
    p.add_argument("--workdir", type=Path, default=Path("results/bench"))
    p.add_argument("-o", "--output", type=Path, help="write the result JSON here")
    _scale_options(p)
    p.set_defaults(handler=run)


def _workload_options(p) -> None:
    p.add_argument(
        "--num-sequences",
        type=positive_int,
        default=200,
        help="accuracy: seed-mix sequences compared; peers with --fasta: sequences sampled from it",
    )
    p.add_argument(
        "--seed-mix", type=nonnegative_int, default=10000, help="engines, peers: seed-mix sequences (0: left out)"
    )
    p.add_argument(
        "--short-reads", type=nonnegative_int, default=50000, help="engines, peers: short-reads sequences (0: left out)"
    )
    p.add_argument(
        "--peer-subset",
        type=nonnegative_int,
        default=3000,
        help="engines: sequences of each workload given to the peers (0: peers left out, this engine alone)",
    )
    p.add_argument(
        "--fp32-subset",
        type=positive_int,
        default=500,
        help="engines, peers: sequences given to the extract.py recipe (fair-esm fp32)",
    )
    p.add_argument(
        "--peer-budgets",
        type=_budgets,
        default=(16384, 32768, 65536),
        help="engines, peers: token budgets tried for each peer and workload (default %(default)s)",
    )


def _scale_options(p) -> None:
    p.add_argument(
        "--job",
        action="append",
        default=[],
        metavar="MODEL:N:PROFILE",
        help="scale: one real embed job of N synthetic sequences (repeatable)",
    )
    p.add_argument(
        "--finalize",
        action="append",
        default=[],
        metavar="N:DIM:DTYPE",
        help="scale: N x DIM synthetic rows through the output code alone (repeatable)",
    )
    p.add_argument("--embed-args", default="", help="scale: extra `virnucpro embed` options for --job, one string")


def _weights(args, device):
    from virnucpro.models.weights import resolve_weights

    return resolve_weights(
        None if args.checkpoint else args.model, args.checkpoint, args.checkpoint is None, args.seed, device
    )


def _engines(args, device) -> dict:
    from virnucpro import bench

    same = (
        ["--checkpoint", str(args.checkpoint)]
        if args.checkpoint
        else ["--model", args.model, "--random-weights", "--seed", str(args.seed)]
    )
    result = bench.engines(
        _weights(args, device),
        same,
        args.workdir,
        device,
        args.seed_mix,
        args.short_reads,
        args.peer_subset,
        args.fp32_subset,
        args.token_budget,
        args.peer_budgets,
        tuple((args.engine_precisions or "bf16,fp16").split(",")),
    )
    bench.print_table(result)
    return result


def _outliers(text: str) -> tuple[int, float]:
    try:
        k, m = text.split(":")
        channels, magnitude = int(k), float(m)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K:M (channels:magnitude), e.g. 4:30, not {text!r}") from None
    if channels < 1 or magnitude <= 0:
        raise argparse.ArgumentTypeError(f"K must be >= 1 and M > 0, not {text!r}")
    return channels, magnitude


def _accuracy(args, device) -> dict:
    """`bench accuracy`: the user's checkpoint (or random weights), optionally with injected outlier channels,
    at each precision against fair-esm fp32 on the same weights."""
    from virnucpro import bench
    from virnucpro.models.fp8 import scaled_mm_available
    from virnucpro.models.weights import OutlierStateDict

    precisions = args.engine_precisions or (
        "fp32,bf16,fp16,fp8" if device.type == "cuda" and scaled_mm_available(device) else "fp32,bf16,fp16"
    )
    weights = _weights(args, device)
    state, label = weights.state_dict, json.dumps(weights.provenance, default=str)
    if args.outliers:
        state = OutlierStateDict(state, weights.spec.embed_dim, *args.outliers, seed=args.seed)
        label += f"; {args.outliers[0]} outlier channels x{args.outliers[1]:g} in every pre-norm {state.channels}"
    seqs = bench.accuracy_sequences(args.num_sequences, args.seed)
    return bench.accuracy(weights.spec, state, label, seqs, device, args.token_budget, tuple(precisions.split(",")))


def run(args) -> int:
    import torch

    from virnucpro import bench, bench_scale

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if args.what == "scale":
        result = bench_scale.run(args.workdir, args.job, args.finalize, args.embed_args.split())
    elif args.what == "accuracy":
        result = _accuracy(args, device)
        print(json.dumps(result, indent=2))
    elif args.what == "peers":
        workloads = bench.peer_workloads(args.fasta, args.num_sequences, args.seed, args.seed_mix, args.short_reads)
        result = bench.peers(_weights(args, device), device, workloads, args.fp32_subset, args.peer_budgets)
    else:
        result = _engines(args, device)
    if args.output:
        from virnucpro.pipeline.output import write_json_atomic
        from virnucpro.utils.hardware import capture_hardware_info, package_versions

        result.update(hardware=capture_hardware_info(), versions=package_versions())
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.output, result)
    return EXIT_OK
