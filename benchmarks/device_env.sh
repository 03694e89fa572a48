# Sourced by the device scripts (gpu_session.sh, gpu_ensemble_length.sh) with the folder for logs:
#   source benchmarks/device_env.sh DIR
# installs the carried wheels (.whl: what the device image lacks) and records the GPU.
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$1/pip.log" 2>&1 || echo "pip install failed (see pip.log)"
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$1/gpu.txt"; nproc
