#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent GPU machine (see the device tool):
# the CUDA tests and the GPU rows of the training, weighting, data-parallel and backbone
# benchmarks (one process per GPU where there are several; backbones: each torchvision encoder
# at 1x36x36 and at its ImageNet size, batch 64, bf16 autocast).
#
# That machine has PyTorch but not every package this project pins. Carry the missing pure
# Python wheels in .whl/ (ignored by git), e.g. pydantic, pydantic-core, annotated-types,
# typing-inspection, pillow (the manifest rows) and torchvision (matching the machine's torch, for
# the backbone rows),
# and install them first:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
# Results land in $OUT (or reports/ when OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-reports}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
status=0
python3 -m pytest -q -p no:cacheprovider -m cuda tests/unit/test_cuda.py tests/unit/test_memmap_data.py 2>&1 | tee "$out/gpu_tests.log" || status=1
BENCH_MANIFEST_DEVICE=cuda python3 -m benchmarks.run training weighting distributed manifest 2>&1 | tee "$out/gpu_bench.log" || status=1
if python3 -c "import torchvision" 2>/dev/null; then
  python3 -m benchmarks.run backbones 2>&1 | tee "$out/gpu_bench_backbones.log" || status=1
else
  echo "backbone rows skipped: torchvision is not installed (carry its wheel in .whl/)" \
    | tee "$out/gpu_bench_backbones.log"; status=1
fi
cp reports/benchmarks.json "$out/benchmarks_gpu.json" 2>/dev/null || true
exit $status
