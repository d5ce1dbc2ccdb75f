"""Public ops: one module per op, each with its function, fakes and autograd registration."""

from .gem import gem
from .mask_upsample_mul import mask_upsample_mul

__all__ = ["gem", "mask_upsample_mul"]
