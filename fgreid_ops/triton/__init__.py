"""Triton kernels and their launchers, one module per op (`fgreid_ops/triton/<op>.py`), sharing
`_utils.py`. The modules register nothing: each op's description (`fgreid_ops/ops/<op>.py`)
names its launchers and `fgreid_ops._registry` registers them as the `fgreid::<op>_triton` ops
(CUDA tensors; CPU tensors too when TRITON_INTERPRET=1 was set before import)."""

from .._triton_support import AVAILABLE, DEVICES, INTERPRET

__all__ = ["AVAILABLE", "DEVICES", "INTERPRET"]
