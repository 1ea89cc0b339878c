# Stage 5: the report: results/report.html (self-contained), report.txt and summary.json, all three rendered
# from one set of verdicts; it reads scaling.json and best.json (never recomputes them), and the optional peers
# comparison and previous summary.json (compare_to) when the config asks for them.
import json
import shlex


rule report:
    input:
        production=expand(
            "results/production/ws{n}.json", n=config["production"]["world_sizes"]
        ),
        merged=expand(
            "results/telemetry/production_ws{n}.json",
            n=config["production"]["world_sizes"],
        ),
        scaling=rules.scaling.output[0],
        sweeps=SWEEP_RESULTS,
        optimal=rules.optimal_validation.output[0],
        best=rules.best_config.output.best,
        subset="results/profiling/subset.json",
        checkpoint=expand(
            "results/checkpoint/checkpoint_{mode}.json", mode=["on", "off"]
        ),
        info=rules.input_info.output[0],
        accuracy=ACCURACY_RESULTS,
        peers=PEERS_RESULT,
        compare_to=COMPARE_TO,
    output:
        html="results/report.html",
        text="results/report.txt",
        summary="results/summary.json",
        config="results/config.json",
    log:
        "results/logs/report.log",
    conda:
        ENV
    params:
        config=json.dumps(config),
        peers=lambda wc, input: (
            f"--peers {shlex.quote(input.peers)}" if input.peers else ""
        ),
        accuracy=lambda wc, input: files_option("--accuracy", input.accuracy),
        compare=lambda wc, input: (
            f"--compare-to {shlex.quote(input.compare_to)}" if input.compare_to else ""
        ),
    shell:
        "echo {params.config:q} > {output.config:q} && "
        "virnucpro report {input.production:q} {input.sweeps:q} {input.optimal:q} {input.subset:q} "
        "{input.checkpoint:q} --input-info {input.info:q} --config {output.config:q} --best {input.best:q} "
        "--scaling {input.scaling:q} {params.accuracy} {params.peers} {params.compare} "
        "--merged {input.merged:q} --html {output.html:q} --text {output.text:q} --summary {output.summary:q} "
        '--workflow-dir "$VIRNUCPRO_WORKFLOW_DIR" > {log:q} 2>&1'
