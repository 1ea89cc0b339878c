#!/usr/bin/env bash
# One short device call for a session with under 9 minutes of device time: the peers job of the GPU workflow
# (issue 13's peers table), then issue 17's fp8 GEMM + chunk checks and the 3B fp8 accuracy run, each
# time-boxed so the call ends inside its limit; every output under $OUT.
# Usage (repository root on the device, carry .whl): bash docs/benchmarks/short_device_call.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv >"$OUT/gpu.csv"
timeout "${PEERS_TIMEOUT:-150}" python3 -m snakemake results/peers/peers.json --resources gpu=1 --cores 16 \
    --configfile docs/benchmarks/gpu_workflow.yaml docs/benchmarks/gpu_peers.yaml \
    docs/benchmarks/gpu_workflow_quick.yaml docs/benchmarks/gpu_workflow_minimal.yaml \
    >"$OUT/peers_snakemake.log" 2>&1
echo "peers rc=$?"
cp results/peers/peers.json results/logs/peers.log "$OUT/" 2>/dev/null
timeout "${CHECKS_TIMEOUT:-120}" python3 docs/benchmarks/device_checks.py "$OUT/device_checks.json" \
    >"$OUT/device_checks.log" 2>&1
echo "device_checks rc=$?"
timeout "${ACCURACY_TIMEOUT:-120}" python3 -m virnucpro.cli bench accuracy --model esm2_t36_3B_UR50D \
    --num-sequences 200 --precision fp32,bf16,fp8 -o "$OUT/accuracy_3b.json" >"$OUT/accuracy.log" 2>&1
echo "accuracy rc=$?"
tail -3 "$OUT"/*.log
