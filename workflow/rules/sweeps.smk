# Stage 3: parameter sweeps, one time-boxed throughput measurement per point (a failed or OOM point is
# recorded, the workflow goes on), with a precision sweep one accuracy check per precision measured; then the
# best configuration (significant winners whose precision passes the accuracy gate) and its validation: the
# recommended settings measured again, in a job of their own, on the same workload as the baseline; with a winner,
# that job measures the baseline's settings too, windows alternating, and compares the two (`validation`).
import shlex


rule sweep_point:
    input:
        fasta="results/data/sweep.fasta",
    output:
        "results/sweeps/{group}/{point}.json",
    log:
        "results/logs/sweeps/{group}/{point}.log",
    benchmark:
        "results/benchmarks/sweeps/{group}/{point}.tsv"
    wildcard_constraints:
        group="|".join(SWEEPS),
        point=r"[^/.]+",
    conda:
        ENV
    threads: 2
    resources:
        **gpu_resources("gpu_job"),
    params:
        args=lambda wc: measure_args(SWEEPS[wc.group][wc.point]),
        label="{group}:{point}",
        group="{group}",
        compare="",  # the optimal validation's --params-from and --baseline, each after a space
    shell:
        "virnucpro measure {input.fasta:q} {params.args}{params.compare} --label {params.label:q} "
        "--group {params.group:q} --result {output:q} > {log:q} 2>&1"


# One precision against fair-esm fp32 on the weights the sweep measures: the gate a precision must pass to be
# recommended (cosine >= 0.999 for >= 99 % of sequences), and the report's accuracy next to its speed.
rule accuracy:
    input:
        checkpoint=config["model"]["checkpoint"] or [],
    output:
        "results/accuracy/{precision}.json",
    log:
        "results/logs/accuracy/{precision}.log",
    benchmark:
        "results/benchmarks/accuracy/{precision}.tsv"
    wildcard_constraints:
        precision="|".join(CONCRETE_PRECISIONS),
    conda:
        ENV
    threads: 2
    resources:
        **gpu_resources("gpu_job"),
    params:
        weights=ACCURACY_WEIGHTS,
        n=config["measure"]["accuracy_sequences"],
        budget=config["engine"]["token_budget"],
        device=config["engine"]["device"],
    shell:
        "virnucpro bench accuracy --precision {wildcards.precision} {params.weights} --num-sequences {params.n} "
        "--token-budget {params.budget} --device {params.device:q} -o {output:q} > {log:q} 2>&1"


rule best_config:
    input:
        results=SWEEP_RESULTS,
        accuracy=ACCURACY_RESULTS,
    output:
        best="results/sweeps/best.json",
        table="results/sweeps.tsv",
    log:
        "results/logs/sweeps/best_config.log",
    conda:
        ENV
    params:
        min_packing=config["targets"]["min_packing"],
        min_gain=config["measure"]["min_gain"],
        job_cv=config["measure"]["between_job_cv"],
        accuracy=lambda wc, input: files_option("--accuracy", input.accuracy),
    shell:
        "virnucpro best-config {input.results:q} {params.accuracy} -o {output.best:q} --tsv {output.table:q} "
        "--min-packing {params.min_packing} --min-gain {params.min_gain} "
        "--between-job-cv {params.job_cv} > {log:q} 2>&1"


use rule sweep_point as optimal_validation with:
    input:
        fasta="results/data/sweep.fasta",
        best=rules.best_config.output.best,
        baseline="results/sweeps/baseline/baseline.json",
    output:
        "results/sweeps/optimal.json",
    log:
        "results/logs/sweeps/optimal.log",
    benchmark:
        "results/benchmarks/sweeps/optimal.tsv"
    params:
        args=measure_args(),
        compare=lambda wc, input: (
            f" --params-from {shlex.quote(input.best)} --baseline {shlex.quote(input.baseline)}"
        ),
        label="optimal_validation",
        group="optimal",


# What to run: the winner once its validation confirmed it, else the baseline's settings (the `embed` target's
# settings with embed.use_best).
rule recommend:
    input:
        best=rules.best_config.output.best,
        validation=rules.optimal_validation.output,
        baseline="results/sweeps/baseline/baseline.json",
    output:
        "results/sweeps/recommended.json",
    log:
        "results/logs/sweeps/recommend.log",
    conda:
        ENV
    shell:
        "virnucpro recommend {input.best:q} --validation {input.validation:q} --baseline {input.baseline:q} "
        "-o {output:q} > {log:q} 2>&1"
