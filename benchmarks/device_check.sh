#!/usr/bin/env bash
# One prepared call on a CUDA machine (the project never depends on one): the CUDA tests,
# GPU distill-step timings, and the quickstart settings sweep. Results land in $OUT.
# Usage (repo root, any python3 with torch+timm): OUT=/tmp/out bash benchmarks/device_check.sh
# ABLATION=1 runs benchmarks/ablation.py instead: the CIFAR ablation at a GPU budget (see below);
# the table names the GPU.
set -u
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
  $PY -m pip list 2>/dev/null | grep -iE "^(pillow|onnxruntime|scikit-learn|safetensors|rich|click) "
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ -n "${ABLATION:-}" ]; then
  # The CIFAR ablation at a GPU budget: the DINO teacher (configs/cifar10_teacher.yaml), then the
  # default variants x 3 seeds, ABLATION_MINUTES of GPU wall-clock per cell, with the evidence
  # student (ViT-T/8: 16 tokens, what the CPU table uses). The data travels with the working tree:
  #   mkdir -p .data && cp -r ../shared/data/cifar10-subset .data/   (git-ignored, 48 MB)
  #   run(command="ABLATION=1 OUT=$OUT bash benchmarks/device_check.sh", carry=[".data"])
  # Dry run on a CPU first, to time it: ABLATION=1 DEVICE=cpu ABLATION_MINUTES=0.02 ...
  echo "== ablation"
  DATA=${ABLATION_DATA:-.data/cifar10-subset}
  if [ "$DATA" = digits ]; then CFG=configs/quickstart.yaml; TCFG=configs/quickstart.yaml; EXTRA=()
  else CFG=configs/cifar10_vit_t.yaml; TCFG=configs/cifar10_teacher.yaml; EXTRA=(--set student.patch_size=8); fi
  DEVICE=${DEVICE:-cuda}
  WORKERS=${WORKERS:-8}
  [ "$DEVICE" = cpu ] && WORKERS=0
  timeout "${ABLATION_SECONDS:-560}" $PY benchmarks/ablation.py --pretrain-teacher --teacher /tmp/ablation/teacher \
    --data "$DATA" --config $CFG --teacher-config $TCFG --budget-minutes "${ABLATION_MINUTES:-0.4}" \
    --seeds 0,1,2 --clock wall --set run.device=$DEVICE --set data.num_workers=$WORKERS "${EXTRA[@]}" \
    ${ABLATION_ARGS:-} --out /tmp/ablation > "$OUT/ablation.log" 2>&1
  echo "ablation rc=$?"; tail -30 "$OUT/ablation.log"
  cp /tmp/ablation/table.md /tmp/ablation/knn_vs_time.png /tmp/ablation/results.json "$OUT/" 2>/dev/null
  exit 0
fi

if [ -z "${SWEEP_ONLY:-}" ]; then
echo "== CUDA tests"
timeout 200 $PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider > "$OUT/cuda_tests.log" 2>&1
echo "pytest rc=$?"; tail -15 "$OUT/cuda_tests.log"

echo "== distill step timings"
timeout 60 $PY benchmarks/distill_step.py --device cuda --recipe imagenet --batch 128 --rounds 5 --steps 5 \
  --json "$OUT/step_imagenet.json" 2>&1 | tail -4
timeout 40 $PY benchmarks/distill_step.py --device cuda --recipe cifar --batch 256 --rounds 5 --steps 5 \
  --json "$OUT/step_cifar.json" 2>&1 | tail -4

fi
echo "== quickstart sweep"
timeout "${SWEEP_SECONDS:-330}" $PY benchmarks/quickstart_sweep.py --out /tmp/sweep --jobs "${JOBS:-7}" \
  --device cuda --workers 2 --no-baselines ${VARIANTS:+--variants "$VARIANTS"} --only "${ONLY:-all}"
cp /tmp/sweep/sweep.json "$OUT/" 2>/dev/null
tar czf "$OUT/sweep_logs.tgz" -C /tmp/sweep --exclude='*.pt' --exclude='*.safetensors' . 2>/dev/null
echo done
