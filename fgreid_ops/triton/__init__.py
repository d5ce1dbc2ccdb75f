"""Triton kernels, one module per op. Importing this package registers them as the
implementations of the fgreid::<op>_triton schemas (CUDA tensors; CPU tensors too when
TRITON_INTERPRET=1 was set before import, which is how CI runs them)."""

import os

try:
    import triton  # noqa: F401

    AVAILABLE = True
except ImportError:
    AVAILABLE = False

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICES = ("cuda", "cpu") if INTERPRET else ("cuda",)

if AVAILABLE:
    from . import batch_hard_triplet, evaluate, gem, rerank, topk_mask  # noqa: F401
