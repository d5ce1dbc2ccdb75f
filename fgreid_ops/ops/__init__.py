"""Public ops: one module per op, each with its function, fakes and autograd registration."""

from .evaluate import evaluate, evaluate_features, EvaluationResult
from .gem import gem
from .off import off
from .topk_mask import topk_mask

__all__ = ["evaluate", "evaluate_features", "EvaluationResult", "gem", "off", "topk_mask"]
