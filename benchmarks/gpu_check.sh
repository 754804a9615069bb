#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent GPU machine (see the device tool): the
# CUDA tests, then `benchmarks/bench_gpu.py` (the trainer's images/s with the data resident, the
# training step at large batches eager / CUDA graph / torch.compile, ResNet-18, the weighting
# table and the baselines' batched ensembles on the GPU), then the backbone rows (each
# torchvision encoder, CPU and GPU). Each part has its own time limit (GPU_TESTS_LIMIT,
# GPU_BENCH_LIMIT, GPU_BACKBONES_LIMIT: 200, 300 and 80 s) and a failing part does
# not stop the others; the exit status says whether all passed. Logs and the device's
# benchmarks.json land in $OUT (or reports/). The default pipeline on the GPU is a second call
# to the same machine: benchmarks/gpu_repro.sh.
#
# That machine has PyTorch but not every package this project pins, and no Fashion-MNIST.
# Carry what is missing (both folders are ignored by git; benchmarks/gpu_carry.sh makes them):
#   .whl/      pure-Python or cp312 wheels: pydantic, pydantic-core, annotated-types,
#              typing-inspection, typing-extensions (and torchjd, qpsolvers, quadprog for the
#              peer rows); installed into /tmp/site first
#   .devdata/  the four Fashion-MNIST .gz files (Debian's dataset-fashion-mnist), copied to the
#              download stage's first mirror, /usr/share/datasets/fashion-mnist/, when absent
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-reports}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
mirror=/usr/share/datasets/fashion-mnist
if [ ! -d "$mirror" ] && compgen -G ".devdata/*.gz" >/dev/null; then
  mkdir -p "$mirror" && cp .devdata/*.gz "$mirror"/
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log
  local name=$1 limit=$2 started=$SECONDS
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - started)) s"
  [ "$rc" = 0 ] || status=1
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.is_available() and torch.cuda.get_device_name(0))"
part gpu_tests "${GPU_TESTS_LIMIT:-200}" python3 -m pytest -q -p no:cacheprovider -m cuda \
  tests/unit/test_cuda.py tests/unit/test_memmap_data.py
part gpu_bench "${GPU_BENCH_LIMIT:-300}" python3 -m benchmarks.run gpu
part gpu_bench_backbones "${GPU_BACKBONES_LIMIT:-80}" python3 -m benchmarks.run backbones
cp reports/benchmarks.json "$out/benchmarks_gpu.json" 2>/dev/null || true
exit $status
