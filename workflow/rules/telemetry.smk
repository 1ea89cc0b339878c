# Stage 4: per-rank telemetry of each production run merged into one file; scaling.json (measured speedups,
# each run's projection at the target, the GPU model) over the production runs.


rule merge_telemetry:
    input:
        # the result lists its ranks' telemetry files (written by the same job): they are read through it
        "results/production/ws{n}.json",
    output:
        "results/telemetry/production_ws{n}.json",
    log:
        "results/logs/telemetry/merge_ws{n}.log",
    conda:
        ENV
    params:
        cli=VIRNUCPRO,
    shell:
        "{params.cli} merge-telemetry --result {input} -o {output} > {log} 2>&1"


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
        cli=VIRNUCPRO,
        min_eff=config["targets"]["min_scaling_efficiency"],
        target=config["targets"]["target_sequences"],
        max_hours=config["targets"]["max_hours"],
    shell:
        "{params.cli} scaling {input} -o {output} --min-efficiency {params.min_eff} "
        "--target-sequences {params.target} --max-hours {params.max_hours} > {log} 2>&1"
