#!/usr/bin/env bash
# Prepares what benchmarks/gpu_check.sh needs on a bare GPU machine that has PyTorch (Python
# 3.12) but not this project's other packages, and no Fashion-MNIST:
#   .whl/      the missing wheels at requirements.lock's versions (binary ones for CPython 3.12
#              on x86-64 Linux), and the peer library of the weighting rows
#   .devdata/  Fashion-MNIST's four .gz files from Debian's dataset-fashion-mnist
# Both folders are ignored by git (added to .git/info/exclude here); a tool that copies the
# working tree to the GPU machine must carry them. Run from anywhere, on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
for ignored in /.whl/ /.devdata/; do
  grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
pinned() {  # NAME==VERSION as pinned (comments dropped)
  grep -ihE "^$1==" requirements.lock benchmarks/requirements.txt | head -1 | awk '{print $1}'
}
wheels=()
for name in pydantic pydantic_core annotated-types typing-inspection typing_extensions \
    torchjd qpsolvers quadprog; do
  spec=$(pinned "$name")
  [ -n "$spec" ] || { echo "no pinned version of $name" >&2; exit 1; }
  wheels+=("$spec")
done
rm -rf .whl && mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wheels[@]}"
source=/usr/share/datasets/fashion-mnist
[ -f "$source/train-images-idx3-ubyte.gz" ] || bash scripts/system_deps.sh data
mkdir -p .devdata && cp "$source"/*.gz .devdata/
du -sh .whl .devdata
