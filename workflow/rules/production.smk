# Stage 2: the production runs (one per world size), the small profiling run, checkpoint overhead on vs off.


rule production:
    input:
        INPUT_FASTA,
    output:
        "results/production/ws{n}.json",
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
        gpu=lambda wc: int(wc.n),
        cpus_per_gpu=config["resources"]["gpu_job"]["cpus_per_gpu"],
        runtime=gpu_resources("production")[0],
        mem_mb=gpu_resources("production")[1],
    params:
        cli=VIRNUCPRO,
        args=lambda wc: run_point_args(world_size=int(wc.n)),
        outdir="results/production/ws{n}",
    shell:
        "{params.cli} run-point {input:q} -o {params.outdir} {params.args} --strict "
        "--label production_ws{wildcards.n} --group production --result {output} > {log} 2>&1"


rule subset_profiling:
    input:
        "results/data/subset.fasta",
    output:
        "results/profiling/subset.json",
    log:
        "results/logs/profiling/subset.log",
    benchmark:
        "results/benchmarks/profiling/subset.tsv"
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
        cpus_per_gpu=config["resources"]["gpu_job"]["cpus_per_gpu"],
        runtime=gpu_resources("gpu_job")[0],
        mem_mb=gpu_resources("gpu_job")[1],
    params:
        cli=VIRNUCPRO,
        args=run_point_args(),
    shell:
        "{params.cli} run-point {input} -o results/profiling/subset {params.args} --discard-embeddings "
        "--label subset_profiling --group subset --result {output} > {log} 2>&1"


rule checkpoint_overhead:
    input:
        "results/data/checkpoint.fasta",
    output:
        "results/checkpoint/checkpoint_{mode}.json",
    log:
        "results/logs/checkpoint/{mode}.log",
    benchmark:
        "results/benchmarks/checkpoint/{mode}.tsv"
    wildcard_constraints:
        mode="on|off",
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
        cpus_per_gpu=config["resources"]["gpu_job"]["cpus_per_gpu"],
        runtime=gpu_resources("gpu_job")[0],
        mem_mb=gpu_resources("gpu_job")[1],
    params:
        cli=VIRNUCPRO,
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
    shell:
        "{params.cli} run-point {input} -o results/checkpoint/{wildcards.mode} {params.args} "
        "--discard-embeddings --label checkpoint_{wildcards.mode} --group checkpoint --result {output} "
        "> {log} 2>&1"
