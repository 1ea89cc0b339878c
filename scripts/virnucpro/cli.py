"""`virnucpro` command line: make-fasta, embed, bench, and the workflow's jobs (run-point, analyse-run, ...).

Exit codes: 0 ok; 2 bad input or usage (one line on stderr); 3 out of memory; 74 the output could not be written
(disk full, quota; rerun to resume); 75 stopped by SIGTERM/SIGINT after flushing checkpoints (rerun to resume);
130 a second Ctrl-C (stopped at once); 1 anything unexpected (with its traceback, since that is a bug).
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from pathlib import Path

from virnucpro import __version__
from virnucpro.argtypes import (
    OneLineParser,
    device_name,
    fraction,
    nonnegative_float,
    nonempty,
    nonnegative_int,
    percentage,
    positive_int,
)
from virnucpro.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_OK,
    EXIT_OOM,
    EXIT_PREEMPTED,
    EXIT_USAGE,
    UserError,
)

EXIT_CODES = (
    f"exit codes: {EXIT_OK} ok; 2 bad input or usage (one line on stderr); {EXIT_OOM} out of memory "
    f"(status.json reason: OOM); {EXIT_IO} the output could not be written (disk full, quota; rerun to "
    f"resume); {EXIT_PREEMPTED} stopped by SIGTERM/SIGINT after flushing checkpoints "
    f"(rerun the same command to resume); {EXIT_INTERRUPTED} a second Ctrl-C (stopped at once); "
    f"{EXIT_FAILURE} unexpected error (traceback: a bug)"
)
EMBED_EXAMPLE = (
    "virnucpro embed reads.faa -o out/ --checkpoint esm2_t36_3B_UR50D.pt --precision bf16 --token-budget 16384"
)
RUN_POINT_EXAMPLE = (
    "virnucpro run-point results/data/sweep.fasta -o results/sweeps/baseline/baseline "
    "--random-weights --label baseline:baseline --group baseline "
    "--result results/sweeps/baseline/baseline.run.json"
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every option's help (not None or a flag's False: the help says what unset means); the
    epilog (example, exit codes) keeps its line breaks."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _help_style(example: str | None = None) -> dict:
    """Keyword arguments of every (sub)parser: defaults shown, an example and the exit codes as epilog."""
    epilog = (f"example:\n  {example}\n\n" if example else "") + EXIT_CODES
    return {"formatter_class": _HelpFormatter, "epilog": epilog}


def _add_make_fasta(sub) -> None:
    p = sub.add_parser(
        "make-fasta",
        help="write a deterministic synthetic protein FASTA",
        **_help_style("virnucpro make-fasta -o reads.faa --num-sequences 100000 --seed 1 --profile short-reads"),
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


def _add_embed(sub) -> None:
    p = sub.add_parser(
        "embed", help="embed a protein FASTA with ESM-2 (packed, padding-free)", **_help_style(EMBED_EXAMPLE)
    )
    _embed_arguments(p)


def _embed_arguments(p, outdir: bool = True) -> None:
    from virnucpro.pipeline.runner import EmbedConfig

    d = EmbedConfig(fasta=Path("-"), outdir=Path("-"))
    p.add_argument("fasta", type=Path)
    if outdir:
        p.add_argument("-o", "--outdir", required=True, type=_nonempty_path)
    p.add_argument(
        "--model",
        type=nonempty,
        default=d.model,
        help="fair-esm model name (default: the checkpoint's architecture, else esm2_t36_3B_UR50D)",
    )
    p.add_argument("--checkpoint", type=nonempty, help="path to a fair-esm esm2_*.pt file")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights for throughput work only; recorded as 'weights: random'",
    )
    p.add_argument(
        "--seed", type=nonnegative_int, default=d.seed, help="seed of --random-weights (default %(default)s)"
    )
    p.add_argument(
        "--precision",
        default=d.precision,
        choices=["auto", "fp32", "fp16", "bf16"],
        help="auto = bf16 on CUDA, fp32 on CPU",
    )
    p.add_argument("--device", type=device_name, default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--token-budget", type=positive_int, default=d.token_budget, help="tokens per packed batch")
    p.add_argument(
        "--buffer-size", type=positive_int, default=d.buffer_size, help="sequences per packing lookahead buffer"
    )
    p.add_argument("--num-workers", type=nonnegative_int, default=d.num_workers, help="DataLoader worker processes")
    p.add_argument(
        "--prefetch-factor", type=positive_int, default=d.prefetch_factor, help="batches prefetched per worker"
    )
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=d.checkpoint_every,
        help="flush results to a checkpoint chunk every N sequences",
    )
    p.add_argument(
        "--long-sequences",
        default=d.long_sequences,
        choices=["truncate", "error"],
        help="sequences over 1022 residues: truncate (counted, warned) or refuse",
    )
    p.add_argument(
        "--compile",
        default=d.compile,
        choices=["auto", "on", "off"],
        help="torch.compile the dense layer kernels (auto = on CUDA); batches are padded to the budget",
    )
    p.add_argument(
        "--exact-gelu",
        action="store_true",
        help="on CUDA fp16/bf16, compute ESM's erf gelu separately instead of cuBLASLt's fused bias+gelu "
        "epilogue (tanh form; ~4%% slower, same measured accuracy: docs/benchmarks/README.md)",
    )
    p.add_argument("--repr-layer", type=int, default=d.repr_layer, help="layer to pool (-1 = last, fair-esm style)")
    p.add_argument(
        "--output-dtype",
        default=d.output_dtype,
        choices=["float32", "float16"],
        help="dtype of the stored embeddings (float16 halves the file; adds ~2e-4 relative L2)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard an existing result or partial state in OUTDIR (of any configuration) and start anew",
    )
    p.add_argument(
        "--compile-cache",
        default=d.compile_cache,
        metavar="DIR",
        help="persistent torch.compile/Triton cache shared by jobs (default: torch's, under /tmp)",
    )
    p.add_argument(
        "--target-sequences",
        type=positive_int,
        default=d.target_sequences,
        help="sequence count the runtime projection is for",
    )
    p.add_argument(
        "--world-size",
        type=positive_int,
        default=d.world_size,
        help="processes, one per device (default: every visible CUDA device, 1 on CPU)",
    )
    p.add_argument(
        "--progress-interval",
        type=nonnegative_float,
        default=d.progress_interval,
        help="seconds between progress lines when stderr is not a terminal (0: every batch)",
    )


def _nonempty_path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a directory, not an empty string")
    return Path(text)


def _budgets(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated token counts") from None
    if not values or min(values) < 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: every budget must be at least 1024 tokens")
    return values


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks for the GPU machine: accuracy vs fair-esm, engine throughput, peers",
        **_help_style("virnucpro bench engines -o docs/benchmarks/engines.json"),
    )
    p.add_argument("what", choices=["accuracy", "engines", "peers", "scale"])
    p.add_argument(
        "--model", default="esm2_t36_3B_UR50D", help="random weights of this architecture (ignored with --checkpoint)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
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
        "--peer-subset", type=positive_int, default=3000, help="engines: sequences of each workload given to the peers"
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
    p.add_argument(
        "--token-budget", type=positive_int, default=16384, help="accuracy, engines: this engine's token budget"
    )
    p.add_argument(
        "--engine-precisions", default="bf16,fp16", help="engines: this engine's precisions, comma-separated"
    )
    p.add_argument("--fasta", type=Path, help="peers: one workload sampled from this FASTA instead of synthetic ones")
    p.add_argument("--checkpoint", help="engines, peers: a fair-esm checkpoint (default: random weights, --seed)")
    p.add_argument(
        "--seed", type=nonnegative_int, default=0, help="engines, peers: seed of the random weights (and the sample)"
    )
    p.add_argument("--workdir", type=Path, default=Path("results/bench"))
    p.add_argument("-o", "--output", type=Path, help="write the result JSON here")
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


def _peer_workloads(args) -> dict[str, list[str]]:
    """peers: a seeded sample of --fasta (the workflow's input), else the two synthetic workloads."""
    import numpy as np

    from virnucpro.data.fasta import read_fasta
    from virnucpro.data.synthetic import make_sequences

    if args.fasta is None:
        return {
            p: make_sequences(n, 1, p)[1]
            for p, n in (("seed-mix", args.seed_mix), ("short-reads", args.short_reads))
            if n > 0
        }
    records = read_fasta(args.fasta)
    if args.num_sequences < 1:
        raise UserError("bench peers: --num-sequences must be a positive count")
    k = min(args.num_sequences, len(records))
    rng = np.random.default_rng(args.seed)
    return {"input": [records.seqs[i].decode() for i in rng.permutation(len(records))[:k]]}


def _bench_scale(args) -> dict:
    import json

    from virnucpro import bench_scale

    result = {"jobs": [], "finalize": []}
    for spec in args.job:
        model, n, profile = spec.split(":")
        result["jobs"].append(bench_scale.job(args.workdir, model, int(n), profile, args.embed_args.split()))
        print(json.dumps(result["jobs"][-1], indent=2), flush=True)
    for spec in args.finalize:
        n, dim, dtype = spec.split(":")
        result["finalize"].append(bench_scale.finalize_only(args.workdir, int(n), int(dim), dtype))
        print(json.dumps(result["finalize"][-1], indent=2), flush=True)
    return result


def cmd_bench(args) -> int:
    import json

    import torch

    from virnucpro import bench
    from virnucpro.models.weights import resolve_weights

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.what == "scale":
        result = _bench_scale(args)
    elif args.what == "accuracy":
        result = bench.accuracy(args.model, args.num_sequences, 0, device, args.token_budget)
        print(json.dumps(result, indent=2))
    elif args.what == "peers":
        weights = resolve_weights(
            None if args.checkpoint else args.model, args.checkpoint, args.checkpoint is None, args.seed, device
        )
        result = bench.peers(weights, device, _peer_workloads(args), args.fp32_subset, args.peer_budgets)
    else:
        weights = resolve_weights(
            None if args.checkpoint else args.model, args.checkpoint, args.checkpoint is None, args.seed, device
        )
        same = (
            ["--checkpoint", str(args.checkpoint)]
            if args.checkpoint
            else ["--model", args.model, "--random-weights", "--seed", str(args.seed)]
        )
        result = bench.engines(
            weights,
            same,
            args.workdir,
            device,
            args.seed_mix,
            args.short_reads,
            args.peer_subset,
            args.fp32_subset,
            args.token_budget,
            args.peer_budgets,
            tuple(args.engine_precisions.split(",")),
        )
        bench.print_table(result)
    if args.output:
        from virnucpro.pipeline.output import write_json_atomic
        from virnucpro.utils.hardware import capture_hardware_info, package_versions

        result.update(hardware=capture_hardware_info(), versions=package_versions())
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.output, result)
    return EXIT_OK


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="virnucpro",
        description=__doc__.splitlines()[0],
        **_help_style(f"{EMBED_EXAMPLE}\n  virnucpro embed --help"),
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"virnucpro {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_make_fasta(sub)
    _add_embed(sub)
    _add_bench(sub)
    _add_run_point(sub)
    _add_analyse_run(sub)
    _add_sample(sub)
    _add_measure(sub)
    _add_best_config(sub)
    _add_report(sub)
    _add_merge(sub)
    _add_scaling(sub)
    from virnucpro.commands import embed_report, embed_shard, gather, shard

    for command in (shard, embed_shard, gather, embed_report):
        command.register(sub)
    return parser


