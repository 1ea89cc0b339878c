#!/usr/bin/env bash
# Issue 15 on the device machine: 1,000,000 short reads embedded with ESM-2 3B (random weights, bf16) by the
# `embed` target in 4 shards run as local jobs one after another, and by one `virnucpro embed`; their GPU time
# compared (docs/benchmarks/issue15_compare.py). A 3B job over 1M reads takes ~9 min on an H100, so the stages are
# separate calls on one warm machine (files under /tmp/issue15 and results/ stay between calls):
#   bash docs/benchmarks/issue15_device.sh shards 0 1 2   # FASTA, a compile-cache warm-up, the split, those shards
#   bash docs/benchmarks/issue15_device.sh finish         # the remaining shards, gather, report
#   bash docs/benchmarks/issue15_device.sh single         # the one-job baseline
#   bash docs/benchmarks/issue15_device.sh compare        # GPU time and embeddings, shards against the single job
# BYTECODE=1 on every stage lets Python keep bytecode under /tmp/pyc (what a normal install has; the device image
# keeps none for torch, ~2-3 s more `import torch` per job); say which with the result.
# The warm-up (2,000 reads, same settings) fills the Triton cache first, so that neither side pays the kernels'
# first compilation, which only a machine's first job pays; startup_profile.py then times a job's start-up steps.
set -uo pipefail
stage=$1; shift
source "$(dirname "$0")/device_env.sh"
W=/tmp/issue15
mkdir -p $W
if [ "${BYTECODE:-0}" = 1 ]; then  # both sides: Python keeps bytecode, as a normal install (the image has none for torch)
    unset PYTHONDONTWRITEBYTECODE
    export PYTHONPYCACHEPREFIX=/tmp/pyc
fi
echo "bytecode: ${PYTHONPYCACHEPREFIX:-none kept} (PYTHONDONTWRITEBYTECODE=${PYTHONDONTWRITEBYTECODE:-unset})"
export VIRNUCPRO_PRODUCTION_FASTA=$W/reads.faa
EMBED=(python3 -m virnucpro.cli embed --model esm2_t36_3B_UR50D --random-weights --precision bf16)
# --resources and --configfile take several values: a single-valued option (--cores) ends them before the targets
SMK=(python3 -m snakemake --resources gpu=1 --configfile docs/benchmarks/gpu_workflow.yaml
    docs/benchmarks/issue15_embed.yaml --cores 16)
case $stage in
shards)
    nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee "$OUT/gpu.csv"
    rm -rf results .snakemake $W/*
    python3 -m virnucpro.cli make-fasta -o $W/reads.faa --num-sequences 1000000 --profile short-reads
    head -4000 $W/reads.faa >$W/warm.faa
    "${EMBED[@]}" $W/warm.faa -o $W/warm 2>&1 | tail -1
    cp $W/warm/status.json "$OUT/warm_status.json"
    if [ "${STARTUP_PROFILE:-1}" = 1 ]; then  # STARTUP_PROFILE=0 saves ~20 s of device time
        timeout 60 python3 docs/benchmarks/startup_profile.py esm2_t36_3B_UR50D bf16 "$OUT/startup.json" >/dev/null
    fi
    targets=()
    for k in "$@"; do targets+=("results/embed/shards/$k/job.json"); done
    "${SMK[@]}" "${targets[@]}" >"$OUT/snakemake_shards.log" 2>&1
    echo "snakemake rc=$?"
    tail -3 "$OUT/snakemake_shards.log"
    ;;
finish)
    "${SMK[@]}" embed >"$OUT/snakemake_finish.log" 2>&1
    echo "snakemake rc=$?"
    tail -3 "$OUT/snakemake_finish.log"
    cp results/embed/summary.json "$OUT/embed_summary.json"
    cp results/embed/report.html "$OUT/embed_report.html"
    tar czf "$OUT/shards.tgz" results/embed/manifest.json results/embed/shards/*/job.json \
        results/embed/shards/*/status.json results/embed/shards/*/telemetry results/logs/embed
    ;;
single)
    start=$(date +%s)
    timeout "${SINGLE_TIMEOUT:-570}" "${EMBED[@]}" $W/reads.faa -o $W/single --progress-interval 60 2>&1 | tail -20
    echo "single embed: $(($(date +%s) - start)) s from the shell"
    cp $W/single/status.json "$OUT/single_status.json"
    ;;
compare)
    python3 docs/benchmarks/issue15_compare.py $W/single results/embed | tee "$OUT/compare.json"
    ;;
esac
