# Sourced by the device scripts (gpu_session.sh, gpu_ensemble_length.sh, gpu_last_epoch.sh,
# gpu_candidate.sh) with the folder for logs:
#   source benchmarks/device_env.sh DIR
# installs the carried wheels (.whl: what the device image lacks), records the GPU, and defines BUSI
# (the overrides that read .busi_carry, benchmarks/portable_copy.py's copy) and smoke_test SECONDS STEPS
# (the GPU smoke test into DIR; SECONDS=0 skips it).
export PYTHONUNBUFFERED=1
LOGS=$1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$1/pip.log" 2>&1 || echo "pip install failed (see pip.log)"
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$1/gpu.txt"; nproc
BUSI=(data=csv data.options.manifest=.busi_carry/manifest.csv data.dedup=false)
smoke_test() {
  [ "$1" = 0 ] && return
  timeout "$1" python3 benchmarks/gpu_smoke.py --out "$LOGS" --repeats 2 --steps "$2" --data "${BUSI[@]}" \
    data.image_size=128 2>&1 | tail -n 25
}
