"""Public ops: one module per op, each with its function, fakes and autograd registration."""

from .gem import gem
from .topk_mask import topk_mask

__all__ = ["gem", "topk_mask"]
