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
