# Helpers shared by the rules: the input FASTA, the sweep points, the `virnucpro` command line of a job, the one
# definition of a GPU job's Slurm resources.
import functools
import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

SCRIPTS = os.path.abspath(os.path.join(workflow.basedir, "..", "scripts"))
# The engine settings' one definition and the embed target's input check (stdlib only: Snakemake's environment
# may lack torch and numpy).
sys.path.insert(0, SCRIPTS)
from virnucpro.pipeline.input_check import input_changed_unseen
from virnucpro.settings import CONCRETE_PRECISIONS, auto_precision, job_options

# Jobs run the package from this checkout; under --sdm conda with the env's python, else with Snakemake's own.
PYTHON = (
    "python"
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    else sys.executable
)


def shell_literal(value):
    """`value` shell-quoted, its braces doubled: Snakemake formats the shell prefix like a command."""
    return shlex.quote(str(value)).replace("{", "{{").replace("}", "}}")


def compile_cache_exports(directory):
    """engine.compile_cache as torch's and Triton's cache variables (absolute: a job may start elsewhere); a
    place to keep compiled kernels changes no result, so it reruns nothing."""
    if not directory:
        return ""
    path = os.path.abspath(os.path.expanduser(directory))
    return (
        f"export TORCHINDUCTOR_CACHE_DIR={shell_literal(os.path.join(path, 'inductor'))} "
        f"TRITON_CACHE_DIR={shell_literal(os.path.join(path, 'triton'))}; "
    )


# `virnucpro` is a shell function defined in every job's shell prefix, so that neither the checkout's path nor
# the interpreter appears in a rule's params or command (moving the checkout or the environment reruns nothing);
# the progress interval (it only shapes job logs) and the report's git checkout travel the same way.
shell.prefix(
    "set -euo pipefail; "
    f"virnucpro() {{{{ PYTHONPATH={shell_literal(SCRIPTS)}${{{{PYTHONPATH:+:$PYTHONPATH}}}} "
    f'{shell_literal(PYTHON)} -m virnucpro.cli "$@"; }}}}; '
    f"export VIRNUCPRO_PROGRESS_INTERVAL={float(config['engine']['progress_interval'])} "
    f"VIRNUCPRO_WORKFLOW_DIR={shell_literal(workflow.basedir)}; "
    + compile_cache_exports(config["engine"]["compile_cache"])
)
ENV = "../../envs/virnucpro.yaml"


def production_fasta():
    """The user's FASTA (config, then $VIRNUCPRO_PRODUCTION_FASTA), or None for the synthetic workload."""
    path = config["input"]["fasta"]
    origin = "input.fasta in the config"
    if not path and os.getenv("VIRNUCPRO_PRODUCTION_FASTA"):
        path = os.getenv("VIRNUCPRO_PRODUCTION_FASTA")
        origin = "VIRNUCPRO_PRODUCTION_FASTA"
    if path and not os.path.isfile(path):
        raise ValueError(
            f"{origin} names {path!r}, which is not a file (unset it to use the synthetic workload)"
        )
    if path and ("<" in path or ">" in path):
        raise ValueError(
            f"{origin} names {path!r}: Snakemake reads <...> in a path as a path variable; "
            "link the file under a name without < or >"
        )
    return path


PRODUCTION_FASTA = production_fasta()
INPUT_FASTA = PRODUCTION_FASTA or "results/data/synthetic.fasta"


def sweep_points():
    """{group: {point name: engine settings}}: one job per point (baseline = the engine section)."""
    s = config["sweeps"]
    points = {"baseline": {"baseline": {}}}
    points["dataloader"] = {
        f"w{w}_p{p}": {"num_workers": w, "prefetch_factor": p}
        for w in s["dataloader"]["num_workers"]
        for p in s["dataloader"]["prefetch_factor"]
    }
    points["packing"] = {
        f"b{b}_buf{n}": {"token_budget": b, "buffer_size": n}
        for b in s["packing"]["token_budget"]
        for n in s["packing"]["buffer_size"]
    }
    points["interaction"] = {
        f"w{w}_b{b}": {"num_workers": w, "token_budget": b} for w, b in s["interaction"]
    }
    points["precision"] = {p: {"precision": p} for p in s["precision"]}
    return points