def cmd_make_fasta(args) -> int:
    from virnucpro.data.fasta import write_fasta
    from virnucpro.data.synthetic import make_sequences

    ids, seqs = make_sequences(args.num_sequences, args.seed, args.profile)
    write_fasta(args.output, ids, seqs)
    mean = sum(map(len, seqs)) / len(seqs)
    print(f"wrote {len(ids)} sequences ({args.profile}, seed {args.seed}, mean {mean:.1f} aa) to {args.output}")
    return EXIT_OK


def _embed_config(args):
    from virnucpro.pipeline.runner import EmbedConfig

    return EmbedConfig(
        fasta=args.fasta,
        outdir=getattr(args, "outdir", None) or Path("-"),  # `measure` writes no OUTDIR
        model=args.model,
        checkpoint=args.checkpoint,
        random_weights=args.random_weights,
        seed=args.seed,
        precision=args.precision,
        device=args.device,
        token_budget=args.token_budget,
        buffer_size=args.buffer_size,
        num_workers=args.num_workers,
        prefetch_factor=args.prefetch_factor,
        checkpoint_every=args.checkpoint_every,
        long_sequences=args.long_sequences,
        repr_layer=args.repr_layer,
        compile=args.compile,
        exact_gelu=args.exact_gelu,
        output_dtype=args.output_dtype,
        overwrite=args.overwrite,
        compile_cache=args.compile_cache,
        target_sequences=args.target_sequences,
        world_size=args.world_size,
        progress_interval=args.progress_interval,
    )


