"""Shared by the ONNX tests: faster repeated exports, tiny model configs, a user model with its own
example_inputs (for the export script's MODULE:ATTR path)."""

import functools
import os
import sys

import torch
from torch import nn

import fgreid_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # deploy/ and python_models/ (appended: an installed fgreid_ops wins)
    sys.path.append(ROOT)

# CI has 2 cores: models as narrow as their structure allows.
TINY_CUHS = {"num_classes": 3, "feat_dim": 8, "width": 4, "layers": [1, 1, 2, 1], "topk": 3}
TINY_CUHS_SIZE = (64, 32)
TINY_FG_VIDEO = {"num_classes": 3, "width": 4, "layers": [1, 1, 1, 1], "delta_t": 2, "mask_size": [2, 2],
                 "mask_channels": 4, "lstm_hidden": 8, "part_size": 16, "part_channels": [4, 4, 4, 4, 4],
                 "js_dim": 8}
TINY_FG_VIDEO_SIZE = (64, 32)
TINY_FG_VIDEO_FRAMES = 3


def cache_torchlib_registry() -> None:
    """Every torch.onnx.export rebuilds its registry of ~500 torchlib functions from their source
    (~5 s on CI); the list does not change within a process, so remember it. Test-only speed-up;
    harmless if the private module moved (exports are then just slower)."""
    try:
        import onnxscript._framework_apis.torch_2_11 as apis
    except ImportError:
        return
    fn = getattr(apis, "get_torchlib_ops", None)
    if fn is not None and not hasattr(fn, "cache_info"):
        apis.get_torchlib_ops = functools.cache(fn)


class TwoInputNet(nn.Module):
    """A user model with two inputs that says what they are (``example_inputs``)."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.fc = nn.Linear(5, channels)

    def example_inputs(self, batch: int):
        return torch.randn(batch, 3, 8, 4), torch.randn(batch, 5)

    def forward(self, images, extra):
        pooled = fgreid_ops.gem(torch.relu(self.conv(images)), torch.tensor([3.0]))
        return pooled + self.fc(extra)
