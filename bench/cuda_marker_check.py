"""A pytest plugin (``-p cuda_marker_check`` with bench/ on the path): fails the collection when a
test that needs a GPU is not marked ``cuda``, so that ``pytest -m cuda`` (bench/gpu_check.py)
selects every CUDA and Triton-on-GPU test. A test needs a GPU when a skipif reason says so or
when a parameter whose name says device is "cuda"."""

import pytest


def _needs_gpu(item):
    for mark in item.iter_markers("skipif"):
        reason = str(mark.kwargs.get("reason", ""))
        if "cuda" in reason.lower() or "gpu" in reason.lower():
            return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        for name, value in callspec.params.items():
            if "device" in name and (value == "cuda" or (isinstance(value, torch_device_type()) and value.type == "cuda")):
                return True
    return False


def torch_device_type():
    import torch

    return torch.device


@pytest.hookimpl(tryfirst=True)  # before -m cuda deselects the unmarked ones
def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items if _needs_gpu(item) and item.get_closest_marker("cuda") is None]
    if unmarked:
        raise pytest.UsageError("tests that need a GPU but are not marked `cuda` (pytest -m cuda would miss them):\n  "
                                + "\n  ".join(unmarked))
