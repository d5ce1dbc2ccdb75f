"""Plain-PyTorch references, written from ../shared/SPEC.md; every kernel is tested against them."""

from .gem import gem_reference
from .mask_upsample_mul import mask_upsample_mul_reference

__all__ = ["gem_reference", "mask_upsample_mul_reference"]
