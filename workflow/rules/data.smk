# Stage 1: the input FASTA (synthetic, or the user's production file) and the sampled workloads.


rule synthetic_fasta:
    output:
        "results/data/synthetic.fasta",
    log:
        "results/logs/data/synthetic_fasta.log",
    conda:
        ENV
    params:
        n=config["input"]["synthetic"]["num_sequences"],
        seed=config["input"]["synthetic"]["seed"],
        profile=config["input"]["synthetic"]["profile"],
    shell:
        "virnucpro make-fasta -o {output:q} --num-sequences {params.n} --seed {params.seed} "
        "--profile {params.profile} > {log:q} 2>&1"


rule input_info:
    input:
        INPUT_FASTA,
    output:
        "results/data/input.json",
    log:
        "results/logs/data/input_info.log",
    conda:
        ENV
    params:
        source="production" if PRODUCTION_FASTA else "synthetic",
        synthetic=(
            ""
            if PRODUCTION_FASTA
            else f"--profile {config['input']['synthetic']['profile']} "
            f"--profile-seed {config['input']['synthetic']['seed']}"
        ),
    shell:
        "virnucpro sample {input:q} --info {output:q} --source {params.source} {params.synthetic} > {log:q} 2>&1"


rule workload_fasta:
    input:
        INPUT_FASTA,
    output:
        fasta="results/data/{workload}.fasta",
        info="results/data/{workload}.json",
    log:
        "results/logs/data/workload_{workload}.log",
    wildcard_constraints:
        workload="subset|sweep|checkpoint",
    conda:
        ENV
    params:
        n=lambda wc: config["workloads"][wc.workload],
        seed=config["input"]["synthetic"]["seed"],
    shell:
        "virnucpro sample {input:q} -o {output.fasta:q} -n {params.n} --seed {params.seed} "
        "--info {output.info:q} > {log:q} 2>&1"
