"""Public ops: one module per op, each with its function, fakes and autograd registration."""

from .gem import gem
from .off import off

__all__ = ["gem", "off"]
