#!/usr/bin/env bash
# Issue 13's two workflow runs in ONE device call (for a session that cannot count on keeping a machine between
# calls): run A from scratch, then run B on the same machine remeasuring production and the sweep points against
# A's summary. Trimmed grid (gpu_workflow_quick + minimal: the baseline and one placebo point) and peers.
# Usage (repository root on the device, carry .whl): [A_TIMEOUT=360] [B_TIMEOUT=170] bash docs/benchmarks/issue13_twice.sh
set -uo pipefail
export EXTRA_CONFIG="docs/benchmarks/gpu_peers.yaml docs/benchmarks/gpu_workflow_quick.yaml docs/benchmarks/gpu_workflow_minimal.yaml"
here=$(dirname "$0")
SNAKEMAKE_TIMEOUT=${A_TIMEOUT:-360} bash "$here/issue13_device.sh" A
RERUN_MEASURED=1 RERUN_RULES="production sweep_point" SNAKEMAKE_TIMEOUT=${B_TIMEOUT:-170} bash "$here/issue13_device.sh" B
