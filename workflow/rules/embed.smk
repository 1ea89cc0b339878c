# The `embed` target (`snakemake embed`, `snakemake --profile profiles/slurm embed`): the input FASTA split into
# embed.shards contiguous, token-balanced shards; one GPU job per shard (`virnucpro embed-shard`: a retried or
# requeued job resumes from its checkpoints, which live in the shard's directory, not in a declared output, so
# Snakemake never deletes them); then, locally, the gather (ids + a virtual dataset over the shards' rows,
# verified against the split's manifest) and a production report.
import os
import shlex

EMBED = config["embed"]
EMBED_SHARDS = [f"results/embed/shards/{k}" for k in range(EMBED["shards"])]
# with use_best, every shard job runs the recommended configuration (the sweep's winner once its validation
# confirmed it, else the baseline's settings), so the target runs the sweeps and the validation first
EMBED_BEST = "results/sweeps/recommended.json" if EMBED["use_best"] else []


localrules:
    embed_split,
    embed_gather,
    embed_report,
    embed,


rule embed_split:
    input:
        embed_input,
    output:
        manifest="results/embed/manifest.json",
        shards=expand("results/embed/input/{k}.fasta", k=range(EMBED["shards"])),
    log:
        "results/logs/embed/split.log",
    conda:
        ENV
    params:
        shards=EMBED["shards"],
        outdir=lambda wc, output: os.path.dirname(output.shards[0]),
        # balance by the windows' tokens when the shard jobs embed long sequences in windows; refuse long ones
        # here, before any shard job runs, when the shard jobs would refuse them
        long_sequences={
            "chunk": f"--window-overlap {config['engine']['window_overlap']}",
            "error": "--refuse-long",
        }.get(config["engine"]["long_sequences"], ""),
        # the shard jobs' budget, when the split can know it (with use_best it comes from the sweeps)
        budget=(
            ""
            if EMBED["use_best"]
            else f"--token-budget {config['engine']['token_budget']}"
        ),
    shell:
        "virnucpro shard {input:q} --shards {params.shards} -o {params.outdir:q} "
        "--manifest {output.manifest:q} {params.long_sequences} {params.budget} > {log:q} 2>&1"


rule embed_shard:
    input:
        fasta="results/embed/input/{k}.fasta",
        best=EMBED_BEST,
    output:
        # both written last (the rows are renamed into place, then the record): a failed attempt leaves neither,
        # and its checkpoints (results/embed/shards/{k}/.partial) stay for the retry
        h5="results/embed/shards/{k}/embeddings.h5",
        record="results/embed/shards/{k}/job.json",
    log:
        "results/logs/embed/shard_{k}.log",
    wildcard_constraints:
        k=r"\d+",
    conda:
        ENV
    threads: 2
    resources:
        **gpu_resources("embed", EMBED["gpus_per_job"]),
    params:
        args=engine_args(world_size=EMBED["gpus_per_job"]),
        best=lambda wc, input: (
            f"--params-from {shlex.quote(input.best)}" if input.best else ""
        ),
        outdir=lambda wc, output: os.path.dirname(output.h5),
        # a shard that reruns makes the gathered file (a virtual dataset over the shards' files) and its
        # report stale: they go first, so that nothing half-updated reads as the result
        stale=[
            "results/embed/embeddings.h5",
            "results/embed/report.html",
            "results/embed/summary.json",
        ],
    shell:
        # Snakemake deletes the log before each attempt (a retry too): each attempt appends its own log to the
        # shard's attempts.log when it ends, so the reason of every failed or preempted try stays readable; the
        # trap keeps this shell alive on Slurm's SIGTERM until the job has flushed its checkpoints and exited
        "rm -f {params.stale:q} && mkdir -p {params.outdir:q} && trap true TERM INT && rc=0 && "
        "virnucpro embed-shard {input.fasta:q} -o {params.outdir:q} {params.args} {params.best} "
        "--record {output.record:q} > {log:q} 2>&1 || rc=$?; "
        '{{ echo "=== attempt ended $(date -u +%FT%TZ), exit $rc, Slurm job ${{SLURM_JOB_ID:-none}}"; cat {log:q}; }} '
        ">> {params.outdir:q}/attempts.log; exit $rc"


rule embed_gather:
    input:
        manifest="results/embed/manifest.json",
        shards=expand("{d}/job.json", d=EMBED_SHARDS),
        rows=expand("{d}/embeddings.h5", d=EMBED_SHARDS),  # what the virtual dataset maps
    output:
        "results/embed/embeddings.h5",
    log:
        "results/logs/embed/gather.log",
    conda:
        ENV
    params:
        dirs=lambda wc, input: [os.path.dirname(f) for f in input.shards],
    shell:
        "virnucpro gather {input.manifest:q} {params.dirs:q} -o {output:q} > {log:q} 2>&1"


rule embed_report:
    input:
        gathered="results/embed/embeddings.h5",
        manifest="results/embed/manifest.json",
        shards=expand("{d}/job.json", d=EMBED_SHARDS),
        best=EMBED_BEST,
    output:
        html="results/embed/report.html",
        summary="results/embed/summary.json",
    log:
        "results/logs/embed/report.log",
    conda:
        ENV
    params:
        dirs=lambda wc, input: [os.path.dirname(f) for f in input.shards],
        gpus=EMBED["gpus_per_job"],
        best=lambda wc, input: f"--best {shlex.quote(input.best)}" if input.best else "",
    shell:
        "virnucpro embed-report {input.manifest:q} {params.dirs:q} --gathered {input.gathered:q} {params.best} "
        "--gpus-per-job {params.gpus} --html {output.html:q} --summary {output.summary:q} > {log:q} 2>&1"


# The target also names the shards' files and the input: Snakemake does not redo a missing intermediate file
# (a deleted shard would read as NaN rows through the gathered file) when the files after it exist, and it
# evaluates the input checks of embed_input (another input, a silently changed one) only for jobs it considers.
rule embed:
    input:
        "results/embed/embeddings.h5",
        "results/embed/report.html",
        expand("{d}/{f}", d=EMBED_SHARDS, f=("embeddings.h5", "job.json")),
        embed_input,
