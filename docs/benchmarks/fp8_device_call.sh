#!/usr/bin/env bash
# Issue 17 in one device call (<= 10 min): fp8 GEMMs at the 3B shapes + the chunk path on CUDA, `bench engines`
# with bf16 and fp8 (peers trimmed: issue 13's workflow run has them at full size), and the fp8 accuracy of 3B
# random weights (a) as built and (b) with outlier channels injected; each step time-boxed, outputs under $OUT.
# Usage (repository root on the device, carry .whl): bash docs/benchmarks/fp8_device_call.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv >"$OUT/gpu.csv"
B="python3 -m virnucpro.cli bench"
step() {  # step NAME SECONDS COMMAND...: time-boxed, its log under $OUT, one line of outcome
    local name=$1 limit=$2; shift 2
    local t0; t0=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "$name rc=$? wall_s=$(($(date +%s) - t0))"
}
step device_checks "${CHECKS_TIMEOUT:-100}" python3 docs/benchmarks/device_checks.py "$OUT/device_checks.json"
step engines "${ENGINES_TIMEOUT:-300}" $B engines --seed-mix 10000 --short-reads 60000 --peer-subset 1000 \
    --fp32-subset 200 --peer-budgets 16384,65536 --engine-precisions bf16,fp8 --workdir /tmp/bench \
    -o "$OUT/engines.json"
step accuracy_a "${ACCURACY_TIMEOUT:-80}" $B accuracy --model esm2_t36_3B_UR50D --num-sequences 200 \
    --precision fp32,bf16,fp8 -o "$OUT/accuracy_3b.json"
step accuracy_b "${ACCURACY_TIMEOUT:-80}" $B accuracy --model esm2_t36_3B_UR50D --num-sequences 200 \
    --precision fp32,bf16,fp8 --outliers 4:30 -o "$OUT/accuracy_3b_outliers.json"
tail -n 25 "$OUT/engines.log"
