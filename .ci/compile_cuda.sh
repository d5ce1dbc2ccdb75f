#!/usr/bin/env bash
# Builds the real CUDA extension (every csrc/cuda/*.cu plus the C++ sources) against a CUDA
# build of torch on a machine without a GPU, then loads it and checks that CUDA kernels
# registered. A .cu that does not compile or link turns CI red.
# Usage: .ci/compile_cuda.sh PYTHON_OF_A_CUDA_TORCH_VENV
set -euo pipefail
PY=${1:?usage: compile_cuda.sh python-with-cuda-torch}
cd "$(dirname "$0")/.."
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-2}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
start=$(date +%s)
"$PY" setup.py -q build_ext --build-lib "$build/lib" --build-temp "$build/tmp"
so=$(find "$build/lib" -name '_C*.so' | head -n 1)
[ -n "$so" ] || { echo "compile_cuda: no extension was built"; exit 1; }
"$PY" - "$so" <<'PY'
import sys, glob, torch
torch.ops.load_library(sys.argv[1])
names = {name.split("::")[1].split(".")[0] for name in torch._C._dispatch_get_all_op_names() if name.startswith("fgreid::")}
ops = sorted(op for op in names if "_triton" not in op)  # Triton schemas get their kernels from Python
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fgreid::{op}", "CUDA")]
cu = sorted(glob.glob("csrc/cuda/*.cu"))
print(f"compile_cuda: built {len(cu)} .cu file(s); fgreid ops with a CUDA kernel: "
      f"{len(ops) - len(missing)}/{len(ops)} (without: {', '.join(missing) or 'none'})")
PY
echo "compile_cuda: $(( $(date +%s) - start )) s"
