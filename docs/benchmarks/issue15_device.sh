#!/usr/bin/env bash
# Issue 15 on the device machine: 1,000,000 short reads embedded with ESM-2 3B (random weights, bf16) by one
# `virnucpro embed` and by the `embed` target in 4 shards run as local jobs one after another; their GPU time
# compared (docs/benchmarks/issue15_compare.py). A 3B job over 1M reads takes ~9 min on an H100, so the stages are
# separate calls on one warm machine (files under /tmp/issue15 and results/ stay between calls):
#   bash docs/benchmarks/issue15_device.sh single         # FASTA + the one-job baseline
#   bash docs/benchmarks/issue15_device.sh shards 0 1 2   # those shard jobs (the split first)
#   bash docs/benchmarks/issue15_device.sh finish         # the remaining shards, gather, report, comparison
set -uo pipefail
stage=$1; shift
source "$(dirname "$0")/device_env.sh"
W=/tmp/issue15
mkdir -p $W
export VIRNUCPRO_PRODUCTION_FASTA=$W/reads.faa
SMK=(python3 -m snakemake --resources gpu=1 --cores 16 --configfile docs/benchmarks/gpu_workflow.yaml
    docs/benchmarks/issue15_embed.yaml)
case $stage in
single)
    nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee "$OUT/gpu.csv"
    rm -rf results .snakemake $W/single
    python3 -m virnucpro.cli make-fasta -o $W/reads.faa --num-sequences 1000000 --profile short-reads
    start=$(date +%s)
    python3 -m virnucpro.cli embed $W/reads.faa -o $W/single --model esm2_t36_3B_UR50D --random-weights \
        --precision bf16 --progress-interval 60 2>&1 | tail -20
    echo "single embed: $(($(date +%s) - start)) s from the shell"
    cp $W/single/status.json "$OUT/single_status.json"
    ;;
shards)
    targets=()
    for k in "$@"; do targets+=("results/embed/shards/$k/job.json"); done
    "${SMK[@]}" "${targets[@]}" >"$OUT/snakemake_shards.log" 2>&1
    echo "snakemake rc=$?"
    tail -3 "$OUT/snakemake_shards.log"
    ;;
finish)
    "${SMK[@]}" embed >"$OUT/snakemake_finish.log" 2>&1
    echo "snakemake rc=$?"
    cp results/embed/summary.json "$OUT/embed_summary.json"
    cp results/embed/report.html "$OUT/embed_report.html"
    tar czf "$OUT/shards.tgz" results/embed/manifest.json results/embed/shards/*/job.json \
        results/embed/shards/*/attempts.jsonl results/embed/shards/*/status.json results/logs/embed
    python3 docs/benchmarks/issue15_compare.py $W/single results/embed | tee "$OUT/compare.txt"
    ;;
esac
