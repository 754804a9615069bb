#!/usr/bin/env bash
# The default pipeline on a lent GPU machine (`benchmarks/bench_gpu_repro.py`: `dvc repro` in a
# fresh copy of this tree, timed per stage, and the test accuracy it reached), for the second
# call of a lease, right after benchmarks/gpu_check.sh on the same machine:
#   1. bash benchmarks/gpu_carry.sh repro                       (here, once)
#   2. run: bash benchmarks/gpu_check.sh > $OUT/all.log 2>&1    carry .whl .devdata
#   3. run: bash benchmarks/gpu_repro.sh > $OUT/repro.log 2>&1  carry .whl .whl-repro
# within the machine's warm period (30 s on an H200), so that the Fashion-MNIST files that step 2
# put in the download stage's first mirror are still there: the wheels and the data do not fit
# in one call (64 MiB). The machine has PyTorch (CPython 3.12) but not MLflow, DVC, Great
# Expectations, Optuna ...: .whl and .whl-repro hold them at requirements.lock's versions and
# are installed into /tmp/site-repro; `multitask` is this tree's package (src/) on PYTHONPATH.
# Both calls within a 15-minute lease (a start of one to two minutes counted in): step 2 with
# GPU_TESTS_LIMIT=150 GPU_BENCH_LIMIT=200 GPU_BACKBONES_LIMIT=60 in front (timeout_s 440),
# step 3 with timeout_s 330 (GPU_REPRO_LIMIT, the pipeline's own limit: 300 s).
# Rows: $OUT/benchmarks_gpu_repro.json (the group `gpu_repro` of reports/benchmarks.json).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-reports}"
mkdir -p "$out"
site=/tmp/site-repro
wheels=$(compgen -G ".whl/*.whl"; compgen -G ".whl-repro/*.whl")
if compgen -G ".whl-repro/*.whl" >/dev/null; then
  # shellcheck disable=SC2086  # one wheel a word
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" $wheels || exit 1
elif [ ! -d "$site" ]; then
  echo "gpu_repro.sh: no .whl-repro/ to install and no $site: run benchmarks/gpu_carry.sh" \
    "repro here and carry .whl and .whl-repro" >&2
  exit 2
fi
mirror=/usr/share/datasets/fashion-mnist
if [ ! -f "$mirror/train-images-idx3-ubyte.gz" ]; then
  if compgen -G ".devdata/*.gz" >/dev/null; then
    mkdir -p "$mirror" && cp .devdata/*.gz "$mirror"/
  else
    echo "gpu_repro.sh: no Fashion-MNIST in $mirror: run benchmarks/gpu_check.sh first on" \
      "the same machine (it copies .devdata there), or carry .devdata" >&2
    exit 2
  fi
fi
# The stages call `multitask`: this tree's package, run by the machine's python3.
mkdir -p "$site/bin"
printf '#!/bin/sh\nPYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m multitask "$@"\n' \
  > "$site/bin/multitask"
chmod +x "$site/bin/multitask"
export PATH="$site/bin:$PATH" PYTHONPATH="$PWD/src:$PWD:$site" PYTHONUNBUFFERED=1
# The copy of the tree on that machine has no Git history; where git is there, the tree
# becomes one commit (the benchmark clones it), else the benchmark copies it for DVC without Git.
if command -v git >/dev/null && ! git rev-parse --git-dir >/dev/null 2>&1; then
  git init -q && printf '/.whl*/\n/.devdata/\n/.gl/\n' >> .git/info/exclude && git add -A &&
    git -c user.name=gpu-check -c user.email=gpu-check@localhost commit -qm "working tree" ||
    exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout "${GPU_REPRO_LIMIT:-300}" python3 -m benchmarks.run gpu_repro
status=$?
cp reports/benchmarks.json "$out/benchmarks_gpu_repro.json" 2>/dev/null || true
exit $status
