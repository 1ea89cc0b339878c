"""The engine settings, defined once: name, default, help, type, and where else each one appears.

Everything else is derived from `SETTINGS`: the options of `embed`, `run-point` and `measure`, the fields of
`EmbedConfig` and its construction from parsed options, the options the workflow passes to its jobs
(`job_options`, used by workflow/rules/common.smk) and the knobs a sweep varies (`KNOBS`). What cannot be derived
(the config schema, config/config.yaml, config/README.md, README.md's option table) is checked against this module
by tests/test_settings.py. Adding a setting: one `Setting` here, the code that uses it, and that test's files when
the workflow configures it.

Stdlib only (the workflow imports it inside Snakemake's process, which may lack torch and numpy).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

from virnucpro.argtypes import device_name, nonempty, nonnegative_float, nonnegative_int, positive_int
from virnucpro import defaults

#: `Setting.workflow`: the key `engine.<name>` of the workflow's config, passed to every GPU job as its option.
OPTION = "option"
#: `Setting.workflow`: the key `engine.<name>`, which reaches the jobs through the shell prefix's environment.
ENVIRONMENT = "environment"


@dataclass(frozen=True)
class Setting:
    """One engine setting. `kind` is its value type (bool: an on/off flag); `parse` checks a command-line value."""

    name: str
    default: Any
    help: str
    kind: type = str
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    workflow: str | None = None  # OPTION, ENVIRONMENT, or None: not a key of the workflow config's `engine`
    tunable: bool = False  # a sweep varies it and the report shows it (KNOBS)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def annotation(self) -> str:
        return self.kind.__name__ + (" | None" if self.default is None else "")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """This setting as an option of `parser` (an on/off setting as a flag that turns it on)."""
        if self.kind is bool:
            parser.add_argument(self.flag, action="store_true", help=self.help)
            return
        extra = {"choices": list(self.choices)} if self.choices else {}
        if self.metavar:
            extra["metavar"] = self.metavar
        parser.add_argument(self.flag, type=self.parse, default=self.default, help=self.help, **extra)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "model",
        None,
        "fair-esm model name (default: the checkpoint's architecture, else esm2_t36_3B_UR50D)",
        parse=nonempty,
    ),
    Setting("checkpoint", None, "path to a fair-esm esm2_*.pt file", parse=nonempty),
    Setting(
        "random_weights", False, "random weights for throughput work only; recorded as 'weights: random'", kind=bool
    ),
    Setting("seed", 0, "seed of --random-weights (default %(default)s)", kind=int, parse=nonnegative_int),
    Setting(
        "precision",
        "auto",
        "auto = bf16 on CUDA, fp32 on CPU; fp8 = E4M3 linear layers (Hopper GPUs; check accuracy: bench accuracy)",
        choices=("auto", "fp32", "fp16", "bf16", "fp8"),
        tunable=True,  # sweeps.precision; a precision that fails the accuracy gate is never recommended
    ),
    Setting("device", "auto", "auto, cpu, cuda or cuda:N", parse=device_name, workflow=OPTION),
    Setting(
        "token_budget", 16384, "tokens per packed batch", kind=int, parse=positive_int, workflow=OPTION, tunable=True
    ),
    Setting(
        "buffer_size",
        5000,
        "sequences per packing lookahead buffer",
        kind=int,
        parse=positive_int,
        workflow=OPTION,
        tunable=True,
    ),
    Setting(
        "num_workers", 2, "DataLoader worker processes", kind=int, parse=nonnegative_int, workflow=OPTION, tunable=True
    ),
    Setting(
        "prefetch_factor",
        4,
        "batches prefetched per worker",
        kind=int,
        parse=positive_int,
        workflow=OPTION,
        tunable=True,
    ),
    Setting(
        "checkpoint_every",
        10000,
        "flush results to a checkpoint chunk every N sequences",
        kind=int,
        parse=positive_int,
        workflow=OPTION,
        tunable=True,
    ),
    Setting(
        "long_sequences",
        "truncate",
        "sequences over 1022 residues: truncate (counted, warned), refuse, or embed in overlapping 1022-residue "
        "windows (per-residue mean over windows, then mean over residues)",
        choices=("truncate", "error", "chunk"),
        workflow=OPTION,
    ),
    Setting(
        "window_overlap",
        256,
        "residues shared by consecutive windows with --long-sequences chunk, 0..1021",
        kind=int,
        parse=nonnegative_int,
        workflow=OPTION,
    ),
    Setting(
        "compile",
        "auto",
        "fuse the layers' memory-bound kernels (auto = on CUDA): Triton in bf16/fp16/fp8, torch.compile for fp32 "
        "(batches are then padded to the budget)",
        choices=("auto", "on", "off"),
        workflow=OPTION,
    ),
    Setting(
        "exact_gelu",
        False,
        "on CUDA fp16/bf16, compute ESM's erf gelu separately instead of cuBLASLt's fused bias+gelu "
        "epilogue (tanh form; ~4%% slower, same measured accuracy: docs/benchmarks/README.md)",
        kind=bool,
        workflow=OPTION,
    ),
    Setting("repr_layer", -1, "layer to pool (-1 = last, fair-esm style)", kind=int, parse=int),
    Setting(
        "output_dtype",
        "float32",
        "dtype of the stored embeddings (float16 halves the file; adds ~2e-4 relative L2)",
        choices=("float32", "float16"),
    ),
    Setting(
        "overwrite",
        False,
        "discard an existing result or partial state in OUTDIR (of any configuration) and start anew",
        kind=bool,
    ),
    Setting(
        "compile_cache",
        None,
        "persistent Triton/torch.compile cache shared by jobs (default: under /tmp)",
        metavar="DIR",
        workflow=ENVIRONMENT,
    ),
    Setting(
        "target_sequences",
        defaults.TARGET_SEQUENCES,
        "sequence count the runtime projection is for",
        kind=int,
        parse=positive_int,
    ),
    Setting(
        "world_size",
        None,
        "processes, one per device (default: every visible CUDA device, 1 on CPU)",
        kind=int,
        parse=positive_int,
        tunable=True,
    ),
    Setting(
        "progress_interval",
        10.0,
        "seconds between progress lines when stderr is not a terminal (0: every batch)",
        kind=float,
        parse=nonnegative_float,
        workflow=ENVIRONMENT,
    ),
)

BY_NAME = {s.name: s for s in SETTINGS}
#: The precisions `auto` stands for, each a computation the engine can run (and `bench accuracy` can check).
CONCRETE_PRECISIONS = tuple(p for p in BY_NAME["precision"].choices if p != "auto")


def auto_precision(device_type: str) -> str:
    """What `--precision auto` runs on a device of `device_type` (the engine, and the workflow's plan of which
    precisions to check for accuracy, resolve it here)."""
    return "bf16" if device_type == "cuda" else "fp32"


#: The engine settings a sweep varies and the report shows.
KNOBS = tuple(s.name for s in SETTINGS if s.tunable)


def effective_knobs(params: dict) -> dict:
    """`params`' knobs as the engine runs them: without DataLoader workers `prefetch_factor` does nothing
    (`data.loader.make_loader`), so two points differing only there run the same configuration."""
    knobs = {k: params.get(k) for k in KNOBS if k != "world_size"}
    if not knobs.get("num_workers"):
        knobs["prefetch_factor"] = None
    return knobs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting as an option of `parser`, in definition order."""
    for s in SETTINGS:
        s.add_to(parser)


