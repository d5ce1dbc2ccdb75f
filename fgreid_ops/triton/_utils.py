"""What every Triton launcher shares: the accumulate dtype, grid sizes, the device context and
the input checks (the same as the C++ kernels', so a direct ``torch.ops.fgreid.<op>_triton``
call fails with the same message instead of indexing out of bounds)."""

import contextlib
import functools

import torch
import triton
import triton.language as tl


def acc_dtype(dtype: torch.dtype):
    """(torch dtype, tl dtype) of the accumulation: float64 for float64 input, else float32."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


@triton.jit
def kahan_add(acc, comp, term):
    """acc + term with the rounding error carried in comp (Kahan summation), elementwise. Once the
    sum is inf or NaN it carries no error (inf - inf would turn an infinite sum into NaN)."""
    y = term - comp
    total = acc + y
    return total, tl.where(total - total == 0, (total - acc) - y, 0.0)


def grid(*sizes_and_blocks):
    """A launch grid from (size, block) pairs: ``grid((R, BLOCK_R), (HW, BLOCK_HW))``."""
    return tuple(triton.cdiv(size, block) for size, block in sizes_and_blocks)


def device_context(device: torch.device):
    """Triton launches on the current CUDA device: run a launch under the tensor's device."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def launcher(check):
    """Decorates a launcher: `check(*args)` first (it raises the op's input errors), then the
    launch under the device of the first tensor argument."""

    def decorate(launch):
        @functools.wraps(launch)
        def run(*args):
            check(*args)
            device = next(a.device for a in args if isinstance(a, torch.Tensor))
            with device_context(device):
                return launch(*args)

        return run

    return decorate
