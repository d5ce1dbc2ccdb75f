"""The generic test battery of an op, parametrized by its description (fgreid_ops._registry.OpDef),
in the style of torchvision's RoIOpTester: a test class subclasses `OpTester`, says how to build
the op's inputs and which inputs are bad, and inherits

* forward parity with the float64 reference over backends × dtypes × layouts × cases,
* backward parity with the reference's autograd over the same grid,
* float64 gradcheck (contiguous and channels_last),
* torch.library.opcheck of the forward kernel op (with and without requires_grad) and of its
  backward op, per backend,
* bad inputs: the public function (eager), the C++ and Triton kernel ops called directly, and
  their fakes on the meta device, all with the message ``fgreid_ops.<op>: expected ...``,
* torch.compile(fullgraph=True, dynamic=True) over two shapes, forward and gradients,
* hypothesis over shapes, dtypes, layouts and seeds (the derandomized CI profile of conftest.py).

What is special about an op (known values, edge cases, its module) stays in its test file.
The parametrization comes from the class attributes through `conftest.pytest_generate_tests`."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fgreid_ops import _backend

from helpers import DTYPES, GRAD_TOLERANCES, LAYOUTS, TOLERANCES, kernel_backends, to_layout


def _escape(message: str) -> str:
    return message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")


def _tensors(values):
    return [v for v in values if isinstance(v, torch.Tensor)]


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class OpTester:
    """Subclass as ``class TestMyop(OpTester)`` and set:

    op_def: the OpDef of the kernel the public function dispatches to.
    cases: names of input variants (e.g. per-channel parameters), passed to `make_inputs`.
    shape: the default input shape, and `shapes`: two shapes for the compile test.
    grad_inputs: positions of the inputs that receive gradients; grad_outputs: positions of the
        differentiable outputs.
    bad_inputs: [(message after "expected ", make() -> args, exception type)].
    and implement make_inputs(case, shape, dtype, device, seed, purpose) -> args (the kernel op's
    arguments, the public function's positional arguments unless `call` is overridden; purpose
    is "forward", "backward", "gradcheck", "opcheck", "compile" or "hypothesis": gradcheck
    wants inputs away from kinks),
    backward_args(args, device) -> [args of the backward op] for opcheck.
    """

    op_def = None
    backends = kernel_backends()
    dtypes = DTYPES
    layouts = LAYOUTS
    cases = ("default",)
    shape = None
    shapes = ()
    grad_inputs = (0,)
    grad_outputs = (0,)
    bad_inputs = ()
    opcheck_layouts = ("contiguous", "channels_last")
    gradcheck_layouts = ("contiguous", "channels_last")

    # --- what a subclass provides ---------------------------------------------------------------

    def make_inputs(self, case, shape, dtype, device, seed=0, purpose="forward"):
        raise NotImplementedError

    def backward_args(self, args, device):
        return []

    def call(self, backend, *args):
        return self.public()(*args, backend=backend)

    def public(self):
        import fgreid_ops

        return getattr(fgreid_ops, self.op_def.op)

    def reference(self, *args):
        return self.op_def.reference(*args)

    def layout_inputs(self, args, layout):
        """The inputs in `layout`: the first tensor argument is laid out (subclasses may lay out more)."""
        args = list(args)
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                args[i] = to_layout(a, layout) if a.dim() == 4 or layout == "strided" else a
                break
        return tuple(args)

    def grad_dtype(self, position, dtype):
        """The dtype whose tolerance applies to the gradient of input `position`."""
        return dtype

    def assert_close(self, actual, expected, dtype, grad=False):
        tol = (GRAD_TOLERANCES if grad else TOLERANCES)[dtype]
        torch.testing.assert_close(actual, expected.to(actual.dtype), **tol)

    # --- parametrization ------------------------------------------------------------------------

    @classmethod
    def battery_parameters(cls, metafunc):
        names = metafunc.fixturenames
        if "backend" in names and "device" in names:
            metafunc.parametrize("backend,device", cls.backends)
        if "dtype" in names:
            metafunc.parametrize("dtype", cls.dtypes, ids=str)
        if "layout" in names:
            layouts = cls.opcheck_layouts if metafunc.function.__name__ == "test_opcheck" else (
                cls.gradcheck_layouts if metafunc.function.__name__ == "test_gradcheck" else cls.layouts)
            metafunc.parametrize("layout", layouts)
        if "case" in names:
            metafunc.parametrize("case", cls.cases)
        if "bad" in names:
            metafunc.parametrize("bad", cls.bad_inputs, ids=[f"{i}:{m}" for i, (m, _, _) in enumerate(cls.bad_inputs)])

    # --- helpers ----------------------------------------------------------------------------------

    def _float64_reference(self, args):
        return _as_tuple(self.reference(*[a.detach().double() if isinstance(a, torch.Tensor) and a.is_floating_point()
                                          else a for a in args]))

    def _with_grad(self, args):
        return tuple(a.detach().requires_grad_() if i in self.grad_inputs else a for i, a in enumerate(args))

    def _grads(self, outputs, args, grads_out):
        diff = [outputs[i] for i in self.grad_outputs]
        inputs = [args[i] for i in self.grad_inputs]
        return torch.autograd.grad(diff, inputs, grads_out)

    # --- the battery ------------------------------------------------------------------------------

    def test_forward_matches_reference(self, backend, device, dtype, layout, case):
        args = self.layout_inputs(self.make_inputs(case, self.shape, dtype, device), layout)
        out = _as_tuple(self.call(backend, *args))
        expected = self._float64_reference(args)
        assert len(out) == len(expected)
        for o, e in zip(out, expected):
            assert o.device.type == device and o.shape == e.shape
            if e.is_floating_point():
                assert o.dtype == dtype
                self.assert_close(o, e, dtype)
            else:
                torch.testing.assert_close(o, e.to(o.device))

    def test_backward_matches_reference(self, backend, device, dtype, layout, case):
        args = self._with_grad(self.layout_inputs(self.make_inputs(case, self.shape, dtype, device, seed=1, purpose="backward"), layout))
        out = _as_tuple(self.call(backend, *args))
        g = torch.Generator().manual_seed(2)
        grads_out = [torch.randn(out[i].shape, generator=g, dtype=torch.float64).to(out[i].dtype).to(device)
                     for i in self.grad_outputs]
        grads = self._grads(out, args, grads_out)
        ref_args = self._with_grad(tuple(a.detach().double() if isinstance(a, torch.Tensor) and a.is_floating_point()
                                         else a for a in args))
        ref_out = _as_tuple(self.reference(*ref_args))
        ref_grads = self._grads(ref_out, ref_args, [t.double() for t in grads_out])
        for position, grad, ref in zip(self.grad_inputs, grads, ref_grads):
            assert grad.dtype == args[position].dtype and grad.shape == args[position].shape
            self.assert_close(grad, ref, self.grad_dtype(position, dtype), grad=True)

    def test_gradcheck(self, backend, device, layout, case):
        args = self.layout_inputs(self.make_inputs(case, self.shape, torch.float64, device, seed=3, purpose="gradcheck"), layout)
        args = self._with_grad(args)

        def fn(*diff):
            full = list(args)
            for position, value in zip(self.grad_inputs, diff):
                full[position] = value
            out = _as_tuple(self.call(backend, *full))
            return tuple(out[i] for i in self.grad_outputs)

        assert torch.autograd.gradcheck(fn, tuple(args[i] for i in self.grad_inputs))

    def test_opcheck(self, backend, device, layout):
        op = getattr(torch.ops.fgreid, self.op_def.kernel_name(backend))
        args = self.layout_inputs(self.make_inputs(self.cases[-1], self.shape, torch.float32, device, seed=4, purpose="opcheck"), layout)
        torch.library.opcheck(op, args)
        torch.library.opcheck(op, self._with_grad(args))
        if self.op_def.backward is not None:
            backward = getattr(torch.ops.fgreid, self.op_def.kernel_name(backend) + "_backward")
            for backward_args in self.backward_args(args, device):
                torch.library.opcheck(backward, backward_args)

    def test_bad_input_raises_naming_argument(self, backend, device, bad):
        message, make, error = bad
        args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in make())
        with pytest.raises(error, match=f"fgreid_ops.{self.op_def.op}: expected " + _escape(message)):
            self.call(backend, *args)

    def test_bad_input_raises_in_kernel_and_on_meta(self, bad):
        """The kernel ops check their inputs (a direct torch.ops caller), and so do their fakes."""
        message, make, error = bad
        args = make()
        if not all(isinstance(a, torch.Tensor) for a in _tensors(args)) or any(
                not isinstance(a, (torch.Tensor, int, float, str, bool, type(None))) for a in args):
            pytest.skip("not a valid call of the kernel op's schema")
        pattern = f"fgreid_ops.{self.op_def.op}: expected " + _escape(message)
        names = [self.op_def.kernel_name(b) for b in dict.fromkeys(
            b for b in self.op_def.backends if b == "cpu" or (b == "triton" and _backend.triton_available("cpu")))]
        for name in names:
            op = getattr(torch.ops.fgreid, name)
            with pytest.raises((error, RuntimeError), match=pattern):
                op(*args)
        meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
        with pytest.raises((error, RuntimeError), match=pattern):
            getattr(torch.ops.fgreid, names[0])(*meta)

    def test_torch_compile_fullgraph(self, backend, device):
        torch._dynamo.reset()

        def fn(*args):
            return self.call(backend, *args)

        compiled = torch.compile(fn, fullgraph=True, dynamic=True)
        for seed, shape in enumerate(self.shapes):
            args = self._with_grad(self.make_inputs(self.cases[-1], shape, torch.float32, device, seed=seed, purpose="compile"))
            out = _as_tuple(compiled(*args))
            eager = _as_tuple(fn(*args))
            for o, e in zip(out, eager):
                torch.testing.assert_close(o, e)
            grads = self._grads(out, args, [torch.ones_like(out[i]) for i in self.grad_outputs])
            eager_grads = self._grads(eager, args, [torch.ones_like(eager[i]) for i in self.grad_outputs])
            for g, e in zip(grads, eager_grads):
                torch.testing.assert_close(g, e)

    # pytest makes one instance of the class per test; the instances hold no state
    @settings(suppress_health_check=[*settings.default.suppress_health_check, HealthCheck.differing_executors])
    @given(data=st.data())
    def test_hypothesis_forward_backward(self, backend, device, data):
        case = data.draw(st.sampled_from(self.cases), label="case")
        shape = data.draw(self.shape_strategy(), label="shape")
        dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), label="dtype")
        layout = data.draw(st.sampled_from(self.layouts), label="layout")
        seed = data.draw(st.integers(0, 2**16), label="seed")
        args = self._with_grad(self.layout_inputs(self.make_inputs(case, shape, dtype, device, seed=seed, purpose="hypothesis"), layout))
        out = _as_tuple(self.call(backend, *args))
        expected = self._float64_reference(args)
        for o, e in zip(out, expected):
            if e.is_floating_point():
                self.assert_close(o, e, dtype)
        grads_out = [torch.ones_like(out[i]) for i in self.grad_outputs]
        grads = self._grads(out, args, grads_out)
        ref_args = self._with_grad(tuple(a.detach().double() if isinstance(a, torch.Tensor) and a.is_floating_point()
                                         else a for a in args))
        ref_grads = self._grads(_as_tuple(self.reference(*ref_args)), ref_args, [t.double() for t in grads_out])
        for position, grad, ref in zip(self.grad_inputs, grads, ref_grads):
            self.assert_close(grad, ref, self.grad_dtype(position, dtype), grad=True)

    def shape_strategy(self):
        raise NotImplementedError