SWEEPS = sweep_points()
SWEEP_RESULTS = [
    f"results/sweeps/{group}/{name}.json"
    for group, names in SWEEPS.items()
    for name in names
]
# The results (under results/) that `analyse_run` derives from a run-point job's raw `.run.json` (sweep points
# and the optimal validation are `virnucpro measure` jobs, which write their results themselves).
MEASURED = "|".join(
    [
        r"production/ws\d+",
        r"profiling/subset",
        r"checkpoint/checkpoint_(on|off)",
    ]
)


def engine_args(overrides=None, world_size=1):
    """The model and engine options of a GPU job: config model and engine (the settings that
    virnucpro.settings marks as job options), then the point overrides.

    Only what the job computes with: analysis settings (warm-up, projections, thresholds) are applied by local
    jobs, so changing them reruns no GPU job; the progress interval reaches jobs through the shell prefix. Every
    value is shell-quoted.
    """
    m, e = config["model"], {**config["engine"], **(overrides or {})}
    args = [
        *(
            [("--model", m["name"])] if m["name"] else []
        ),  # empty: the checkpoint's own architecture
        ("--precision", e.pop("precision", m["precision"])),  # a precision point's own
        ("--seed", m["seed"]),
    ]
    if m["checkpoint"]:
        args.append(("--checkpoint", m["checkpoint"]))
    elif m["random_weights"]:
        args.append(("--random-weights", None))
    args += [*job_options(e), ("--world-size", world_size)]
    return " ".join(
        flag if value is None else f"{flag} {shlex.quote(str(value))}"
        for flag, value in args
    )


def concrete_precision(precision):
    """`precision` as the jobs will run it on `engine.device` (auto: bf16 on CUDA, fp32 on CPU), or None when
    both are auto: then it is chosen where the job runs, which the plan cannot know."""
    device = config["engine"]["device"]
    if precision != "auto":
        return precision
    return None if device == "auto" else auto_precision(device.split(":")[0])


def accuracy_precisions():
    """The precisions checked for accuracy: each of `sweeps.precision` and the baseline's (when the plan can
    know it); none without a precision sweep."""
    swept = config["sweeps"]["precision"]
    baseline = concrete_precision(config["model"]["precision"])
    return sorted(set(swept) | {baseline} - {None}) if swept else []


def accuracy_weights():
    """The `bench accuracy` options naming the weights the sweep measures: the checkpoint, else the same random
    weights (architecture and seed). Weights from the torch hub cache cannot be named to it: refused.
    """
    m = config["model"]
    if m["checkpoint"]:
        return f"--checkpoint {shlex.quote(m['checkpoint'])}"
    if not m["random_weights"] or not m["name"]:
        raise WorkflowError(
            "sweeps.precision checks each precision's accuracy on the weights the sweep measures: set "
            "model.checkpoint (for fair-esm weights, the .pt file in the torch hub cache) or "
            "model.random_weights: true with model.name"
        )
    return f"--model {shlex.quote(m['name'])} --seed {int(m['seed'])}"


ACCURACY_RESULTS = [f"results/accuracy/{p}.json" for p in accuracy_precisions()]
ACCURACY_WEIGHTS = accuracy_weights() if ACCURACY_RESULTS else None


def files_option(flag, files):
    """`flag` followed by the shell-quoted `files`, or nothing when there are none (an optional input list)."""
    return f"{flag} {' '.join(shlex.quote(str(f)) for f in files)}" if files else ""


def run_outdir(wildcards, output):
    """An embedding job's OUTDIR: its raw record's path without `.run.json`."""
    return output[0].removesuffix(".run.json")


def run_point_args(overrides=None, world_size=1):
    """The `virnucpro run-point` options of an embedding job (production, profiling, checkpoint runs): the
    engine's only; its warm-up and projections are `analyse_run`'s."""
    return engine_args(overrides, world_size)


