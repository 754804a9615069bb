#!/usr/bin/env bash
# Prepares what benchmarks/gpu_check.sh needs on a bare GPU machine that has PyTorch (Python
# 3.12) but not this project's other packages, and no Fashion-MNIST:
#   .whl/      the missing wheels at requirements.lock's versions (binary ones for CPython 3.12
#              on x86-64 Linux), and the peer library of the weighting rows
#   .devdata/  Fashion-MNIST's four .gz files from Debian's dataset-fashion-mnist
#   .whl-repro/ with `repro` as argument: every other package of requirements.lock that the
#              pipeline needs (MLflow, DVC, Great Expectations, Optuna ... ; about 51 MiB) and the
#              GPU image lacks, for benchmarks/gpu_repro.sh. Too large to travel beside .devdata
#              in one call: carry it in a second call to the same machine (see gpu_repro.sh).
# The folders are ignored by git (added to .git/info/exclude here); a tool that copies the
# working tree to the GPU machine must carry them. Run from anywhere, on this machine.
# GPU_PYTHON (default 3.12, the GPU image's) picks the wheels' Python version.
set -euo pipefail
cd "$(dirname "$0")/.."
for ignored in /.whl/ /.whl-repro/ /.devdata/; do
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
download() {  # download FOLDER SPEC...: binary wheels for CPython 3.12 on x86-64 Linux
  local folder=$1
  shift
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "${GPU_PYTHON:-3.12}" --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$folder" "$@"
}
rm -rf .whl && mkdir -p .whl
download .whl "${wheels[@]}"
if [ "${1:-}" = repro ]; then
  # requirements.lock's packages that the GPU image has (its package list as of 2026-11-17,
  # the device tool's KINDS.md; protobuf is carried all the same, its version being what
  # MLflow's and OpenTelemetry's wheels were resolved against), the test and lint tools, the
  # team server's and the study dashboard's packages, and those in .whl/ (typing-extensions too).
  skip=" aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer
    click cloudpickle colorama contourpy cycler execnet filelock fonttools frozenlist fsspec h11
    idna iniconfig jinja2 joblib kiwisolver markdown-it-py markupsafe matplotlib mdurl mpmath
    multidict narwhals networkx numpy packaging pandas pathspec pillow pluggy propcache psutil
    pyarrow pygments pyparsing pytest pytest-timeout pytest-xdist python-dateutil pyyaml
    requests rich scikit-learn scipy six sympy tabulate threadpoolctl torch torchvision tqdm
    triton urllib3 werkzeug yarl zipp ruff zizmor playwright check-jsonschema psycopg2-binary
    optuna-dashboard pydantic pydantic-core annotated-types typing-inspection typing-extensions
    torchjd qpsolvers quadprog "
  skip=" $(echo $skip) "  # one space between names
  specs=()
  while IFS= read -r spec; do
    name=$(echo "${spec%%==*}" | tr 'A-Z_.' 'a-z--')
    case "$name" in nvidia-*|cuda-*) continue ;; esac
    [[ "$skip" == *" $name "* ]] && continue
    specs+=("$spec")
  done < <(grep -E '^[A-Za-z0-9_.-]+==' requirements.lock | awk '{print $1}')
  rm -rf .whl-repro && mkdir -p .whl-repro
  # antlr4-python3-runtime (hydra's, DVC's) is published as a source archive only: built here
  download .whl-repro $(printf '%s\n' "${specs[@]}" | grep -v '^antlr4-python3-runtime==')
  python3 -m pip wheel --quiet --no-deps -w .whl-repro \
    $(printf '%s\n' "${specs[@]}" | grep '^antlr4-python3-runtime==')
  du -sh .whl-repro
fi
source=/usr/share/datasets/fashion-mnist
[ -f "$source/train-images-idx3-ubyte.gz" ] || bash scripts/system_deps.sh data
mkdir -p .devdata && cp "$source"/*.gz .devdata/
du -sh .whl .devdata
