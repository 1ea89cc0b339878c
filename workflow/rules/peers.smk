# Optional GPU job (peers.enabled): fair-esm and Hugging Face EsmModel at their best (pooling on the GPU once
# per batch, fp16 and bf16, the fastest token budget of a small grid) and fair-esm's extract.py recipe, on a
# sample of the input with the same weights; the report shows this engine's rate over theirs.
import shlex


rule peers:
    input:
        fasta=INPUT_FASTA,
        checkpoint=config["model"]["checkpoint"] or [],
    output:
        "results/peers/peers.json",
    log:
        "results/logs/peers.log",
    benchmark:
        "results/benchmarks/peers.tsv"
    conda:
        ENV
    threads: 2
    resources:
        **gpu_resources("gpu_job"),
    params:
        model=config["model"]["name"],
        weights=lambda wc, input: (
            f"--checkpoint {shlex.quote(input.checkpoint)}"
            if input.checkpoint
            else f"--seed {config['model']['seed']}"
        ),
        n=config["peers"]["sequences"],
        fp32=config["peers"]["fp32_sequences"],
        budgets=",".join(str(b) for b in config["peers"]["token_budgets"]),
        device=config["engine"]["device"],
    shell:
        "virnucpro bench peers --fasta {input.fasta:q} --num-sequences {params.n} --model {params.model:q} "
        "{params.weights} --fp32-subset {params.fp32} --peer-budgets {params.budgets} "
        "--device {params.device:q} -o {output:q} > {log:q} 2>&1"


PEERS_RESULT = "results/peers/peers.json" if config["peers"]["enabled"] else []