def values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings' values among parsed options (EmbedConfig's keyword arguments)."""
    return {s.name: getattr(args, s.name) for s in SETTINGS}


def job_options(engine: dict) -> list[tuple[str, Any]]:
    """(flag, value) of each setting the workflow passes to its jobs, from the config's `engine` section; an
    on/off setting is its flag alone (value None) when on and absent when off."""
    pairs = []
    for s in SETTINGS:
        if s.workflow != OPTION:
            continue
        if s.kind is bool:
            pairs += [(s.flag, None)] if engine[s.name] else []
        else:
            pairs.append((s.flag, engine[s.name]))
    return pairs


def with_settings(cls: type) -> type:
    """Class decorator, applied before @dataclass: every setting as a field with its default (metadata
    `setting`), after the class's own fields without a default and before those with one."""
    own = dict(cls.__dict__.get("__annotations__", {}))
    required = {k: v for k, v in own.items() if k not in cls.__dict__}
    rest = {k: v for k, v in own.items() if k not in required}
    clash = set(own) & set(BY_NAME)
    if clash:
        raise TypeError(f"{cls.__name__} redefines settings: {', '.join(sorted(clash))}")
    cls.__annotations__ = {**required, **{s.name: s.annotation for s in SETTINGS}, **rest}
    for s in SETTINGS:
        setattr(cls, s.name, field(default=s.default, metadata={"setting": s}))
    return cls
