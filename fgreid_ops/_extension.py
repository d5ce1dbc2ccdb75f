"""Loads the compiled kernels (fgreid_ops._C). A failed load is reported with its cause,
never swallowed: the ops then raise on use unless the reference backend is selected."""

import warnings

import torch  # noqa: F401  (fgreid_ops._C links against libtorch)

_load_error = None
try:
    from . import _C  # noqa: F401  (links against libtorch, loaded by `import torch` above)
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _load_error = exc
    warnings.warn(
        f"fgreid_ops: the compiled extension fgreid_ops._C failed to load ({exc}). "
        "Only the plain-PyTorch reference backend works (fgreid_ops.use_reference()). "
        "Rebuild with `pip install --no-build-isolation .` against the installed torch.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_extension() -> bool:
    """True when the compiled kernels loaded."""
    return _load_error is None


def require_extension(op: str) -> None:
    if _load_error is not None:
        raise RuntimeError(
            f"fgreid_ops.{op}: the compiled extension failed to load ({_load_error}); "
            "rebuild it or use fgreid_ops.use_reference()"
        )

