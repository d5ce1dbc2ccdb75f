"""Plain-PyTorch references, written from ../shared/SPEC.md; every kernel is tested against them."""

from .gem import gem_reference
from .topk_mask import topk_mask_reference

__all__ = ["gem_reference", "topk_mask_reference"]
