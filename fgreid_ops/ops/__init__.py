"""Public ops: one module per op (the list is fgreid_ops._oplist.OPS), each with its functions
and the descriptions (fgreid_ops._registry.OpDef) that register its kernels, fakes and autograd.
This package exports every name of each module's __all__."""

import importlib

from .._oplist import OPS

__all__ = []
for _name in OPS:
    _module = importlib.import_module(f"{__name__}.{_name}")
    for _symbol in _module.__all__:
        globals()[_symbol] = getattr(_module, _symbol)
        __all__.append(_symbol)
del _name, _module, _symbol