def cmd_embed(args) -> int:
    return execute_embed(_embed_config(args))


def execute_embed(cfg) -> int:
    """Run an embedding job; write `status.json` for every ending; return the exit code (UserError raised)."""
    from virnucpro.pipeline.launcher import RankFailed
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.pipeline.preemption import Preempted, StopFlag
    from virnucpro.pipeline.runner import run_embed

    outdir = cfg.outdir
    status_path = outdir / "status.json"
    try:
        with StopFlag() as stop:  # from the start: a SIGTERM during loading also ends with exit 75
            summary = run_embed(cfg, stop=stop)
    except UserError:
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: chunks already renamed into place stay valid
        if outdir.is_dir():
            write_json_atomic(
                status_path,
                {"status": "failed", "reason": "interrupted", "resumable": True, "config": _config_dict(cfg)},
            )
        raise
    except Preempted as exc:
        if outdir.is_dir():
            write_json_atomic(
                status_path,
                {
                    "status": "failed",
                    "reason": "preempted",
                    "resumable": True,
                    "detail": str(exc),
                    "config": _config_dict(cfg),
                },
            )
        print(f"virnucpro: {exc}; rerun the same command to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    except RankFailed as exc:
        write_json_atomic(
            status_path, {"status": "failed", "reason": str(exc).splitlines()[0], "config": _config_dict(cfg)}
        )
        print(f"virnucpro: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:
        import torch

        if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
            peak = getattr(exc, "peak_memory_gb", None)
            if peak is None and torch.cuda.is_available():
                peak = torch.cuda.max_memory_allocated() / 1024**3
            outdir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                status_path,
                {
                    "status": "failed",
                    "reason": "OOM",
                    "config": _config_dict(cfg),
                    "peak_memory_gb": peak,
                    "error": str(exc).splitlines()[0],
                },
            )
            print(f"virnucpro: out of memory ({exc.__class__.__name__}); see {status_path}", file=sys.stderr)
            return EXIT_OOM
        if outdir.is_dir():
            write_json_atomic(
                status_path,
                {"status": "failed", "reason": f"{exc.__class__.__name__}: {exc}", "config": _config_dict(cfg)},
            )
        raise
    if summary.get("already_complete"):
        print(f"{outdir / 'embeddings.h5'} is already complete for this input and model: nothing to do")
        _record_earlier_completion(status_path, cfg, summary)
        return EXIT_OK
    write_json_atomic(status_path, {"status": "ok", "reason": None, "config": _config_dict(cfg), "summary": summary})
    print(
        f"embedded {summary['total_sequences']} sequences in {summary['elapsed_seconds']:.2f} s "
        f"({summary['avg_tokens_per_sec'] or 0:,.0f} tokens/s) -> {outdir / 'embeddings.h5'}"
    )
    return EXIT_OK


def _record_earlier_completion(status_path: Path, cfg, summary: dict) -> None:
    """A run killed after its final rename but before its status write left a complete result and a stale
    status; make the status say what is true (ok), from the rank telemetry that run wrote."""
    import json

    from virnucpro.pipeline.output import write_json_atomic

    try:
        if json.loads(status_path.read_text()).get("status") == "ok":
            return
    except (OSError, ValueError):
        pass
    write_json_atomic(
        status_path,
        {
            "status": "ok",
            "reason": None,
            "config": _config_dict(cfg),
            "summary": summary,
            "note": "the result was completed by an earlier run; status written on rerun",
        },
    )


def _add_run_point(sub) -> None:
    p = sub.add_parser(
        "run-point",
        help="a workflow job: embed, then write the job's raw record (failures recorded)",
        description="Embed FASTA as one measurement (from a clean OUTDIR unless resuming an "
        "interrupted attempt of the same configuration) and write its raw record; "
        "`analyse-run` turns it into the result.",
        **_help_style(RUN_POINT_EXAMPLE),
    )
    _embed_arguments(p)
    p.set_defaults(progress_interval=None)
    next(
        a for a in p._actions if a.dest == "progress_interval"
    ).help += " (default: $VIRNUCPRO_PROGRESS_INTERVAL, which the workflow sets, else 10)"
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


def _progress_from_env() -> float:
    """run-point's progress interval: $VIRNUCPRO_PROGRESS_INTERVAL (the workflow's shell prefix sets it), else 10."""
    import os

    raw = os.environ.get("VIRNUCPRO_PROGRESS_INTERVAL", "10")
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"VIRNUCPRO_PROGRESS_INTERVAL={raw!r} is not a number of seconds") from None


