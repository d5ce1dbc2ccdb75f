#!/usr/bin/env bash
# The numeric tests once per ATen CPU kernel set below the machine's own ("default": scalar,
# "avx2"; CI's main test run covers the native one, e.g. AVX-512): a test that passes on one
# vector width and fails on another depends on float summation order, which the tests must not.
# Triton (interpreted by numpy), torch.compile and opcheck cases are left out: ATen's vector width
# does not reach them; so is topk_mask, whose tests use small-integer inputs (exact sums in any order). Usage: .ci/cpu_capabilities.sh [python]  (fgreid_ops importable by it)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python}
tests=(
  tests/test_models.py::test_a_small_gradient_step_lowers_the_loss
  tests/test_models.py::test_same_outputs_and_gradients_with_use_reference
  tests/test_models.py::test_cuhs_trains_and_evaluates
  tests/test_models.py::test_fg_video_trains_on_fgpr_and_evaluates
  tests/test_evaluate.py
  tests/test_batch_hard_triplet.py
  tests/test_gem.py
  tests/test_mask_upsample_mul.py
)
for capability in default avx2; do
  echo "=== ATEN_CPU_CAPABILITY=$capability"
  ATEN_CPU_CAPABILITY=$capability "$python" -c \
    "import torch; print('ATen CPU capability:', torch.backends.cpu.get_cpu_capability())"
  ATEN_CPU_CAPABILITY=$capability "$python" -m pytest -q -x -p no:cacheprovider \
    -k "not triton and not compile and not opcheck" "${tests[@]}"
done
