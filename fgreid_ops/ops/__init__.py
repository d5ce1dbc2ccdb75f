"""Public ops: one module per op (the list is fgreid_ops._oplist.OPS), each with its functions
and the descriptions (fgreid_ops._registry.OpDef) that register its kernels, fakes and autograd.
This package exports every name of each module's __all__."""

from .._oplist import export_ops

__all__ = export_ops(__name__, globals())