def _read_json(path: Path, option: str) -> dict:
    return read_json(path, option)


def _apply_params_from(cfg, path: Path | None):
    """Override `cfg`'s engine settings with the `params` of a best-config JSON (world size excepted)."""
    from virnucpro.report.results import KNOBS

    if path is None:
        return cfg
    best = _read_json(path, "--params-from").get("params") or {}
    for knob in KNOBS:
        if knob in best and knob != "world_size":
            setattr(cfg, knob, best[knob])
    return cfg


def cmd_run_point(args) -> int:
    import traceback

    from virnucpro.pipeline.measurement import prepare_outdir
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.report.results import KNOBS, collect_run

    if args.progress_interval is None:
        args.progress_interval = _progress_from_env()
    cfg = _apply_params_from(_embed_config(args), args.params_from)
    cleared = prepare_outdir(cfg)
    if cleared:
        print(f"{args.label}: cleared {cfg.outdir}: {cleared}", file=sys.stderr)
    reason = None
    try:
        code = execute_embed(cfg)
    except UserError as exc:
        if args.strict:
            raise
        code, reason = exc.exit_code, str(exc)
        print(f"virnucpro: error: {exc}", file=sys.stderr)
    except Exception as exc:  # recorded as this point's failure; the traceback stays in the job's log
        if args.strict:
            raise
        traceback.print_exc()
        code, reason = EXIT_FAILURE, f"{exc.__class__.__name__}: {exc}"
    if code == EXIT_PREEMPTED or (code != EXIT_OK and args.strict):
        return code  # no result: the scheduler retries (or the workflow stops) and a rerun resumes
    params = {k: getattr(cfg, k) for k in KNOBS}
    result = collect_run(cfg.outdir, args.label, args.group, params, code, reason)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.result, result)
    if args.discard_embeddings:
        (cfg.outdir / "embeddings.h5").unlink(missing_ok=True)
    print(
        f"{args.label}: {result['status']}"
        + (f" ({result['reason']})" if result["reason"] else "")
        + (f", resumed {result['resumed_sequences']:,} sequences" if result["resumed"] else "")
    )
    if args.strict and result["status"] != "ok":
        return EXIT_FAILURE
    return EXIT_OK


