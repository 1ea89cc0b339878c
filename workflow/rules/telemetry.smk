# Stage 4: per-rank telemetry of each production run merged into one file; scaling over the 1-rank run.


rule merge_telemetry:
    input:
        "results/production/ws{n}.json",
    output:
        "results/telemetry/production_ws{n}.json",
    log:
        "results/logs/telemetry/merge_ws{n}.log",
    conda:
        ENV
    params:
        cli=VIRNUCPRO,
        shards=lambda wc: " ".join(
            f"results/production/ws{wc.n}/telemetry/telemetry_rank{r}.json"
            for r in range(int(wc.n))
        ),
    shell:
        "{params.cli} merge-telemetry {params.shards} -o {output} > {log} 2>&1"


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
    shell:
        "{params.cli} scaling {input} -o {output} --min-efficiency {params.min_eff} > {log} 2>&1"
