#!/bin/bash
# The device calls of issue 18, by stage: bash run_device.sh STAGE OUT  (from .carry_c on the device)
# Results are packed into OUT/STAGE.tgz (the device returns at most 8 files).
here=$(dirname $0); stage=$1; out=$2; res=/tmp/issue18-$stage; mkdir -p $res
acc() { timeout $3 python3 -m virnucpro.cli bench accuracy --model $1 --num-sequences $2 -o $res/accuracy_$1.json \
        > $res/accuracy_$1.log 2>&1; echo "accuracy $1 rc=$? $(date +%T)"; }
case $stage in
  a)
    timeout 150 python3 $here/gpu_checks.py kernels $res/kernels.json > $res/kernels.log 2>&1; echo "kernels rc=$? $(date +%T)"
    timeout 200 python3 $here/gpu_checks.py paths $res/paths.json esm2_t6_8M_UR50D esm2_t12_35M_UR50D \
        esm2_t36_3B_UR50D esm2_t48_15B_UR50D > $res/paths.log 2>&1; echo "paths rc=$? $(date +%T)"
    for m in esm2_t6_8M_UR50D esm2_t12_35M_UR50D esm2_t30_150M_UR50D esm2_t33_650M_UR50D; do acc $m 200 90; done
    acc esm2_t36_3B_UR50D 100 120 ;;
  b)
    timeout 100 python3 $here/gpu_checks.py kernels $res/kernels.json > $res/kernels.log 2>&1; echo "kernels rc=$? $(date +%T)"
    timeout 150 python3 $here/gpu_checks.py paths $res/paths.json esm2_t6_8M_UR50D esm2_t12_35M_UR50D \
        esm2_t48_15B_UR50D > $res/paths.log 2>&1; echo "paths rc=$? $(date +%T)"
    acc esm2_t6_8M_UR50D 200 60
    acc esm2_t48_15B_UR50D 30 220 ;;
  c)
    bash $here/budget_sweep.sh $res; echo "sweep done $(date +%T)" ;;
esac
tar czf $out/$stage.tgz -C $res .
