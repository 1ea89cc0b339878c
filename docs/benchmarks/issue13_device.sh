#!/usr/bin/env bash
# Issue 13 on the device machine: the GPU workflow (docs/benchmarks/gpu_workflow.yaml) once, from scratch, its
# outputs under $OUT. Run twice (two calls, same machine kind) to compare: the second passes
#   --config compare_to=<first run's summary.json>
# A second call on the same warm machine with RERUN_MEASURED=1 remeasures production, sweeps and validation only.
# Usage: [EXTRA_CONFIG=FILE] [RERUN_MEASURED=1] bash docs/benchmarks/issue13_device.sh NAME [snakemake args...]   (wheels in .whl/, see GUIDE)
set -uo pipefail
name=$1; shift
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv >"$OUT/gpu_$name.csv"
if [ "${RERUN_MEASURED:-0}" = 1 ] && [ -f results/summary.json ]; then
    # Second run on the same (warm) machine: production, every sweep point and the validation measured again,
    # the rest (peers, checkpoint, profiling) kept; the report compares itself with the first run.
    cp results/summary.json /tmp/summary_previous.json
    # shellcheck disable=SC2086
    set -- --forcerun ${RERUN_RULES:-production sweep_point optimal_validation} --config compare_to=/tmp/summary_previous.json "$@"
elif [ "${RERUN_MEASURED:-0}" != 1 ]; then
    rm -rf results .snakemake
fi  # RERUN_MEASURED=1 without a first summary (the first run cut short): finish that run's DAG, delete nothing
start=$(date +%s)
# shellcheck disable=SC2086  # EXTRA_CONFIG: more config files (e.g. docs/benchmarks/gpu_peers.yaml)
timeout "${SNAKEMAKE_TIMEOUT:-540}" python3 -m snakemake --resources gpu=1 --cores 16 --keep-going \
    --configfile docs/benchmarks/gpu_workflow.yaml ${EXTRA_CONFIG:-} "$@" >"$OUT/snakemake_$name.log" 2>&1
rc=$?
echo "snakemake rc=$rc wall_s=$(($(date +%s) - start))" | tee -a "$OUT/snakemake_$name.log"
cp results/report.html "$OUT/report_$name.html" 2>/dev/null
cp results/summary.json "$OUT/summary_$name.json" 2>/dev/null
tar czf "$OUT/results_$name.tgz" --exclude='*.h5' --exclude='*.pt' --exclude='*.faa' --exclude='*.fasta' results
tail -5 results/report.txt 2>/dev/null
exit $rc