def _add_analyse_run(sub) -> None:
    p = sub.add_parser(
        "analyse-run",
        help="a run-point record + its raw telemetry -> the job's result (local)",
        description="Steady state (warm-up excluded), projections and validity of one measured "
        "run, from its raw telemetry: analysis settings never rerun a GPU job.",
        **_help_style(
            "virnucpro analyse-run results/sweeps/baseline/baseline.run.json "
            "-o results/sweeps/baseline/baseline.json --warmup-seconds 2"
        ),
    )
    p.add_argument("run", type=Path, help="the raw record written by run-point --result")
    p.add_argument("-o", "--output", type=Path, required=True, help="result JSON to write")
    p.add_argument("--warmup-seconds", type=float, default=60.0, help="warm-up excluded from steady state")
    p.add_argument(
        "--warmup-batches",
        type=int,
        default=20,
        help="warm-up excluded from steady state; the larger of the two applies",
    )
    p.add_argument(
        "--min-steady-batches", type=int, default=20, help="fewer steady batches on any rank marks the run invalid"
    )
    p.add_argument("--target-sequences", type=int, default=6_000_000, help="sequence count projections are for")


def cmd_analyse_run(args) -> int:
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.report.results import analyse_run, load_results

    if args.min_steady_batches < 1 or args.target_sequences < 1:
        raise UserError("--min-steady-batches and --target-sequences must be at least 1")
    result = analyse_run(
        load_results([args.run])[0],
        args.warmup_seconds,
        args.warmup_batches,
        args.min_steady_batches,
        args.target_sequences,
    )
    write_json_atomic(args.output, result)
    print(
        f"{result['label']}: {result['status']}, "
        + ("valid" if result["valid"] else "INVALID: " + "; ".join(result["invalid_reasons"]))
    )
    return EXIT_OK


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="a seeded random subset of a FASTA (input order kept), or just describe it",
        **_help_style("virnucpro sample reads.faa -o subset.faa -n 1000 --seed 42 --info subset.json"),
    )
    p.add_argument("fasta", type=Path)
    p.add_argument("-o", "--output", type=Path, help="subset FASTA to write (omit to only describe the input)")
    p.add_argument("-n", "--num-sequences", type=positive_int, help="subset size (at most the input's count)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--info", type=Path, required=True, help="JSON describing the written (or given) FASTA")
    p.add_argument("--source", default="synthetic", help="synthetic or production (recorded in --info)")
    p.add_argument("--profile", help="synthetic profile (recorded in --info)")
    p.add_argument("--profile-seed", type=int, help="synthetic seed (recorded in --info)")


def cmd_sample(args) -> int:
    import numpy as np

    from virnucpro.data.fasta import read_fasta, write_fasta
    from virnucpro.pipeline.output import write_json_atomic

    if args.num_sequences is not None and args.output is None:
        raise UserError("sample: --num-sequences needs -o/--output (the subset FASTA to write)")
    records = read_fasta(args.fasta)
    path = args.fasta
    ids, seqs = records.ids, records.seqs
    if args.output is not None:
        if args.num_sequences is None or args.num_sequences < 1:
            raise UserError("sample: --num-sequences must be a positive count")
        k = min(args.num_sequences, len(ids))
        chosen = np.sort(np.random.default_rng(args.seed).choice(len(ids), size=k, replace=False))
        ids, seqs = [ids[i] for i in chosen], [seqs[i] for i in chosen]
        write_fasta(args.output, ids, [s.decode() for s in seqs])
        path = args.output
        records = read_fasta(path)
    lengths = records.lengths()
    info = {
        "path": _shown_path(path),
        "sha256": records.sha256,
        "num_sequences": len(records),
        "mean_length": sum(lengths) / len(lengths),
        "source": args.source,
        "profile": args.profile,
        "seed": args.profile_seed,
        "parent": _shown_path(args.fasta) if args.output else None,
        "example_ids": records.ids[:3],
        "truncated": records.truncated,
    }
    args.info.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.info, info)
    print(f"{path}: {len(records):,} sequences ({args.source}), sha256 {records.sha256[:12]}…")
    return EXIT_OK


