#!/usr/bin/env bash
# Issue 17 on the device, each step time-boxed, outputs under $OUT; name the steps to run (default: all, ~11 min,
# more than one call allows, so split them over two calls of one warm machine):
#   kernels     the Triton kernels of models.fused_kernels (fp8 quantisations included) on the GPU's own cast,
#               and their speed against the compiled twins (~1 min)
#   engines     `bench engines` with bf16 and fp8 (peers trimmed: issue 13's workflow run has them in full) (~5 min)
#   alone       `bench engines` without peers (--peer-subset 0): bf16 and fp8 on both workloads (~2.5 min)
#   budget32k   one fp8 `virnucpro embed` of the engines' short reads at a 32,768-token budget (~1 min; after engines or alone)
#   checks      fp8 GEMMs at the 3B shapes (compiled and Triton quantisation) + the chunk path on CUDA (~1.5 min)
#   accuracy_a, accuracy_b   fp8 accuracy of 3B random weights, (a) as built and (b) with outlier channels (~1 min each)
# Usage (repository root on the device, carry .whl): bash docs/benchmarks/fp8_device_call.sh kernels engines budget32k
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
run_step() {
    case $1 in
    kernels) step kernels "${KERNELS_TIMEOUT:-100}" python3 docs/benchmarks/fused_kernels_check.py "$OUT/fused_kernels.json" ;;
    engines) step engines "${ENGINES_TIMEOUT:-330}" $B engines --seed-mix 10000 --short-reads 60000 --peer-subset 1000 \
        --fp32-subset 200 --peer-budgets 16384,65536 --engine-precisions bf16,fp8 --workdir /tmp/bench \
        -o "$OUT/engines.json" ;;
    alone) step engines_alone "${ENGINES_TIMEOUT:-200}" $B engines --seed-mix 10000 --short-reads 60000 \
        --peer-subset 0 --engine-precisions bf16,fp8 --workdir /tmp/bench -o "$OUT/engines_alone.json" ;;
    budget32k) step budget32k "${BUDGET_TIMEOUT:-70}" python3 -m virnucpro.cli embed /tmp/bench/short-reads.fa \
        -o /tmp/bench/out-short-reads-fp8-32k --model esm2_t36_3B_UR50D --random-weights --precision fp8 \
        --token-budget 32768 --overwrite
        cp /tmp/bench/out-short-reads-fp8-32k/status.json "$OUT/budget32k_status.json" 2>/dev/null ;;
    checks) step device_checks "${CHECKS_TIMEOUT:-110}" python3 docs/benchmarks/device_checks.py "$OUT/device_checks.json" ;;
    accuracy_a) step accuracy_a "${ACCURACY_TIMEOUT:-80}" $B accuracy --model esm2_t36_3B_UR50D --num-sequences 200 \
        --precision fp32,bf16,fp8 -o "$OUT/accuracy_3b.json" ;;
    accuracy_b) step accuracy_b "${ACCURACY_TIMEOUT:-80}" $B accuracy --model esm2_t36_3B_UR50D --num-sequences 200 \
        --precision fp32,bf16,fp8 --outliers 4:30 -o "$OUT/accuracy_3b_outliers.json" ;;
    *) echo "unknown step: $1" >&2; exit 2 ;;
    esac
}
for s in "${@:-kernels engines budget32k checks accuracy_a accuracy_b}"; do
    for one in $s; do run_step "$one"; done
done
tail -n 8 "$OUT"/engines*.log 2>/dev/null
true
