#!/usr/bin/env bash
# Runs on a lent GPU machine, from the repository root, after `python -m bench.gpu_prepare` here carried `.gpu/`.
#   bash bench/gpu_device.sh check    versions, GPU, providers; installs the carried serving wheels
#   bash bench/gpu_device.sh bench [bench/gpu.py options]
#                                     joins carried onnxruntime-gpu parts if any, runs bench/gpu.py and the
#                                     CUDA path test (tests/e2e/test_gpu.py)
# What it installs goes to /tmp (kept while the machine stays warm); results go to $OUT (the device tool's).
set -euo pipefail
mode=${1:-bench}
OUT=${OUT:-/tmp/gpu-out}
SITE=/tmp/gpu-site
mkdir -p "$OUT" "$SITE"
export PYTHONUNBUFFERED=1 PYTHONPATH="$SITE:$PWD" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MINILM_DIR="$PWD/.gpu/minilm-fp16"

install_wheels() {
  if [ -d .gpu/wheels ] && [ ! -e "$SITE/.wheels-done" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      .gpu/wheels/*.whl && touch "$SITE/.wheels-done"
  fi
  if [ -f .gpu/ort/WHEEL_NAME ] && ls .gpu/ort/part-* >/dev/null 2>&1 && [ ! -e "$SITE/.ort-done" ]; then
    wheel="/tmp/$(cat .gpu/ort/WHEEL_NAME)"
    cat .gpu/ort/part-* > "$wheel"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$wheel" && touch "$SITE/.ort-done"
  fi
}

# onnxruntime-gpu finds CUDA and cuDNN through the loader; the image ships them as nvidia-* Python packages.
cuda_libs() {
  python3 - <<'EOF'
import pathlib, site
dirs = set()
for root in site.getsitepackages():
    for lib in (pathlib.Path(root) / "nvidia").glob("**/lib*.so*"):
        dirs.add(str(lib.parent))
print(":".join(sorted(dirs)))
EOF
}

install_wheels
export LD_LIBRARY_PATH="$(cuda_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 - <<'EOF' | tee -a "$OUT/gpu.txt"
import onnxruntime, torch, sys
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
EOF
[ "$mode" = check ] && exit 0

python3 - <<'EOF'
import onnxruntime, sys
sys.exit(0 if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else
         "onnxruntime here has no CUDAExecutionProvider: carry onnxruntime-gpu (bench/gpu_prepare.py --ort-gpu)")
EOF
status=0
python3 -m bench.gpu --model .gpu/minilm-fp16 --artifact /tmp/gpu-artifact --out "$OUT" "${@:2}" 2>&1 \
  | tee "$OUT/gpu.log" || status=$?
# The CUDA path test (fp32 and fp16 graphs on CUDAExecutionProvider vs CPU over HTTP); it skips without CUDA.
python3 -m pytest -q -p no:cacheprovider tests/e2e/test_gpu.py 2>&1 | tail -5 | tee -a "$OUT/gpu.log" || status=$?
exit "$status"
