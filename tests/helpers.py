"""Shared test utilities: which (backend, device) pairs run here, dtype tolerances, layouts."""

import pytest
import torch

import fgreid_ops
from fgreid_ops import _backend

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

# Tolerances of a kernel against the float64 reference, cast to the kernel's dtype.
# fp16/bf16: inputs are rounded to the dtype first, then compared after float32 accumulation,
# so the error is a few ulps of the output dtype.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=4e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-2),
}
GRAD_TOLERANCES = {
    torch.float64: dict(rtol=1e-9, atol=1e-11),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-3),
    torch.bfloat16: dict(rtol=5e-2, atol=2e-2),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def kernel_backends():
    """(backend, device) pairs whose kernels can run on this machine."""
    pairs = [pytest.param("cpu", "cpu", id="cpu")]
    if _backend.triton_available("cpu"):
        pairs.append(pytest.param("triton", "cpu", id="triton-interpret"))
    pairs.append(pytest.param("cuda", "cuda", id="cuda", marks=[requires_cuda, pytest.mark.cuda]))
    pairs.append(pytest.param("triton", "cuda", id="triton-cuda", marks=[requires_cuda, pytest.mark.cuda]))
    return pairs


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as x in another memory layout: contiguous, channels_last, or a strided
    view (every other column of a wider tensor)."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    raise ValueError(layout)


LAYOUTS = ["contiguous", "channels_last", "strided"]


def assert_close(actual, expected, dtype, grad=False, msg=""):
    tol = (GRAD_TOLERANCES if grad else TOLERANCES)[dtype]
    torch.testing.assert_close(actual, expected.to(actual.dtype), **tol, msg=msg or None)


__all__ = ["fgreid_ops"]
