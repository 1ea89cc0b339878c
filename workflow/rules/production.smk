# Stage 2: the production runs (one per world size), the small profiling run, checkpoint overhead on vs off:
# `virnucpro run-point` jobs made from the `production` template, each writing a raw `.run.json` that the local
# `analyse_run` (telemetry.smk) turns into its result.


rule production:
    input:
        fasta=INPUT_FASTA,
    output:
        "results/production/ws{n}.run.json",
    log:
        "results/logs/production/ws{n}.log",
    benchmark:
        "results/benchmarks/production/ws{n}.tsv"
    wildcard_constraints:
        n=r"\d+",
    conda:
        ENV
    threads: 2
    resources:
        **gpu_resources("production"),
    params:
        args=lambda wc: run_point_args(world_size=int(wc.n)),
        outdir=run_outdir,
        label="production_ws{n}",
        group="production",
        extra="--strict",  # a failed production run fails the workflow (with its log)
    shell:
        "virnucpro run-point {input.fasta:q} -o {params.outdir:q} {params.args} {params.extra} "
        "--label {params.label:q} --group {params.group:q} --result {output:q} > {log:q} 2>&1"


use rule production as subset_profiling with:
    input:
        fasta="results/data/subset.fasta",
    output:
        "results/profiling/subset.run.json",
    log:
        "results/logs/profiling/subset.log",
    benchmark:
        "results/benchmarks/profiling/subset.tsv"
    resources:
        **gpu_resources("gpu_job"),
    params:
        args=run_point_args(),
        outdir=run_outdir,
        label="subset_profiling",
        group="subset",
        extra="--discard-embeddings",


use rule production as checkpoint_overhead with:
    input:
        fasta="results/data/checkpoint.fasta",
    output:
        "results/checkpoint/checkpoint_{mode}.run.json",
    log:
        "results/logs/checkpoint/{mode}.log",
    benchmark:
        "results/benchmarks/checkpoint/{mode}.tsv"
    wildcard_constraints:
        mode="on|off",
    resources:
        **gpu_resources("gpu_job"),
    params:
        # "off": one chunk at the very end, i.e. no checkpoint while the run goes
        args=lambda wc: run_point_args(
            {
                "checkpoint_every": (
                    config["workloads"]["checkpoint_every"]
                    if wc.mode == "on"
                    else config["workloads"]["checkpoint"] + 1
                )
            }
        ),
        outdir=run_outdir,
        label="checkpoint_{mode}",
        group="checkpoint",
        extra="--discard-embeddings",
