"""Op descriptions and the one path that registers them.

An `OpDef` says everything about one registered kernel op: its name in ``torch.ops.fgreid``, the
public op its messages name, its argument checks, its fake, its backward (fake, setup_context and
the formula), the backends that have a kernel, its Triton launchers, its reference and its ONNX
lowering. `register` turns a description into the torch.library registrations:

* the C++ schema ``fgreid::<name>`` (csrc/ops/<op>.cpp, CPU and CUDA kernels) gets the fake and
  the autograd formula, when the extension loaded;
* the Triton variant ``fgreid::<name>_triton`` (and ``<name>_triton_backward``) is defined here
  from `signature` (no C++ build needed), gets the same fake and formula, and the launchers of
  ``fgreid_ops/triton/<triton>.py`` named ``<name>_triton`` / ``<name>_triton_backward`` as its
  CUDA kernels (CPU too under TRITON_INTERPRET=1) when Triton imports, and on the devices where
  Triton cannot run a kernel that raises naming the device.

Each variant's backward formula calls that variant's own registered backward op, so
torch.compile sees it. `fgreid_ops._backend.dispatch` picks the variant."""

import dataclasses
import importlib
from typing import Callable

import torch

from . import _triton_support
from ._extension import has_extension

NAMESPACE = "fgreid"
TRITON_SUFFIX = "_triton"

# How the messages name the backend whose kernel is missing.
BACKEND_NAMES = {"cpu": "CPU", "cuda": "CUDA C++", "triton": "Triton"}


@dataclasses.dataclass(frozen=True)
class Backward:
    """The autograd formula of an op whose backward is a registered ``<name>_backward`` op.

    fake: the fake of the backward op. setup_context: torch.library's ``setup_context(ctx,
    inputs, output)``. make: ``make(backward_op)`` returns ``backward(ctx, *grads)`` calling
    ``backward_op`` (the C++ or the Triton one). signature: the backward schema after the name
    (used to define the Triton twin). double: ``double(forward_op)`` returns the backward of the
    backward op (for ops whose backward is linear in grad_out), with double_setup_context."""

    fake: Callable
    setup_context: Callable
    make: Callable
    signature: str | None = None
    double: Callable | None = None
    double_setup_context: Callable | None = None


@dataclasses.dataclass(frozen=True)
class OpDef:
    """One kernel op. name: ``torch.ops.fgreid.<name>`` (its C++ schema). op: the public op that
    messages name ("fgreid_ops.<op>: ..."). check: the argument checks, with the op's arguments.
    fake: the fake forward (runs `check` itself). reference: a plain-PyTorch function with the
    op's arguments, or None where the public function calls a whole-op reference itself.
    cpp: the backends with a C++ kernel ("cpu", "cuda"). triton: the module of
    ``fgreid_ops/triton`` holding its launchers, or None. signature: the schema after the name,
    as in csrc/ops/<op>.cpp (the Triton twin is defined from it). onnx: the name of its
    lowering in fgreid_ops.onnx, or None for an op with no inference use."""

    name: str
    op: str
    check: Callable
    fake: Callable
    reference: Callable | None
    signature: str
    cpp: tuple = ("cpu", "cuda")
    triton: str | None = None
    backward: Backward | None = None
    onnx: str | None = None

    @property
    def backends(self) -> tuple:
        """The kernel backends of this op (the reference always exists besides them)."""
        return self.cpp + (("triton",) if self.triton else ())

    def kernel_name(self, backend: str) -> str:
        """The name in torch.ops.fgreid of this op's kernel for `backend`."""
        return self.name + TRITON_SUFFIX if backend == "triton" else self.name

    def variants(self) -> list:
        """The names of its registered forward ops: the C++ one and the Triton twin."""
        return ([self.name] if self.cpp else []) + ([self.name + TRITON_SUFFIX] if self.triton else [])


def no_double_backward(forward_op):
    """A `Backward.double` for a backward op with no derivative formula: a second derivative
    (create_graph=True, then a grad through the first one) raises, naming the backward op,
    instead of treating the first derivative as a constant (silent zeros)."""
    backward_name = f"{forward_op._qualified_op_name.split('::')[-1]}_backward"

    def backward(ctx, *grads):
        raise RuntimeError(
            f"fgreid_ops.{backward_name}: the second derivative is not implemented "
            f"(fgreid::{backward_name} has no derivative formula); use backend='reference' to differentiate twice"
        )

    return backward


_OPS: dict = {}


class NoKernelError(ValueError):
    """The backend asked for has no kernel for this op (a fact of the op, not of this machine)."""


def no_kernel(op: OpDef, backend: str) -> NoKernelError:
    available = ["reference", *op.backends]
    return NoKernelError(
        f"fgreid_ops.{op.op}: no {BACKEND_NAMES.get(backend, backend)} kernel for this op; "
        f"expected backend to be one of {available} or None, got {backend!r}"
    )


