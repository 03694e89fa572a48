#!/usr/bin/env bash
# Issue 8, stage 10 on a lent GPU, one call: the GPU smoke test (bf16 autocast x channels_last
# throughput, a 2-epoch trainer=gpu run), then stage 9's question on two more fold sets: does a
# two-member ensemble of 75-epoch members beat the shipped one of 60-epoch members on validation?
# 40 runs = data.seed {1, 2} x epochs {75, 60} x seed {1, 2} x 5 folds, bf16-mixed, 20 at a time.
# On the device machine, from the repo root, with .whl and .busi_carry (benchmarks/portable_copy.py) carried:
#   bash benchmarks/gpu_ensemble_length.sh          # $OUT/results.tar.gz (no checkpoints) + the tables printed
set -u
OUT=${OUT:-/tmp/gpu_out}; R=/tmp/results; mkdir -p "$OUT" "$R"
source benchmarks/device_env.sh "$R"
BUSI=(data=csv data.options.manifest=.busi_carry/manifest.csv data.dedup=false)
timeout "${SMOKE_S:-90}" python3 benchmarks/gpu_smoke.py --out /tmp/smoke --repeats 2 --steps 20 \
  --data "${BUSI[@]}" data.image_size=128 2>&1 | tail -n 25
cp /tmp/smoke/gpu_smoke.json "$R/" 2>/dev/null
SWEEPS=()  # longest first within a fold set; fold set 1 before 2
for ds in 1 2; do for ep in 75 60; do for s in 1 2; do
  SWEEPS+=(--sweep "ep${ep}_s${s}_ds${ds}" "seed=$s data.seed=$ds trainer.max_epochs=$ep")
done; done; done
timeout "${SWEEPS_S:-380}" python3 benchmarks/parallel_sweeps.py --out /tmp/cv --jobs "${JOBS:-20}" --threads 1 \
  --stop "${STOP:-360}" "${SWEEPS[@]}" experiment=recipe "${BUSI[@]}" trainer.accelerator=gpu \
  trainer.precision=bf16-mixed > "$R/sweeps.log" 2>&1
tail -n 5 "$R/sweeps.log"
for ds in 1 2; do for ep in 75 60; do
  OMP_NUM_THREADS=4 timeout "${EVAL_S:-100}" python3 benchmarks/ensemble_val.py /tmp/cv/ep${ep}_s1_ds${ds} \
    /tmp/cv/ep${ep}_s2_ds${ds} > "$R/ensemble_ep${ep}_ds${ds}.md" 2> "$R/ensemble_ep${ep}_ds${ds}.err" &
done; done
wait
cp /tmp/cv/times.json "$R/" 2>/dev/null
tar czf "$OUT/results.tar.gz" --exclude='*.ckpt' -C /tmp results cv
for f in "$R"/ensemble_*.md; do echo "== $f"; cat "$f"; tail -n 2 "${f%.md}.err"; done
ls -la "$OUT"
