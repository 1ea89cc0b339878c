# Stage 3: parameter sweeps, one job per point (a failed or OOM point is recorded, the workflow goes on),
# then the best configuration and its validation on a larger workload.


rule sweep_point:
    input:
        "results/data/sweep.fasta",
    output:
        "results/sweeps/{group}/{point}.json",
    log:
        "results/logs/sweeps/{group}/{point}.log",
    benchmark:
        "results/benchmarks/sweeps/{group}/{point}.tsv"
    wildcard_constraints:
        group="|".join(SWEEPS),
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
        args=lambda wc: run_point_args(SWEEPS[wc.group][wc.point]),
    shell:
        "{params.cli} run-point {input} -o results/sweeps/{wildcards.group}/{wildcards.point} {params.args} "
        "--discard-embeddings --label {wildcards.group}:{wildcards.point} --group {wildcards.group} "
        "--result {output} > {log} 2>&1"


rule best_config:
    input:
        SWEEP_RESULTS,
    output:
        "results/sweeps/best.json",
    log:
        "results/logs/sweeps/best_config.log",
    conda:
        ENV
    params:
        cli=VIRNUCPRO,
        min_packing=config["targets"]["min_packing"],
    shell:
        "{params.cli} best-config {input} -o {output} --min-packing {params.min_packing} > {log} 2>&1"


rule optimal_validation:
    input:
        fasta="results/data/optimal.fasta",
        best="results/sweeps/best.json",
    output:
        "results/sweeps/optimal.json",
    log:
        "results/logs/sweeps/optimal.log",
    benchmark:
        "results/benchmarks/sweeps/optimal.tsv"
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
        "{params.cli} run-point {input.fasta} -o results/sweeps/optimal {params.args} --params-from {input.best} "
        "--discard-embeddings --label optimal_validation --group optimal --result {output} > {log} 2>&1"
