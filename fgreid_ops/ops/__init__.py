"""Public ops: one module per op, each with its function, fakes and autograd registration."""

from .gem import gem
from .batch_hard_triplet import batch_hard_triplet

__all__ = ["gem", "batch_hard_triplet"]
