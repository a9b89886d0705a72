#!/usr/bin/env bash
# One GPU check on a bare machine with no network: build loraquant with CUDA, run the
# CUDA tests, then the GPU bench, printing everything. Meant to finish in under 8 minutes
# on an H200 (each step has its own time limit below).
#
# The machine needs nvcc, cmake, and a python3 with pybind11, scikit-build-core, torch,
# numpy and pytest. cmeel-eigen (a build requirement, header-only) is usually missing
# there: carry it as a wheel in .whl/ at the repository root, which git ignores:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl cmeel-eigen==3.4.1
#
# (cmeel-eigen is pure headers, a py3-none-any wheel.) Any .whl/*.whl is installed into
# /tmp/lq-site and put on PYTHONPATH before the build. Usage, from the repository root:
#
#   bash bench/gpu_check.sh              # LQ_SANITIZE=0 skips the compute-sanitizer step
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
fail=0

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || fail=1
nvcc --version | tail -2
$PY -c "import sys, torch, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__)"

if ls .whl/*.whl >/dev/null 2>&1; then
  step "carried wheels: $(ls .whl)"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/lq-site .whl/*.whl || fail=1
  export PYTHONPATH=/tmp/lq-site${PYTHONPATH:+:$PYTHONPATH}
fi

step "build (LORAQUANT_CUDA=ON, no build isolation)"
b0=$(date +%s)
if ! timeout 200 $PY -m pip install --no-build-isolation --no-deps -v . \
      -Ccmake.define.LORAQUANT_CUDA=ON -Cbuild-dir=build/gpu-check 2>&1 |
    grep -E "loraquant:|Building|Linking|error|warning|Successfully|ERROR"; then
  echo "BUILD FAILED"; exit 1
fi
echo "build took $(( $(date +%s) - b0 ))s"
$PY -c "import loraquant, loraquant._core as c; print(loraquant.build_info()); print(c.cuda_build(), 'devices', c.cuda_device_count())" || exit 1

step "machine code in the module (sm_80, sm_89, sm_90a; PTX of sm_90)"
SO=$($PY -c "import loraquant._core as c; print(c.__file__)")
cuobjdump --list-elf "$SO" | sed 's/.*\.\(sm_[0-9a]*\)\..*/\1/' | sort | uniq -c
cuobjdump --list-ptx "$SO" | sed 's/.*\.\(sm_[0-9a]*\)\..*/\1/' | sort | uniq -c
echo "tensor-core instructions in the sm_90a code: $(cuobjdump --dump-sass --gpu-architecture sm_90a "$SO" 2>/dev/null | grep -c HMMA)"

step "CUDA tests (the emulated ones run in CI already)"
timeout 110 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py --maxfail=5 -ra -k "not emulated" || fail=1

step "GPU bench"
timeout 90 $PY bench/gpu_bench.py || fail=1

if [ "${LQ_SANITIZE:-1}" = "1" ] && command -v compute-sanitizer >/dev/null; then
  step "compute-sanitizer memcheck on a few kernel tests"
  timeout 70 compute-sanitizer --tool memcheck --error-exitcode 9 \
      $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py -x \
      -k "sgmv_segments or 16-129-127-fp16" || fail=1
fi

step "done, status $fail"
exit $fail
