"""The one place for input checks on the Python side. Messages match csrc/include/fgreid_ops/checks.h
("fgreid_ops.<op>: expected <arg> ..."). Plain if/raise, not `assert` (stripped by `python -O`) and
not torch._check with a message closure over tensors (Dynamo refuses those): every condition is on
dtypes, devices, ranks and sizes, which torch.compile evaluates at trace time (guarding on sizes),
so eager, fake tensors and compiled code fail with the same message."""

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(op: str, arg: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        got = "None" if t is None else type(t).__name__
        raise TypeError(f"fgreid_ops.{op}: expected {arg} to be a torch.Tensor, got {got}")


def check_float_dtype(op: str, arg: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"fgreid_ops.{op}: expected {arg} to be float32, float16, bfloat16 or float64, got {t.dtype}"
        )


def check_dim(op: str, arg: str, t: torch.Tensor, dim: int, layout: str) -> None:
    if t.dim() != dim:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} to be {dim}-D {layout}, got {t.dim()}-D")


def check_same_device(op: str, arg: str, t: torch.Tensor, ref_arg: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} on the same device as {ref_arg} ({ref.device}), got {t.device}")


def check_same_dtype(op: str, arg: str, t: torch.Tensor, ref_arg: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"fgreid_ops.{op}: expected {arg} to have the same dtype as {ref_arg} ({ref.dtype}), got {t.dtype}")


def check_nonempty_batch(op: str, arg: str, t: torch.Tensor) -> None:
    if t.shape[0] == 0:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} to have a non-empty batch, got N=0")


def check_nonempty(op: str, arg: str, t: torch.Tensor) -> None:
    if t.numel() == 0:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} to be non-empty, got shape {list(t.shape)}")


def check_positive(op: str, arg: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} > 0, got {value}")


def check_choice(op: str, arg: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"fgreid_ops.{op}: expected {arg} to be one of {sorted(choices)}, got {value!r}")


def is_channels_last(t: torch.Tensor) -> bool:
    """The layout rule the C++ kernels follow (checks.h is_channels_last_4d)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def check_index_range(op: str, arg: str, t: torch.Tensor, low: int, high: int) -> None:
    """Every value of t in [low, high); reads the values (a device sync on CUDA): for eager
    launchers that index memory with them (the Triton ones; the C++ kernels check their own),
    never for fakes."""
    if t.numel() and bool(((t < low) | (t >= high)).any()):
        raise ValueError(f"fgreid_ops.{op}: expected {arg} in [{low}, {high}), "
                         f"got values in [{int(t.min())}, {int(t.max())}]")
