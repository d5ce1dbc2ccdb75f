"""Backend choice, from static facts only (device type, what was built, whether Triton imports,
the FGREID_OPS_BACKEND variable read once, the use_reference() switch) — never from tensor
values, so torch.compile sees one path and does not break the graph.

Backends: "reference" (plain PyTorch, fgreid_ops.reference), "cpu" (C++ kernels on CPU tensors),
"cuda" (CUDA C++ kernels), "triton" (Triton kernels: CUDA tensors, or CPU tensors when
TRITON_INTERPRET=1). `dispatch` is the one place that turns a choice into a call."""

import contextlib
import os

import torch

from . import _registry
from ._extension import has_extension, require_extension
from ._triton_support import triton_available

BACKENDS = ("reference", "cpu", "cuda", "triton")

# Default kernel on CUDA tensors per public op, when both GPU backends exist. Set from bench/ results.
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


def _op_def(op) -> _registry.OpDef:
    return _registry.get(op) if isinstance(op, str) else op


def resolve(op, device_type: str, backend=None) -> str:
    """The backend that runs `op` (an OpDef, or the name of one or of its public op) on tensors
    of `device_type`."""
    op = _op_def(op)
    name = op.op
    backend = backend or _ENV_BACKEND
    if _force_reference or backend == "reference":
        return "reference"
    if backend is None or backend == "auto":
        if device_type == "cpu":
            backend = "cpu"
        elif device_type == "cuda":
            backend = GPU_DEFAULT.get(name, "cuda")
            if backend == "cuda" and not _has_cuda_kernel(op) and triton_available("cuda") and op.triton:
                backend = "triton"
        else:
            raise ValueError(f"fgreid_ops.{name}: tensors on {device_type} are not supported (cpu or cuda)")
    if backend not in BACKENDS:
        raise ValueError(f"fgreid_ops.{name}: expected backend to be one of {list(BACKENDS)} or None, got {backend!r}")
    if backend not in op.backends:
        raise _registry.no_kernel(op, backend)
    if backend == "triton":
        if not triton_available(device_type):
            raise RuntimeError(
                f"fgreid_ops.{name}: backend 'triton' needs triton and CUDA tensors "
                f"(or TRITON_INTERPRET=1 for CPU tensors); got {device_type} tensors"
            )
        return backend
    if backend != device_type:
        raise ValueError(f"fgreid_ops.{name}: backend {backend!r} cannot run on {device_type} tensors")
    require_extension(name)
    if backend == "cuda" and not _has_cuda_kernel(op):
        raise RuntimeError(f"fgreid_ops.{name}: the extension was built without CUDA kernels")
    return backend


def kernel(op, backend: str):
    """The callable of `op` for a resolved `backend`: its reference, or its registered kernel op."""
    op = _op_def(op)
    if backend == "reference":
        if op.reference is None:
            raise _registry.no_kernel(op, backend)
        return op.reference
    return getattr(torch.ops.fgreid, op.kernel_name(backend))


def dispatch(op, device_type: str, backend, *args):
    """``op(*args)`` on the backend `resolve` picks: the one backend branch of every public op."""
    return kernel(op, resolve(op, device_type, backend))(*args)


def _has_cuda_kernel(op: _registry.OpDef) -> bool:
    return (has_extension() and "cuda" in op.cpp
            and torch._C._dispatch_has_kernel_for_dispatch_key(f"{_registry.NAMESPACE}::{op.name}", "CUDA"))


__all__ = ["BACKENDS", "GPU_DEFAULT", "dispatch", "kernel", "resolve", "triton_available", "use_reference"]
