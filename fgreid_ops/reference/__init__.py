"""Plain-PyTorch references, one module per op (the list is fgreid_ops._oplist.OPS), each the
op's definition written plainly; every kernel is tested against them. This package exports every
name of each module's __all__."""

from .._oplist import export_ops

__all__ = export_ops(__name__, globals())
