"""Public ops: one module per op, each with its function, fakes and autograd registration."""

from .evaluate import EvaluationResult, evaluate, evaluate_features
from .gem import gem
from .off import off

__all__ = ["gem", "off"]
__all__ = ["gem", "evaluate", "evaluate_features", "EvaluationResult"]
