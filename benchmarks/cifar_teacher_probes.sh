#!/usr/bin/env bash
# The probes behind configs/cifar10_teacher.yaml (notes: benchmarks/cifar_teacher.md).
# Each is a real `edgedistill pretrain` run on the CIFAR-10 subset with --set overrides on top of
# the recipe, shortened to a few epochs; k-NN top-1 (k=20) comes from the run's metrics.jsonl.
# Run one at a time on a small CPU: they share its cores.
#   bash benchmarks/cifar_teacher_probes.sh [OUT_DIR] [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/cifar_teacher_probes}
data=${2:-../shared/data/cifar10-subset}
edgedistill=${EDGEDISTILL:-edgedistill}
mkdir -p "$out"

probe() {  # name, then --set overrides for a 4-epoch run
  local name=$1; shift
  local sets=(--set pretrain.epochs=4 --set pretrain.warmup_epochs=1 --set pretrain.knn_every=2)
  for o in "$@"; do sets+=(--set "$o"); done
  rm -rf "${out:?}/$name"
  local start=$SECONDS
  "$edgedistill" pretrain --config configs/cifar10_teacher.yaml --data "$data" --out "$out/$name" "${sets[@]}" \
    > "$out/$name.log" 2>&1
  echo "$name: $((SECONDS - start)) s, k-NN top-1 by epoch: $(grep -o '"knn_top1": [0-9.]*' "$out/$name/metrics.jsonl" \
    | cut -d' ' -f2 | tr '\n' ' ')" | tee -a "$out/results.txt"
}

"$edgedistill" eval knn --model random --arch vit_small_patch16_224 --patch-size 8 --depth 4 --img-size 32 \
  --data "$data" --seed 0 --json "$out/random_p8d4.json" | tail -8
probe blr2e-3 pretrain.blr=0.002
probe blr5e-4
probe blr5e-4_head_bn pretrain.head_bn=true
probe blr5e-4_tt02_m996 pretrain.teacher_temp=0.02 pretrain.warmup_teacher_temp=0.02 pretrain.momentum_teacher=0.996
probe blr5e-4_out256 pretrain.out_dim=256
probe blr5e-4_16ep pretrain.epochs=16 pretrain.knn_every=4
