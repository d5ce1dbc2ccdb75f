"""fgreid_ops: fused ops for fine-grained person re-identification.

Import registers the kernels under torch.ops.fgreid (each op's description, fgreid_ops._registry); the public functions below validate
their inputs and pick a backend (see fgreid_ops._backend)."""

from ._extension import has_extension
from ._backend import use_reference
from .ops import *  # noqa: F401,F403  (every public op; the list is fgreid_ops.ops.__all__)
from .ops import __all__ as _ops_all
from .evaluation import FGPRResult, evaluate_fgpr, evaluate_mars, tracklet_features
from ._registry import has_cuda_kernels
from . import distributed, nn, reference

__version__ = "0.1.0"

__all__ = [*_ops_all, "evaluate_mars", "evaluate_fgpr", "FGPRResult", "tracklet_features",
           "nn", "distributed", "reference", "use_reference", "has_extension", "has_cuda_kernels"]