def measure_args(overrides=None):
    """The `virnucpro measure` options of a throughput measurement (sweep points, optimal validation): no
    projection target (the report projects the rates), so that changing `targets` reruns no GPU job.
    """
    p = config["measure"]
    return (
        f"{engine_args(overrides)} "
        f"--seconds {p['seconds']} --repeats {p['repeats']} "
        f"--warmup-window {p['warmup_window_seconds']} --warmup-max {p['warmup_max_seconds']} "
        f"--stable-tolerance {p['stable_tolerance']}"
    )


def gpu_resources(kind, count=None):
    """The Slurm requests of an embedding job of `kind` (gpu_job, production or embed): one node, `count` GPUs
    (else the `n` wildcard, else 1), the configured partition and GPU model, runtime and memory scaled by the
    attempt.
    """
    r = config["resources"]
    minutes = r.get(kind, {}).get("runtime_minutes", r["gpu_job"]["runtime_minutes"])

    def gpus(wildcards):
        return count or int(getattr(wildcards, "n", 1))

    res = {
        "gpu": gpus,
        "nodes": 1,  # all GPUs of a job on one node: the ranks are processes of one launcher
        "cpus_per_gpu": r["gpu_job"]["cpus_per_gpu"],
        "runtime": lambda wildcards, attempt: minutes * attempt,
        "mem_mb": lambda wildcards, attempt: r["gpu_job"]["mem_mb_per_gpu"]
        * gpus(wildcards)
        * attempt,
    }
    for key in ("slurm_partition", "gpu_model"):
        if r["gpu_job"].get(key):
            res[key] = r["gpu_job"][key]
    return res


onstart:
    if (
        workflow.executor_plugin
        and workflow.executor_plugin.name == "slurm"
        and not config.get("site")
    ):
        raise WorkflowError(
            "the Slurm executor runs with config 'site' unset, so config/cluster.yaml was not loaded: a --config "
            "on the command line replaces profiles/slurm's `config: [site=cluster]`; add site=cluster "
            "(or site=local to run the CPU configuration on Slurm on purpose)"
        )


def compare_to():
    """The previous summary.json of `compare_to` (an input of the report), or [] when none is set."""
    path = config.get("compare_to")
    if not path:
        return []
    if os.path.realpath(path) == os.path.realpath("results/summary.json"):
        raise ValueError(
            "compare_to is this run's own results/summary.json: copy the previous one elsewhere first"
        )
    if not os.path.isfile(path):
        raise ValueError(f"compare_to names {path!r}, which is not a file")
    return path


COMPARE_TO = compare_to()


def embed_input(wildcards):
    """The input FASTA of the split and of the `embed` target, checked once per run (`checked_embed_input`)."""
    return checked_embed_input()


@functools.cache
def checked_embed_input():
    """The input FASTA of the split, once the target's ways of losing a run are ruled out: random weights
    (meaningless embeddings) unless allowed, a results/embed that holds another input's embedding (a
    forgotten VIRNUCPRO_PRODUCTION_FASTA would re-embed the synthetic workload over hours of GPU work), and
    an input changed without a newer modification time (Snakemake would keep the old embeddings).
    """
    m = config["model"]
    if (
        m["random_weights"]
        and not m["checkpoint"]
        and not config["embed"]["allow_random_weights"]
    ):
        raise WorkflowError(
            "the embed target would embed with random weights (model.random_weights: true, no "
            "model.checkpoint): the embeddings would be meaningless. Set model.checkpoint, or "
            "embed.allow_random_weights: true to try the path"
        )
    manifest = "results/embed/manifest.json"
    if os.path.isfile(manifest):
        with open(manifest) as fh:
            previous = json.load(fh).get("input")
        if previous and os.path.abspath(previous) != os.path.abspath(INPUT_FASTA):
            raise WorkflowError(
                f"results/embed holds the embedding of {previous}, not of {INPUT_FASTA} (is input.fasta or "
                "VIRNUCPRO_PRODUCTION_FASTA set as for that run?); move or delete results/embed to embed "
                "another input"
            )
        changed = input_changed_unseen(manifest, INPUT_FASTA)
        if changed:
            raise WorkflowError(changed)
    return INPUT_FASTA
