#!/usr/bin/env bash
# GPU readiness check (issue 14, item 9): one command, under 8 minutes on one modern GPU.
#
#   bash scripts/gpu_check.sh            # uses .venv/bin/python, or $PYTHON
#
# Needs a CUDA build of torch (the project pins the CPU wheel; on a GPU machine install the CUDA wheel
# of the same version) and, for ratio 3, diffusers ('.[bench]'). Runs:
#   1. tests/test_gpu.py: bf16 training steps on CUDA, CUDA sampling against a float64 CPU reference
#      (stated tolerance: at most 10x the CPU float32 error, and 1e-4), torch.compile on CUDA, nccl DDP
#      when two GPUs exist, and the CPU versions of the bf16 / channels_last / fused Adam / compile paths;
#   2. the training benchmark (ddim_lib's CIFAR-10 UNet vs diffusers', one Adam step, batch 128) on
#      CUDA in float32, bf16 autocast, and bf16 + channels_last.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
start=$(date +%s)

"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda}); nothing to check")
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
PYEOF

echo "== tests/test_gpu.py"
timeout 300 "$PY" -m pytest tests/test_gpu.py -q -rs -s -p no:cacheprovider

echo "== training benchmark on CUDA (seconds per Adam step, batch 128, CIFAR-10 UNet)"
mkdir -p build
for variant in "" "--bf16" "--bf16 --channels-last"; do
    name=$(echo "fp32 $variant" | tr -d ' -' )
    # shellcheck disable=SC2086
    timeout 90 "$PY" -m benchmarks.training --device cuda --batch 128 --repeats 5 --warmup 2 $variant \
        | tee "build/gpu_train_${name}.json" | "$PY" -c \
        "import json,sys; r=json.load(sys.stdin); print(f\"  {'$variant' or 'float32':24s} ddim_lib {r['ddim_lib']['median_s']:.4f} s  diffusers {r['diffusers']['median_s']:.4f} s\")"
done
echo "gpu_check: done in $(( $(date +%s) - start )) s"
