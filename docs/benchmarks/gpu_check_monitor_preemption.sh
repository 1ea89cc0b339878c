#!/usr/bin/env bash
# GPU check for the multi-process runner (issue 3), run on the device machine:
#   1. the nvitop monitor samples the GPU this process uses (UUID compared with torch's), readings next to
#      nvidia-smi's under load, and the progress lines of a non-TTY log;
#   2. SIGTERM mid-run: exit 75 after a checkpoint flush, and a rerun that resumes without redoing work;
#   3. --world-size 2 on a one-GPU machine is a usage error (exit 2).
# Usage: OUT=dir N=120000 bash docs/benchmarks/gpu_check_monitor_preemption.sh
set -u
OUT=${OUT:-results/gpu_check}; N=${N:-120000}
mkdir -p "$OUT"
V="python3 -m virnucpro.cli"
$V make-fasta -o "$OUT/reads.fa" --num-sequences "$N" --seed 1 --profile short-reads
python3 -c "import torch; print('torch cuda:0 uuid', torch.cuda.get_device_properties(0).uuid)" | tee "$OUT/uuid.txt"
nvidia-smi -L | tee -a "$OUT/uuid.txt"

nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used,power.draw --format=csv,noheader -lms 1000 \
  > "$OUT/nvidia_smi.csv" &
SMI=$!
$V embed "$OUT/reads.fa" -o /tmp/run1 --random-weights --progress-interval 5 2> "$OUT/run1.log"
echo "run1 exit $?" | tee -a "$OUT/run1.log"
kill $SMI
cp -r /tmp/run1/telemetry "$OUT/run1_telemetry"; cp /tmp/run1/status.json "$OUT/run1_status.json"

setsid $V embed "$OUT/reads.fa" -o /tmp/run2 --random-weights --progress-interval 5 --checkpoint-every 10000 \
  2> "$OUT/run2_killed.log" &
PID=$!
until ls /tmp/run2/.partial/chunk_* >/dev/null 2>&1 || ! kill -0 $PID 2>/dev/null; do sleep 0.5; done
sleep 8
kill -TERM -- -$PID
wait $PID; echo "killed run exit $?" | tee -a "$OUT/run2_killed.log"
cp /tmp/run2/status.json "$OUT/run2_killed_status.json"
ls /tmp/run2/.partial | wc -l | sed 's/^/chunks after SIGTERM: /' | tee -a "$OUT/run2_killed.log"
cp /tmp/run2/telemetry/telemetry_rank0.json "$OUT/run2_killed_telemetry_rank0.json"
$V embed "$OUT/reads.fa" -o /tmp/run2 --random-weights --progress-interval 5 2> "$OUT/run2_resumed.log"
echo "resumed run exit $?" | tee -a "$OUT/run2_resumed.log"
cp /tmp/run2/telemetry/telemetry_rank0.json "$OUT/run2_resumed_telemetry_rank0.json"

$V embed "$OUT/reads.fa" -o /tmp/run3 --random-weights --world-size 2 2> "$OUT/run3.log"
echo "world-size 2 on one GPU: exit $?" | tee -a "$OUT/run3.log"
python3 - "$OUT" <<'PY'
import json, sys, h5py, numpy as np
out = sys.argv[1]
m = json.load(open(f"{out}/run1_telemetry/telemetry_rank0.json"))
print("monitor identity", m["run_metadata"]["gpu_monitor"])
print("run1 summary", {k: m["summary"][k] for k in ("avg_tokens_per_sec", "avg_gpu_util", "elapsed_seconds")})
print("startup/load/warmup s", [m["run_metadata"][k] for k in ("startup_seconds", "model_load_seconds", "warmup_seconds")])
k = json.load(open(f"{out}/run2_killed_telemetry_rank0.json")); r = json.load(open(f"{out}/run2_resumed_telemetry_rank0.json"))
print("killed run embedded", k["summary"]["total_sequences"], "preempted", k["run_metadata"]["preempted"])
print("resumed run: resumed", r["run_metadata"]["resumed_sequences"], "embedded", r["summary"]["total_sequences"])
a, b = h5py.File("/tmp/run1/embeddings.h5"), h5py.File("/tmp/run2/embeddings.h5")
print("ids equal", list(a["ids"][()]) == list(b["ids"][()]), "max abs diff", float(np.abs(a["embeddings"][()] - b["embeddings"][()]).max()))
PY
