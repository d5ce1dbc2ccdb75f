"""Plain-PyTorch references, written from ../shared/SPEC.md; every kernel is tested against them."""

from .gem import gem_reference
from .batch_hard_triplet import batch_hard_triplet_reference

__all__ = ["gem_reference", "batch_hard_triplet_reference"]
