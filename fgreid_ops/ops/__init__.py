"""Public ops: one module per op, each with its function, fakes and autograd registration."""

from .evaluate import EvaluationResult, evaluate, evaluate_features
from .gem import gem
from .off import off

__all__ = ["gem", "off", "evaluate", "evaluate_features", "EvaluationResult"]
from .topk_mask import topk_mask

__all__ = ["gem", "topk_mask"]
