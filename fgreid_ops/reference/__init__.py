"""Plain-PyTorch references, written from ../shared/SPEC.md; every kernel is tested against them."""

from .gem import gem_reference
from .off import off_reference

__all__ = ["gem_reference", "off_reference"]
