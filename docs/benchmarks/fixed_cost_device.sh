#!/usr/bin/env bash
# A 3B job's fixed cost before and after the hand-written Triton layer kernels (no torch.compile per job), no
# Dynamo import, unpadded batches and the device started while the input is read; one call on the device (~5 min,
# ~7 with LONG_READS=100000, which adds one job per side long enough to compare loop throughput):
#   git archive <before-commit> scripts/virnucpro | tar -x -C bench_before   # here, before the call (untracked)
#   LONG_READS=100000 bash docs/benchmarks/fixed_cost_device.sh
# Steps: the fused kernels against their twins and their speed (fused_kernels_check.py); the step-by-step start-up
# profile (startup_profile.py); then `virnucpro embed` of 20,000 short reads (and 4,000 seed-mix proteins, whose
# longer segments take the key-rotation kernel) with the code before and after, interleaved and repeated, every
# job's status.json kept (phases, loop throughput). Each side embeds 2,000 reads first to fill its caches.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
W=/tmp/fixed_cost
rm -rf $W && mkdir -p $W/json
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee "$OUT/gpu.csv"
env | grep -E "^PYTHON(DONTWRITEBYTECODE|PYCACHEPREFIX)" || echo "no Python bytecode settings in the environment"
for i in 1 2; do  # does an interpreter that may write bytecode (as a normal install) import torch faster?
    env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/tmp/pyc /usr/bin/time -f "import torch with a bytecode cache: %e s" \
        python3 -c "import torch"
done
timeout 120 python3 docs/benchmarks/fused_kernels_check.py "$OUT/fused_kernels.json" | tail -30
echo "fused_kernels_check rc=$?"
timeout 90 python3 docs/benchmarks/startup_profile.py esm2_t36_3B_UR50D bf16 "$OUT/startup_after.json" >/dev/null
cat "$OUT/startup_after.json"
python3 -m virnucpro.cli make-fasta -o $W/reads.faa --num-sequences 20000 --profile short-reads --seed 3
python3 -m virnucpro.cli make-fasta -o $W/mix.faa --num-sequences 4000 --profile seed-mix --seed 4
head -4000 $W/reads.faa >$W/warm.faa
embed() {  # side name fasta label
    local side=$1 fasta=$2 label=$3 path=$PWD/scripts
    [ "$side" = before ] && path=$PWD/bench_before/scripts
    PYTHONPATH=/tmp/site:$path timeout 200 python3 -m virnucpro.cli embed "$fasta" -o "$W/$label" \
        --model esm2_t36_3B_UR50D --random-weights --precision bf16 --progress-interval 600 >"$W/$label.log" 2>&1
    echo "$label rc=$? $(tail -1 "$W/$label.log")"
    cp "$W/$label/status.json" "$W/json/$label.json" 2>/dev/null
}
embed before $W/warm.faa warm_before
embed after $W/warm.faa warm_after
for r in 1 2; do
    embed before $W/reads.faa "reads_before_$r"
    embed after $W/reads.faa "reads_after_$r"
done
embed before $W/mix.faa mix_before
embed after $W/mix.faa mix_after
for r in 1 2; do  # the same job where Python may keep bytecode (the device image keeps none for torch)
    env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/tmp/pyc bash -c "$(declare -f embed); W=$W; OUT=$OUT; embed after $W/reads.faa reads_after_pyc_$r"
done
if [ "${LONG_READS:-0}" -gt 0 ]; then  # a loop long enough (~50 s per 100k) to compare throughput
    python3 -m virnucpro.cli make-fasta -o $W/long.faa --num-sequences "$LONG_READS" --profile short-reads --seed 5
    embed before $W/long.faa long_before
    embed after $W/long.faa long_after
fi
python3 - "$W/json" "$OUT" <<'EOF'
import json, pathlib, sys
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
from virnucpro.utils.phases import fixed_part
rows = {}
for f in sorted(src.glob("*_before*.json")) + sorted(src.glob("*_after*.json")):
    if f.stem.startswith(("warm", "reads", "mix", "long")):
        s = json.loads(f.read_text())["summary"]
        rows[f.stem] = {"fixed_s": round(sum(fixed_part(s["phases"]).values()), 2),
                        "loop_tokens_per_s": round(s.get("avg_tokens_per_sec") or 0), "wall_s": round(s["job_wall_seconds"], 2),
                        "phases": {k: round(v, 2) for k, v in s["phases"].items()}}
print(json.dumps(rows, indent=1))
(out / "fixed_cost_summary.json").write_text(json.dumps(rows, indent=1))
EOF
tar czf "$OUT/status_files.tgz" -C $W json  # every job's status.json (8 files at most come back)
