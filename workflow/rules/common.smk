# Helpers shared by the rules: the input FASTA, the sweep points, the `virnucpro` command line of a job.
import os
import sys

from snakemake.settings.types import DeploymentMethod

SCRIPTS = os.path.abspath(os.path.join(workflow.basedir, "..", "scripts"))
# Jobs run the package from this checkout; under --sdm conda with the env's python, else with Snakemake's own.
PYTHON = (
    "python"
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    else sys.executable
)
VIRNUCPRO = (
    f"PYTHONPATH={SCRIPTS}${{PYTHONPATH:+:$PYTHONPATH}} {PYTHON} -m virnucpro.cli"
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
    e, s = config["engine"], config["sweeps"]
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
    return points


SWEEPS = sweep_points()
SWEEP_RESULTS = [
    f"results/sweeps/{group}/{name}.json"
    for group, names in SWEEPS.items()
    for name in names
]


def engine_args(overrides=None, world_size=1):
    """The model and engine options of a job: config model and engine, then the point overrides."""
    m, e = config["model"], {**config["engine"], **(overrides or {})}
    args = [
        f"--model {m['name']}",
        f"--precision {m['precision']}",
        f"--seed {m['seed']}",
    ]
    if m["checkpoint"]:
        args.append(f"--checkpoint {m['checkpoint']}")
    elif m["random_weights"]:
        args.append("--random-weights")
    args += [
        f"--device {e['device']}",
        f"--token-budget {e['token_budget']}",
        f"--buffer-size {e['buffer_size']}",
        f"--num-workers {e['num_workers']}",
        f"--prefetch-factor {e['prefetch_factor']}",
        f"--checkpoint-every {e['checkpoint_every']}",
        f"--compile {e['compile']}",
        *(["--exact-gelu"] if e["exact_gelu"] else []),
        f"--progress-interval {e['progress_interval']}",
        f"--world-size {world_size}",
        f"--target-sequences {config['targets']['target_sequences']}",
    ]
    return " ".join(args)


def run_point_args(overrides=None, world_size=1):
    """The `virnucpro run-point` options of an embedding job (production, profiling, checkpoint runs)."""
    w = config["warmup"]
    return (
        f"{engine_args(overrides, world_size)} "
        f"--warmup-seconds {w['seconds']} --warmup-batches {w['batches']}"
    )


def measure_args(overrides=None):
    """The `virnucpro measure` options of a throughput measurement (sweep points, optimal validation)."""
    p = config["measure"]
    return (
        f"{engine_args(overrides)} --seconds {p['seconds']} --repeats {p['repeats']} "
        f"--warmup-window {p['warmup_window_seconds']} --warmup-max {p['warmup_max_seconds']} "
        f"--stable-tolerance {p['stable_tolerance']}"
    )


def gpu_resources(kind):
    """Slurm requests for an embedding job of `kind` (gpu_job or production), scaled by the attempt."""
    r = config["resources"]

    def runtime(wildcards, attempt):
        minutes = (
            r[kind]["runtime_minutes"]
            if kind in r and "runtime_minutes" in r[kind]
            else 60
        )
        return minutes * attempt

    def mem_mb(wildcards, attempt):
        return (
            r["gpu_job"]["mem_mb_per_gpu"] * int(getattr(wildcards, "n", 1)) * attempt
        )

    return runtime, mem_mb


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
