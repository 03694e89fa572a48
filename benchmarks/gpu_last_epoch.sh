#!/usr/bin/env bash
# Issue 8, stage 17 on a lent GPU, one call: the GPU smoke test (bf16 autocast x channels_last
# throughput, longer timing windows than before, and a 2-epoch trainer=gpu run), then stage 16's lead
# on two more fold sets: on a stand-in test fold (data.nested=true), does the final epoch (last.ckpt)
# beat the validation-chosen one (best.ckpt), for single models and for the two-seed ensemble?
# 20 runs = data.seed {1, 2} x seed {1, 2} x 5 folds of experiment=recipe, bf16-mixed, 20 at a time.
# On the device machine, from the repo root, with .whl and .busi_carry (benchmarks/portable_copy.py) carried:
#   bash benchmarks/gpu_last_epoch.sh          # $OUT/results.tar.gz (no checkpoints) + the tables printed
# A dry run on a CPU machine (python3 = the project's venv): ACCEL=cpu PREC=32 SMOKE_S=0 JOBS=2 \
#   EXTRA="trainer.max_epochs=1 data.image_size=32" bash benchmarks/gpu_last_epoch.sh
set -u
OUT=${OUT:-/tmp/gpu_out}; R=/tmp/results; CV=/tmp/cv; mkdir -p "$OUT" "$R"
source benchmarks/device_env.sh "$R"
BUSI=(data=csv data.options.manifest=.busi_carry/manifest.csv data.dedup=false)
if [ "${SMOKE_S:-120}" != 0 ]; then
  timeout "${SMOKE_S:-120}" python3 benchmarks/gpu_smoke.py --out "$R" --repeats 3 --steps 100 \
    --data "${BUSI[@]}" data.image_size=128 2>&1 | tail -n 25
fi
SWEEPS=()  # fold set 1 before 2
for ds in 1 2; do for s in 1 2; do
  SWEEPS+=(--sweep "nested_s${s}_ds${ds}" "seed=$s data.seed=$ds data.nested=true")
done; done
# shellcheck disable=SC2086  # EXTRA is a list of overrides
timeout "${SWEEPS_S:-310}" python3 benchmarks/parallel_sweeps.py --out "$CV" --jobs "${JOBS:-20}" --threads 1 \
  --stop "${STOP:-290}" "${SWEEPS[@]}" experiment=recipe "${BUSI[@]}" trainer.accelerator="${ACCEL:-gpu}" \
  trainer.precision="${PREC:-bf16-mixed}" ${EXTRA:-} > "$R/sweeps.log" 2>&1
tail -n 5 "$R/sweeps.log"
for ds in 1 2; do
  A=$CV/nested_s1_ds$ds; B=$CV/nested_s2_ds$ds
  for what in "best:$A $B" "last:$A $B --checkpoint last.ckpt" "all:$A $A@last.ckpt $B $B@last.ckpt"; do
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=2 timeout "${EVAL_S:-120}" python3 benchmarks/ensemble_val.py ${what#*:} \
      > "$R/standin_${what%%:*}_ds$ds.md" 2> "$R/standin_${what%%:*}_ds$ds.err" &
  done
done
wait
cp "$CV/times.json" "$R/" 2>/dev/null
tar czf "$OUT/results.tar.gz" --exclude='*.ckpt' -C /tmp results cv
for f in "$R"/standin_*.md; do echo "== $f"; cat "$f"; tail -n 2 "${f%.md}.err"; done
ls -la "$OUT"
