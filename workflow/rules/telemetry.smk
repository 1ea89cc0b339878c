# Stage 4 (local, cheap): each GPU job's raw telemetry analysed into its result (warm-up excluded, validity,
# projections), per-rank telemetry of each production run merged into one file, scaling.json (measured
# speedups, each run's projection at the target, the GPU model) over the production runs.


localrules:
    synthetic_fasta,
    input_info,
    workload_fasta,
    analyse_run,
    best_config,
    recommend,
    merge_telemetry,
    scaling,
    report,


rule analyse_run:
    input:
        "results/{job}.run.json",
    output:
        "results/{job}.json",
    log:
        "results/logs/analysis/{job}.log",
    wildcard_constraints:
        job=MEASURED,
    conda:
        ENV
    params:
        warmup_seconds=config["warmup"]["seconds"],
        warmup_batches=config["warmup"]["batches"],
        min_steady=config["warmup"]["min_steady_batches"],
        target=config["targets"]["target_sequences"],
    shell:
        "virnucpro analyse-run {input:q} -o {output:q} --warmup-seconds {params.warmup_seconds} "
        "--warmup-batches {params.warmup_batches} --min-steady-batches {params.min_steady} "
        "--target-sequences {params.target} > {log:q} 2>&1"


rule merge_telemetry:
    input:
        # the raw record lists its ranks' telemetry files (written by the same job): they are read through it
        rules.production.output[0],
    output:
        "results/telemetry/production_ws{n}.json",
    log:
        "results/logs/telemetry/merge_ws{n}.log",
    conda:
        ENV
    shell:
        "virnucpro merge-telemetry --result {input:q} -o {output:q} > {log:q} 2>&1"


rule scaling:
    input:
        expand("results/production/ws{n}.json", n=config["production"]["world_sizes"]),
    output:
        "results/production/scaling.json",
    log:
        "results/logs/telemetry/scaling.log",
    conda:
        ENV
    params:
        min_eff=config["targets"]["min_scaling_efficiency"],
        target=config["targets"]["target_sequences"],
        max_hours=config["targets"]["max_hours"],
    shell:
        "virnucpro scaling {input:q} -o {output:q} --min-efficiency {params.min_eff} "
        "--target-sequences {params.target} --max-hours {params.max_hours} > {log:q} 2>&1"
