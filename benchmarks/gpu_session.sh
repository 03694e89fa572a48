#!/usr/bin/env bash
# The lent-GPU session of issue 8, one call: GPU smoke test + throughput, then the recipe ablation.
# On the device machine, from the repo root, with .whl (wheels of what its image lacks), .busi_carry
# and .phantom_carry (benchmarks/portable_copy.py) carried along:
#   bash benchmarks/gpu_session.sh          # results under $OUT
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
source benchmarks/device_env.sh "$OUT"
PHANTOM="data=csv data.options.manifest=.phantom_carry/manifest.csv data.dedup=false"
BUSI="data=csv data.options.manifest=.busi_carry/manifest.csv data.dedup=false"
timeout "${SMOKE_S:-100}" python3 benchmarks/gpu_smoke.py --out "$OUT" --repeats 2 --steps 30 \
  --data $PHANTOM data.image_size=128 2>&1 | tail -n 25
timeout "${ABLATION_S:-450}" python3 benchmarks/recipe_ablation.py --out /tmp/abl --jobs "${JOBS:-15}" --threads 1 \
  --budget "${BUDGET:-380}" --stop "${STOP:-430}" --phantom "$PHANTOM trainer.accelerator=gpu" \
  $BUSI trainer.accelerator=gpu > "$OUT/ablation.log" 2>&1
tail -n 70 "$OUT/ablation.log"
tar czf "$OUT/ablation.tar.gz" --exclude='*.ckpt' -C /tmp abl
ls -la "$OUT"
