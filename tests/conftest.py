import os

import torch

# Triton kernels run on CPU tensors through the interpreter when no GPU is present. This must be
# set before any @triton.jit function is defined, i.e. before fgreid_ops is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=15, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_generate_tests(metafunc):
    """The parametrization of the generic op battery (tests/op_battery.py) comes from its class."""
    cls = metafunc.cls
    if cls is not None and hasattr(cls, "battery_parameters"):
        cls.battery_parameters(metafunc)
