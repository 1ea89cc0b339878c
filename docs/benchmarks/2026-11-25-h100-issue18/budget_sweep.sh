#!/bin/bash
# Issue 18: ESM-2 3B bf16 (random weights) token-budget sweep, one `virnucpro embed` process per point, in order,
# on the same GPU; then every point's embeddings compared with the 16,384 run's (compare_sweep.py).
#   bash budget_sweep.sh OUTDIR [BUDGET...]      (repository root's scripts/ on PYTHONPATH)
out=$1; shift
budgets=${*:-16384 65536 262144 393216 786432 1048576 1500000 16384}
work=/tmp/issue18-sweep; rm -rf $work; mkdir -p $work $out
python3 -m virnucpro.cli make-fasta -o $work/in.fa --num-sequences 12000 --seed 1 --profile short-reads
i=0
for b in $budgets; do
  i=$((i + 1)); dir=$work/p$i-$b
  t0=$(date +%s.%N)
  python3 -m virnucpro.cli embed $work/in.fa -o $dir --model esm2_t36_3B_UR50D --random-weights --precision bf16 \
      --token-budget $b > $out/p$i-$b.log 2>&1
  rc=$?
  t1=$(date +%s.%N)
  used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  echo "{\"point\": $i, \"budget\": $b, \"rc\": $rc, \"wall_s\": $(python3 -c "print(round($t1 - $t0, 1))"), \"gpu_mem_used_mib_after\": $used}" \
      | tee -a $out/sweep_points.jsonl
  cp $dir/status.json $out/p$i-$b.status.json 2>/dev/null
  cp $dir/telemetry/telemetry_rank0.json $out/p$i-$b.telemetry.json 2>/dev/null
done
python3 $(dirname $0)/compare_sweep.py $work $out/sweep_compare.json
