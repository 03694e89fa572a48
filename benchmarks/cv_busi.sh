#!/usr/bin/env bash
# Cross-validation benchmark on real ultrasound (BUSI: benign / malignant / normal):
# attention-gated vs plain ResNet18 on the same 5 folds, then the paired comparison.
#   PY=.venv/bin/python SIZE=48 EPOCHS=2 bash benchmarks/cv_busi.sh
# data=busi groups near-duplicate images (BUSI has no patient ids), so folds never split them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/busi}
SIZE=${SIZE:-48}
EPOCHS=${EPOCHS:-2}
BATCH=${BATCH:-32}
LR=${LR:-1e-3}       # a short CPU schedule: 10x the study's Adam 1e-4
OUT=${OUT:-outputs/bench_cv/busi_${SIZE}px_${EPOCHS}ep}
[ -d "$DATA" ] || { echo "BUSI not found at $DATA"; exit 1; }
mkdir -p "$OUT"
common=(data=busi "data.root=$DATA" "data.image_size=$SIZE" "trainer.max_epochs=$EPOCHS" "data.batch_size=$BATCH"
        "model.optimizer.lr=$LR" trainer.accelerator=cpu logger=csv callbacks.progress_bar=null "data.fold=0,1,2,3,4")
# the two sweeps run at the same time (one process each, same folds: same data, n_folds and seed)
start=$(date +%s)
for model in attention_resnet18 resnet18; do
  ( "$PY" -m skintumor.train -m "model=$model" "${common[@]}" "sweep_name=busi_$model" "hydra.sweep.dir=$OUT/$model" \
      > "$OUT/$model.log" 2>&1
    echo "$model: $(( $(date +%s) - start )) s wall" | tee -a "$OUT/wall_time.txt" ) &
done
wait
"$PY" -m skintumor.report "$OUT/attention_resnet18" "$OUT/resnet18"
echo "total: $(( $(date +%s) - start )) s wall" | tee -a "$OUT/wall_time.txt"
