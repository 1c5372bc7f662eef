#!/usr/bin/env bash
# The one-shot CUDA check, for a machine with a GPU (the device tool's): under 8 minutes.
#   1. the CUDA tests (pytest -m gpu);
#   2. `xcam bench` on CUDA: eager, ONNX Runtime's CUDA provider and the in-graph file,
#      resnet50 at batch 1 and 32, next to plain inference;
#   3. the dataset benchmark on CUDA (benchmarks/dataset.py --device cuda).
# Results go to benchmarks/results/ (gpu_check.txt, bench_cuda.*, dataset_cuda.*) and, when
# $OUT is set (the device tool), are copied there too. Sets up .venv first where it's missing.
set -uo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
mkdir -p "$R"
[ -x .venv/bin/python ] || python3 scripts/dev.py setup >/dev/null
PY=.venv/bin/python
export PYTHONUNBUFFERED=1
{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ) at $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  $PY -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| onnxruntime', ort.__version__, ort.get_available_providers())"
  echo "## CUDA tests"
  timeout 180 $PY -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tail -15
} 2>&1 | tee "$R/gpu_check.txt"
echo "## xcam bench on CUDA" | tee -a "$R/gpu_check.txt"
timeout 200 $PY -m xcam.cli bench --models torchvision:resnet50 --methods gradcam \
  --backends eager,onnxruntime,ingraph --devices cuda --batch 1,32 --repeats 5 --no-memory \
  --json "$R/bench_cuda.json" --markdown "$R/bench_cuda.md" 2>&1 | tail -20 | tee -a "$R/gpu_check.txt"
echo "## dataset benchmark on CUDA" | tee -a "$R/gpu_check.txt"
timeout 150 $PY benchmarks/dataset.py --device cuda --rounds 1 --skip ray,memory \
  --out "$R/dataset_cuda" 2>&1 | tail -25 | tee -a "$R/gpu_check.txt"
if [ -n "${OUT:-}" ]; then
  cp "$R"/gpu_check.txt "$R"/bench_cuda.* "$R"/dataset_cuda.* "$OUT"/ 2>/dev/null
fi
