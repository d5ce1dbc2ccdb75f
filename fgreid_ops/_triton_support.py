"""Whether Triton kernels can run here, from static facts only: triton imports, and
TRITON_INTERPRET=1 (read once, at import) lets them run on CPU tensors through the interpreter,
which is how CI runs them. A leaf module: it imports nothing of fgreid_ops."""

import os

try:
    import triton  # noqa: F401

    AVAILABLE = True
except ImportError:
    AVAILABLE = False

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICES = ("cuda", "cpu") if INTERPRET else ("cuda",)


def triton_available(device_type: str) -> bool:
    """True when Triton kernels can run on tensors of `device_type`."""
    return AVAILABLE and device_type in DEVICES

# The devices with no Triton kernel here: a direct torch.ops call on them gets an error naming
# the device rather than the dispatcher's "Could not run ... with arguments from the 'CPU' backend".
UNAVAILABLE_DEVICES = tuple(d for d in ("cpu", "cuda") if not triton_available(d))


def requirement() -> str:
    """What a Triton kernel needs that this process lacks."""
    if not AVAILABLE:
        return "the triton package"
    return "CUDA tensors (or TRITON_INTERPRET=1 set before import for CPU tensors)"
