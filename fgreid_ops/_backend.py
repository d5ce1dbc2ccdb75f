"""Backend choice, from static facts only (device type, what was built, whether Triton imports,
the FGREID_OPS_BACKEND variable read once, the use_reference() switch) — never from tensor
values, so torch.compile sees one path and does not break the graph.

Backends: "reference" (plain PyTorch, fgreid_ops.reference), "cpu" (C++ kernels on CPU tensors),
"cuda" (CUDA C++ kernels), "triton" (Triton kernels: CUDA tensors, or CPU tensors when
TRITON_INTERPRET=1)."""

import contextlib
import os

from ._extension import has_extension, require_extension

BACKENDS = ("reference", "cpu", "cuda", "triton")

# Default kernel on CUDA tensors per op, when both GPU backends exist. Set from bench/ results.
GPU_DEFAULT = {}

_ENV_BACKEND = os.environ.get("FGREID_OPS_BACKEND") or None
_force_reference = False


@contextlib.contextmanager
def use_reference(enabled: bool = True):
    """Route every op to its plain-PyTorch reference inside the block (for checking a model
    against itself, or on a machine where the extension did not build)."""
    global _force_reference
    previous, _force_reference = _force_reference, enabled
    try:
        yield
    finally:
        _force_reference = previous


def triton_available(device_type: str) -> bool:
    from . import triton as triton_kernels

    if not triton_kernels.AVAILABLE:
        return False
    return device_type == "cuda" or (device_type == "cpu" and triton_kernels.INTERPRET)


def resolve(op: str, device_type: str, backend=None) -> str:
    """The backend that runs `op` on tensors of `device_type`."""
    backend = backend or _ENV_BACKEND
    if _force_reference or backend == "reference":
        return "reference"
    if backend is None or backend == "auto":
        if device_type == "cpu":
            backend = "cpu"
        elif device_type == "cuda":
            backend = GPU_DEFAULT.get(op, "cuda")
            if backend == "cuda" and not _has_cuda_kernel(op) and triton_available("cuda"):
                backend = "triton"
        else:
            raise ValueError(f"fgreid_ops.{op}: tensors on {device_type} are not supported (cpu or cuda)")
    if backend not in BACKENDS:
        raise ValueError(f"fgreid_ops.{op}: expected backend to be one of {list(BACKENDS)} or None, got {backend!r}")
    if backend == "triton":
        if not triton_available(device_type):
            raise RuntimeError(
                f"fgreid_ops.{op}: backend 'triton' needs triton and CUDA tensors "
                f"(or TRITON_INTERPRET=1 for CPU tensors); got {device_type} tensors"
            )
        return backend
    if backend != device_type:
        raise ValueError(f"fgreid_ops.{op}: backend {backend!r} cannot run on {device_type} tensors")
    require_extension(op)
    if backend == "cuda" and not _has_cuda_kernel(op):
        raise RuntimeError(f"fgreid_ops.{op}: the extension was built without CUDA kernels")
    return backend


def _has_cuda_kernel(op: str) -> bool:
    import torch

    return has_extension() and torch._C._dispatch_has_kernel_for_dispatch_key(f"fgreid::{op}", "CUDA")
