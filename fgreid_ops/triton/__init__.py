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
    from . import batch_hard_triplet, evaluate, gem, topk_mask  # noqa: F401

OPS = ("gem_triton", "gem_triton_backward", "topk_mask_triton", "topk_mask_triton_backward",
       "batch_hard_triplet_mine_triton", "batch_hard_triplet_mine_triton_backward", "evaluate_triton",
       "evaluate_count_triton")


def _register_unavailable():
    """On the devices without a Triton kernel here (CPU without TRITON_INTERPRET=1; everything
    when triton is missing), a direct torch.ops call raises an error that names the device
    rather than the dispatcher's "Could not run ... with arguments from the 'CPU' backend"."""
    import torch

    from .._extension import has_extension

    devices = tuple(d for d in ("cpu", "cuda") if d not in DEVICES or not AVAILABLE)
    if not has_extension() or not devices:
        return
    for name in OPS:
        def unavailable(*args, _name=name):
            device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
            need = "the triton package" if not AVAILABLE else "CUDA tensors (or TRITON_INTERPRET=1 set before import for CPU tensors)"
            raise RuntimeError(f"fgreid_ops.{_name}: the Triton kernel needs {need}; got tensors on device {device}")

        torch.library.register_kernel(f"fgreid::{name}", devices, unavailable)


_register_unavailable()