def _add_measure(sub) -> None:
    p = sub.add_parser(
        "measure",
        help="a workflow job: time-boxed, repeated throughput of one engine configuration "
        "(warm-up until stable, then --repeats windows of --seconds) -> result JSON",
        **_help_style(
            "virnucpro measure results/data/sweep.fasta --random-weights --seconds 60 "
            "--repeats 3 --label baseline:baseline --group baseline --result b.json"
        ),
    )
    _embed_arguments(p, outdir=False)
    p.add_argument("--result", required=True, type=Path, help="result JSON to write")
    p.add_argument("--label", required=True)
    p.add_argument("--group", required=True, help="baseline, dataloader, packing, interaction, optimal, ...")
    p.add_argument("--seconds", type=float, default=3.0, help="length of one measured window (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="measured windows (default %(default)s)")
    p.add_argument(
        "--warmup-window",
        type=float,
        default=1.0,
        help="warm-up window seconds; stable when two in a row agree (default %(default)s)",
    )
    p.add_argument("--warmup-max", type=float, default=10.0, help="warm-up bound in seconds (default %(default)s)")
    p.add_argument(
        "--stable-tolerance",
        type=float,
        default=0.02,
        help="relative change between two warm-up windows that counts as stable (default %(default)s)",
    )
    p.add_argument("--params-from", type=Path, help="a best-config JSON whose engine settings override these")
    p.add_argument(
        "--baseline",
        type=Path,
        help="with --params-from: the baseline's result JSON; adds `validation` (does this measurement "
        "agree with the best-config claim?)",
    )
    p.add_argument("--strict", action="store_true", help="a failure is the job's failure (no result written)")


def _measure_or_record(cfg, protocol, strict: bool):
    """(measurement, exit code, reason): failures are recorded unless `strict`; preemption propagates."""
    import traceback

    import torch

    from virnucpro.pipeline.measure import measure_throughput
    from virnucpro.pipeline.preemption import StopFlag

    try:
        with StopFlag() as stop:
            return measure_throughput(cfg, protocol, stop), EXIT_OK, None
    except UserError as exc:
        if strict:
            raise
        print(f"virnucpro: error: {exc}", file=sys.stderr)
        return None, exc.exit_code, str(exc)
    except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
        print(f"virnucpro: out of memory ({exc.__class__.__name__})", file=sys.stderr)
        return None, EXIT_OOM, "OOM"
    except Exception as exc:  # recorded as this point's failure; the traceback stays in the job's log
        if strict:
            raise
        traceback.print_exc()
        return None, EXIT_FAILURE, f"{exc.__class__.__name__}: {exc}"


def cmd_measure(args) -> int:
    from virnucpro.pipeline.measure import Protocol
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.pipeline.preemption import Preempted
    from virnucpro.report.results import KNOBS, measured_result
    from virnucpro.report.significance import validation_check

    protocol = Protocol(args.seconds, args.repeats, args.warmup_window, args.warmup_max, args.stable_tolerance)
    protocol.validate()
    cfg = _apply_params_from(_embed_config(args), args.params_from)
    try:
        measurement, code, reason = _measure_or_record(cfg, protocol, args.strict)
    except Preempted as exc:
        print(f"virnucpro: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED  # nothing to keep: a rerun measures again
    if code != EXIT_OK and args.strict:
        return code
    params = {k: getattr(cfg, k) for k in KNOBS} | {"world_size": 1}
    result = measured_result(args.label, args.group, params, measurement, code, reason, cfg.target_sequences)
    if args.baseline and args.params_from:
        result["validation"] = validation_check(
            result, _read_json(args.baseline, "--baseline"), _read_json(args.params_from, "--params-from")
        )
    write_json_atomic(args.result, result)
    if result["status"] == "ok":
        lo, hi = result["ci95"] or (float("nan"),) * 2
        print(
            f"{args.label}: {result['median']:,.1f} sequences/s median of {len(result['repeats'])} windows of "
            f"{args.seconds:g} s (95 % interval {lo:,.1f}-{hi:,.1f}); warm-up "
            f"{'stable' if measurement['warmup']['stabilised'] else 'NOT stable'} after "
            f"{measurement['warmup']['seconds']:.1f} s"
        )
    else:
        print(f"{args.label}: failed ({result['reason']})")
    return EXIT_OK


def _add_best_config(sub) -> None:
    p = sub.add_parser(
        "best-config",
        help="the sweep point that beats the baseline beyond noise, else the baseline",
        **_help_style("virnucpro best-config results/sweeps/*/*.json -o best.json --tsv sweeps.tsv"),
    )
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--min-packing", type=fraction, default=0.90)
    p.add_argument(
        "--min-gain",
        type=nonnegative_float,
        default=0.02,
        help="a winner's simultaneous 95 %% speedup interval must lie above 1 + this (default %(default)s)",
    )
    p.add_argument(
        "--between-job-cv",
        type=nonnegative_float,
        default=0.01,
        help="relative spread of one configuration's rate between jobs, which the repeats inside a job "
        "cannot show; added to every speedup interval (default %(default)s)",
    )
    p.add_argument("--tsv", type=Path, help="also write one row per point here (results/sweeps.tsv)")


def cmd_best_config(args) -> int:
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.report.results import load_results
    from virnucpro.report.significance import sweep_decision, write_sweeps_tsv

    if args.min_gain < 0 or args.between_job_cv < 0:
        raise UserError("--min-gain and --between-job-cv must be >= 0")
    decision = sweep_decision(
        load_results(args.results), args.min_packing, args.min_gain, between_job_cv=args.between_job_cv
    )
    write_json_atomic(args.output, decision)
    if args.tsv:
        write_sweeps_tsv(decision, args.tsv)
    print(f"best configuration: {decision['label']} ({decision['note']})")
    return EXIT_OK


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="verdicts (one engine) rendered as report.html, report.txt and summary.json", **_help_style()
    )
    p.add_argument("results", nargs="+", type=Path, help="result JSONs of every job (run-point)")
    p.add_argument("--input-info", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True, help="the workflow's configuration as JSON")
    p.add_argument("--scaling", type=Path, required=True, help="scaling.json of `virnucpro scaling`")
    p.add_argument("--best", type=Path, help="best.json of `virnucpro best-config`")
    p.add_argument("--peers", type=Path, help="peers JSON of `virnucpro bench peers` (optional GPU job)")
    p.add_argument("--compare-to", type=Path, help="a previous summary.json: each figure's change against it")
    p.add_argument("--merged", nargs="*", type=Path, default=[], help="merged telemetry JSONs (linked)")
    p.add_argument("--html", type=Path, required=True)
    p.add_argument("--text", type=Path)
    p.add_argument("--summary", type=Path)
    p.add_argument("--workflow-dir", type=Path, help="where to read the git commit from")


def read_json(path: Path | None, what: str) -> dict | None:
    """A JSON object from `path` (None for no path); a missing, unreadable or foreign file is the user's error."""
    from virnucpro.utils import jsonfile

    if path is None:
        return None
    data = jsonfile.read_json(path, f"{what} JSON")
    if not isinstance(data, dict):
        raise UserError(f"{what} {path}: not a JSON object")
    return data


def cmd_report(args) -> int:
    from virnucpro.report.render import write_report
    from virnucpro.report.results import load_results

    info, config = read_json(args.input_info, "--input-info"), read_json(args.config, "--config")
    best, scaling = read_json(args.best, "--best"), read_json(args.scaling, "--scaling")
    peers, previous = read_json(args.peers, "--peers"), read_json(args.compare_to, "--compare-to")
    ctx = write_report(
        load_results(args.results),
        info,
        config,
        best,
        args.html,
        args.text,
        args.summary,
        args.merged,
        args.workflow_dir,
        scaling,
        peers,
        (str(args.compare_to), previous) if previous is not None else None,
    )
    c = ctx["verdict_counts"]
    print(f"report: {args.html} ({c['PASS']} PASS, {c['FAIL']} FAIL, {c['N/A']} N/A)")
    return EXIT_OK


def _add_merge(sub) -> None:
    p = sub.add_parser(
        "merge-telemetry",
        help="merge per-rank telemetry into one JSON (elapsed = slowest rank)",
        **_help_style("virnucpro merge-telemetry --result results/production/ws2.run.json -o merged.json"),
    )
    p.add_argument("shards", nargs="*", type=Path, help="rank telemetry JSONs (or give --result)")
    p.add_argument("--result", type=Path, help="a run-point result JSON: merge the rank telemetry it lists")
    p.add_argument("-o", "--output", type=Path, required=True)


def merge_shards(args) -> list[Path]:
    """The shards to merge: those given, or those the result lists (the workflow's rule declares the result)."""
    if bool(args.shards) == bool(args.result):
        raise UserError("merge-telemetry: give rank telemetry files or --result, not both and not neither")
    if args.shards:
        return list(args.shards)
    result = read_json(args.result, "--result")
    shards = [Path(k["telemetry"]) for k in result.get("ranks") or []]
    if not shards:
        raise UserError(f"--result {args.result}: lists no rank telemetry (status {result.get('status')})")
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise UserError(f"--result {args.result}: rank telemetry missing: {', '.join(missing)}")
    return shards


def cmd_merge(args) -> int:
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.utils.telemetry import aggregate_telemetry_shards

    shards = merge_shards(args)
    merged = aggregate_telemetry_shards(shards)
    first = read_json(shards[0], "telemetry shard")["run_metadata"]
    write_json_atomic(
        args.output,
        {
            "run_metadata": {**first, "shards": [str(p) for p in shards]},
            "summary": merged["global_summary"],
            "per_shard_summary": merged["per_shard_summary"],
            "per_batch_metrics": merged["per_batch_metrics"],
        },
    )
    return EXIT_OK


def _add_scaling(sub) -> None:
    p = sub.add_parser(
        "scaling",
        help="scaling.json: speedups, projections at the target size and the GPU model",
        **_help_style("virnucpro scaling results/production/ws1.json results/production/ws2.json -o scaling.json"),
    )
    p.add_argument("results", nargs="+", type=Path, help="result JSONs of the production runs")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--min-efficiency", type=percentage, default=95.0)
    p.add_argument("--target-sequences", type=positive_int, default=6_000_000)
    p.add_argument("--max-hours", type=float, default=10.0, help="the time 'how many GPUs' answers for")


def cmd_scaling(args) -> int:
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.report.results import load_results
    from virnucpro.report.scaling import scaling_report

    if args.target_sequences < 1 or args.max_hours <= 0:
        raise UserError("scaling: --target-sequences and --max-hours must be positive")
    if args.output.is_dir():
        raise UserError(f"{args.output}: is a directory; -o names the scaling JSON to write")
    report = scaling_report(load_results(args.results), args.target_sequences, args.max_hours, args.min_efficiency)
    write_json_atomic(args.output, report)
    for r in report["rows"]:
        print(f"{r['world_size']} rank(s): {r['speedup']:.2f}x, {r['efficiency']:.1f} % efficiency")
    need = (report["model"].get("gpus_needed") or {}).get("fewest_gpus")
    if need:
        print(
            f"model: {need['gpus']} GPU(s) ({need['jobs']} job(s) x {need['gpus_per_job']}) finish "
            f"{args.target_sequences:,} sequences in {need['job_hours']:.2f} h"
        )
    return EXIT_OK


def _config_dict(cfg) -> dict:
    from dataclasses import asdict

    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}


