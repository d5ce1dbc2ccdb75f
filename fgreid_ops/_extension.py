"""Loads the compiled kernels (fgreid_ops._C). A failed load is reported with its cause,
never swallowed: the ops then raise on use unless the reference backend is selected."""

import importlib.util
import os
import warnings

import torch  # noqa: F401  (fgreid_ops._C links against libtorch)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_SOURCE_ROOT = os.path.dirname(_PACKAGE_DIR)
_BUILD_IN_PLACE = "pip install --no-build-isolation -e ."


def _missing_message() -> str:
    if os.path.isfile(os.path.join(_SOURCE_ROOT, "setup.py")):
        return (f"the compiled extension is not built: {_PACKAGE_DIR} is the source tree and "
                f"holds no _C library. Build it in place with `{_BUILD_IN_PLACE}` run in {_SOURCE_ROOT}")
    return (f"the compiled extension fgreid_ops._C is missing from {_PACKAGE_DIR}. "
            f"Reinstall from the source tree with `{_BUILD_IN_PLACE}`")


def _load() -> str | None:
    """None when _C loaded, else the one message (why, and what to run)."""
    # Checked first: `from . import _C` without a _C file reports a "circular import", not the cause.
    if importlib.util.find_spec(f"{__package__}._C") is None:
        return _missing_message()
    try:
        from . import _C  # noqa: F401  (links against libtorch, loaded by `import torch` above)
    except ImportError as exc:
        return (f"the compiled extension fgreid_ops._C failed to load ({exc}); it must be built "
                f"against the installed torch {torch.__version__}: rebuild with `{_BUILD_IN_PLACE}`")
    return None


_load_error = _load()
if _load_error is not None:
    warnings.warn(f"fgreid_ops: {_load_error}. Until then only the plain-PyTorch reference backend works "
                  "(fgreid_ops.use_reference()).", RuntimeWarning, stacklevel=2)


def has_extension() -> bool:
    """True when the compiled kernels loaded."""
    return _load_error is None


def require_extension(op: str) -> None:
    if _load_error is not None:
        raise RuntimeError(f"fgreid_ops.{op}: {_load_error}, "
                           "or select the reference backend (fgreid_ops.use_reference())")