def get(name: str) -> OpDef:
    """The description registered as `name`, or else the first one of the public op `name`."""
    if name in _OPS:
        return _OPS[name]
    for op in _OPS.values():
        if op.op == name:
            return op
    raise KeyError(f"fgreid_ops: no op named {name!r} is registered")


def all_ops() -> list:
    """Every registered description, in registration order."""
    return list(_OPS.values())


def _schema_exists(qualname: str) -> bool:
    return bool(torch._C._jit_get_schemas_for_operator(qualname))


def _define(name: str, signature: str) -> None:
    qualname = f"{NAMESPACE}::{name}"
    # An extension built before the Triton schemas moved here still declares them (same text).
    if not _schema_exists(qualname):
        torch.library.define(qualname, signature)


def _register_unavailable(qualname: str) -> None:
    """On the devices where Triton cannot run, a kernel that says so and names the device."""
    if not _triton_support.UNAVAILABLE_DEVICES:
        return

    def unavailable(*args):
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        raise RuntimeError(f"fgreid_ops.{qualname.split('::')[-1]}: the Triton kernel needs "
                           f"{_triton_support.requirement()}; got tensors on device {device}")

    torch.library.register_kernel(qualname, _triton_support.UNAVAILABLE_DEVICES, unavailable)


# The kernels of _register_none_arguments.
_FALLBACKS = torch.library.Library(NAMESPACE, "IMPL")


def _register_none_arguments(op: OpDef, name: str) -> None:
    """A call whose tensor arguments are all None has no dispatch key: the dispatcher takes the
    CompositeExplicitAutograd kernel then (which otherwise runs only on devices without a kernel
    of their own), and raises "There were no tensor arguments to this function", naming no
    argument, where there is none. This one names the first None tensor argument (a call with
    some real tensors reaches the device's kernel, whose checks name the None), and on a device
    with no kernel names the device."""
    schema = getattr(torch.ops.fgreid, name).default._schema
    tensor_args = [(i, a.name) for i, a in enumerate(schema.arguments) if isinstance(a.type, torch.TensorType)]

    def no_kernel_for(*args, **kwargs):
        values = [(arg, args[i] if i < len(args) else kwargs.get(arg)) for i, arg in tensor_args]
        devices = sorted({str(v.device) for _, v in values if isinstance(v, torch.Tensor)})
        if not devices:
            arg = next(arg for arg, v in values if v is None)
            raise TypeError(f"fgreid_ops.{op.op}: expected {arg} to be a torch.Tensor, got None")
        raise NotImplementedError(f"fgreid_ops.{op.op}: fgreid::{name} has no kernel for tensors on {', '.join(devices)}")

    _FALLBACKS.impl(name, no_kernel_for, "CompositeExplicitAutograd")


def _register_variant(op: OpDef, name: str) -> None:
    qualname = f"{NAMESPACE}::{name}"
    torch.library.register_fake(qualname)(op.fake)
    _register_none_arguments(op, name)
    if op.backward is None:
        return
    _register_none_arguments(op, f"{name}_backward")
    backward_op = getattr(torch.ops.fgreid, f"{name}_backward")
    torch.library.register_fake(f"{qualname}_backward")(op.backward.fake)
    torch.library.register_autograd(qualname, op.backward.make(backward_op), setup_context=op.backward.setup_context)
    if op.backward.double is not None:
        torch.library.register_autograd(
            f"{qualname}_backward", op.backward.double(getattr(torch.ops.fgreid, name)),
            setup_context=op.backward.double_setup_context,
        )


def register(op: OpDef) -> OpDef:
    """Registers `op` (see the module docstring); returns it."""
    if op.name in _OPS:
        raise ValueError(f"fgreid_ops: op {op.name!r} is registered twice")
    _OPS[op.name] = op
    if op.cpp and has_extension():
        _register_variant(op, op.name)
    if op.triton is not None:
        name = op.kernel_name("triton")
        _define(name, op.signature)
        if op.backward is not None:
            _define(f"{name}_backward", op.backward.signature)
        if _triton_support.AVAILABLE:
            launchers = importlib.import_module(f"{__package__}.triton.{op.triton}")
            torch.library.register_kernel(f"{NAMESPACE}::{name}", _triton_support.DEVICES, getattr(launchers, name))
            if op.backward is not None:
                torch.library.register_kernel(
                    f"{NAMESPACE}::{name}_backward", _triton_support.DEVICES, getattr(launchers, f"{name}_backward")
                )
        _register_unavailable(f"{NAMESPACE}::{name}")
        if op.backward is not None:
            _register_unavailable(f"{NAMESPACE}::{name}_backward")
        _register_variant(op, name)
    return op


def has_cuda_kernels() -> bool:
    """True when the extension was built with the CUDA kernels of every op that has one."""
    cuda_ops = [op for op in _OPS.values() if "cuda" in op.cpp]
    return has_extension() and bool(cuda_ops) and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op.name}", "CUDA") for op in cuda_ops
    )
