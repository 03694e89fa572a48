#!/usr/bin/env bash
# Issue 8 on a lent GPU, one call: the GPU smoke test, then one candidate against the recipe on the
# adoption rule's footing: validation score with cross-fitted offsets (benchmarks/decision_bias.py),
# seeds 1 and 2 on data.seed 42, and the two-seed ensembles (benchmarks/ensemble_val.py). The recipe is
# trained beside the candidate (not taken from CPU runs): GPU and CPU runs are not bit-identical.
# 20 runs = {candidate, recipe} x seed {1, 2} x 5 folds of experiment=recipe, bf16-mixed, all at once
# (stage 17: about 230 s for the recipe's runs); DSEEDS="42 1" adds fold set 1 (another 20 runs: only
# with more device time than 15 min). NAME names the candidate's sweeps, VARIANT is its overrides:
#   NAME=strong VARIANT="augment=strong" bash benchmarks/gpu_candidate.sh               # stage 20
#   NAME=zoom VARIANT="model.net.lesion_zoom=96" bash benchmarks/gpu_candidate.sh        # stage 18
# On the device machine, from the repo root, with .whl and .busi_carry (benchmarks/portable_copy.py)
# carried; $OUT/results.tar.gz (no checkpoints) + the tables printed. A dry run on a CPU machine
# (python3 = the project's venv): ACCEL=cpu PREC=32 SMOKE_S=0 JOBS=2 DSEEDS=42 FOLDS=0,1 \
#   EXTRA="trainer.max_epochs=1 data.image_size=32" NAME=... VARIANT=... bash benchmarks/gpu_candidate.sh
set -u
: "${NAME:?set NAME (a name for the candidate sweeps) and VARIANT (its overrides)}" "${VARIANT:?set VARIANT}"
OUT=${OUT:-/tmp/gpu_out}; R=/tmp/results; CV=/tmp/cv; mkdir -p "$OUT" "$R"
source benchmarks/device_env.sh "$R"
smoke_test "${SMOKE_S:-100}" 50
SWEEPS=()  # the candidate before its reference (it may be the slower), fold set 42 before 1
for ds in ${DSEEDS:-42}; do for s in 1 2; do
  SWEEPS+=(--sweep "${NAME}_s${s}_ds${ds}" "seed=$s data.seed=$ds $VARIANT")
  SWEEPS+=(--sweep "recipe_s${s}_ds${ds}" "seed=$s data.seed=$ds")
done; done
# shellcheck disable=SC2086  # EXTRA is a list of overrides
timeout "${SWEEPS_S:-420}" python3 benchmarks/parallel_sweeps.py --out "$CV" --jobs "${JOBS:-20}" --threads 1 --folds "${FOLDS:-0,1,2,3,4}" \
  --stop "${STOP:-400}" "${SWEEPS[@]}" experiment=recipe "${BUSI[@]}" trainer.accelerator="${ACCEL:-gpu}" \
  trainer.precision="${PREC:-bf16-mixed}" ${EXTRA:-} > "$R/sweeps.log" 2>&1
tail -n 5 "$R/sweeps.log"
for ds in ${DSEEDS:-42}; do for v in "$NAME" recipe; do
  for s in 1 2; do
    OMP_NUM_THREADS=2 timeout "${EVAL_S:-180}" python3 benchmarks/decision_bias.py "$CV/${v}_s${s}_ds${ds}" \
      > "$R/val_${v}_s${s}_ds${ds}.md" 2> "$R/val_${v}_s${s}_ds${ds}.err" &
  done
  OMP_NUM_THREADS=2 timeout "${EVAL_S:-180}" python3 benchmarks/ensemble_val.py "$CV/${v}_s1_ds${ds}" \
    "$CV/${v}_s2_ds${ds}" > "$R/ensemble_${v}_ds${ds}.md" 2> "$R/ensemble_${v}_ds${ds}.err" &
done; done
wait
cp "$CV/times.json" "$R/" 2>/dev/null
tar czf "$OUT/results.tar.gz" --exclude='*.ckpt' -C /tmp results cv
for f in "$R"/val_*.md "$R"/ensemble_*.md; do echo "== $f"; cat "$f"; tail -n 2 "${f%.md}.err"; done
ls -la "$OUT"
