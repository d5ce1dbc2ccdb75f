"""Plain-PyTorch references, written from ../shared/SPEC.md; every kernel is tested against them."""

from .evaluate import distance_reference, evaluate_reference, per_query_reference
from .gem import gem_reference
from .off import off_reference

__all__ = ["gem_reference", "off_reference"]
__all__ = ["gem_reference", "evaluate_reference", "per_query_reference", "distance_reference"]