def _shown_path(path: Path) -> str:
    return "<stdin>" if str(path) == "-" else str(Path(path).resolve())


def _stop_during_startup(signum, frame) -> None:
    raise SystemExit(EXIT_PREEMPTED)  # nothing computed yet, nothing to flush: "stopped, rerun to resume"


#: Commands that only turn files into files: an OSError there is about a path the user gave (exit 2).
FILE_COMMANDS = {"make-fasta", "sample", "analyse-run", "best-config", "report", "merge-telemetry", "scaling"}
FILE_COMMANDS |= {"shard", "gather", "embed-report"}
RESUMABLE = ("embed", "run-point", "embed-shard")


def _host_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or a shared library that could not be mapped (torch's import under `ulimit -v`)."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    text = str(exc)
    return isinstance(exc, (ImportError, OSError)) and ("failed to map segment" in text or "allocate memory" in text)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_during_startup)  # until `embed` installs its flushing handler
    command = None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
        if getattr(args, "handler", None):
            return args.handler(args)
        handlers = {
            "make-fasta": cmd_make_fasta,
            "embed": cmd_embed,
            "bench": cmd_bench,
            "run-point": cmd_run_point,
            "analyse-run": cmd_analyse_run,
            "sample": cmd_sample,
            "measure": cmd_measure,
            "best-config": cmd_best_config,
            "report": cmd_report,
            "merge-telemetry": cmd_merge,
            "scaling": cmd_scaling,
        }
        return handlers[command](args)
    except UserError as exc:
        print(f"virnucpro: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        resumable = "; checkpointed rows are kept, rerun to resume" if command in RESUMABLE else ""
        print(f"virnucpro: interrupted{resumable}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (MemoryError, ImportError, OSError) as exc:
        if _host_out_of_memory(exc):
            detail = str(exc).splitlines()[0] if str(exc) else ""
            print(
                f"virnucpro: out of memory ({exc.__class__.__name__}: {detail}; is a memory limit set, e.g. "
                f"ulimit -v?)",
                file=sys.stderr,
            )
            return EXIT_OOM
        if isinstance(exc, OSError) and command in FILE_COMMANDS:
            where = exc.filename2 or exc.filename
            print(f"virnucpro: error: {where}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
