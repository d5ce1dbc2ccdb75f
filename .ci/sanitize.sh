#!/usr/bin/env bash
# CI: builds the CPU kernels a second time with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake, its own build folder: the library, the ctest and the Python module _C over it), runs the
# ctest, then a fast subset of the Python tests (each op's forward, backward and bad-input tests,
# and tests/test_cpp_hardening.py) against that module. Any sanitizer report fails the step.
# Usage: .ci/sanitize.sh [WORK_DIR]   (with the venv of torch + test requirements active)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
start=$(date +%s)

cmake -S . -B "$work/asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFGREID_SANITIZE=ON -DFGREID_PYTHON_MODULE=ON \
  -DFGREID_PYTHON_INCLUDE_DIR="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
  -DCMAKE_PREFIX_PATH="$(python -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" >/dev/null
cmake --build "$work/asan" -j "${MAX_JOBS:-2}"
echo "sanitize: built in $(( $(date +%s) - start )) s"

export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# Leaks: CPython and torch keep allocations alive at exit by design.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
(cd "$work/asan" && ctest --output-on-failure)

# A copy of the Python tree whose fgreid_ops/_C is the instrumented module (the source tree's
# in-place build stays as it is).
tree="$work/tree"
rm -rf "$tree" && mkdir -p "$tree"
cp -r fgreid_ops python_models tests pyproject.toml "$tree/"
rm -f "$tree"/fgreid_ops/_C*.so
cp "$work/asan/_C.abi3.so" "$tree/fgreid_ops/"
# Python itself is not instrumented: the ASan runtime must be loaded first, and libstdc++ with it
# (else ASan's __cxa_throw interceptor finds no real __cxa_throw when torch raises a C++ error).
preload="$(c++ -print-file-name=libasan.so) $(c++ -print-file-name=libstdc++.so)"
(cd "$tree" && LD_PRELOAD="$preload" python -m pytest -q -x -p no:cacheprovider \
  tests/test_cpp_hardening.py tests/test_gem.py tests/test_off.py tests/test_mask_upsample_mul.py \
  tests/test_topk_mask.py tests/test_batch_hard_triplet.py tests/test_evaluate.py \
  -k "(forward or backward or bad or raises or hardening or crash or alias) and not triton and not compile and not hypothesis")
echo "sanitize: $(( $(date +%s) - start )) s"
