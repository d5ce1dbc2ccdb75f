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

An op without gradients (grad_inputs = (), as evaluate and rerank) has no backward or gradcheck
tests, and its compile and hypothesis tests compare the outputs only.

What is special about an op (known values, edge cases, its module) stays in its test file.
The parametrization comes from the class attributes through `conftest.pytest_generate_tests`."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fgreid_ops import _backend

from helpers import DTYPES, GRAD_TOLERANCES, LAYOUTS, TOLERANCES, kernel_backends, to_layout


def _escape(message: str) -> str:
    return message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _float64(args):
    return tuple(a.detach().double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


GRADIENT_TESTS = ("test_backward_matches_reference", "test_gradcheck")


class OpTester:
    """Subclass as ``class TestMyop(OpTester)`` and set:

    op_def: the OpDef of the kernel the public function dispatches to.
    cases: names of input variants (e.g. per-channel parameters), passed to `make_inputs`.
    shape: the default input shape, and `shapes`: two shapes for the compile test.
    grad_inputs: positions of the inputs that receive gradients; grad_outputs: positions of the
        differentiable outputs.
    bad_inputs: [(message after "expected ", make() -> args, exception type)].
    kernel_bad_inputs: [(message, make() -> the kernel op's args, exception type)] that the kernel
        ops (and their fakes) refuse, by default the first `kernel_checked` of bad_inputs through
        `kernel_args`; their messages name `kernel_message_op` (default the public op).
    and implement make_inputs(case, shape, dtype, device, seed, purpose) -> args (the kernel op's
    arguments, the public function's positional arguments unless `call` is overridden; purpose
    is "forward", "backward", "gradcheck", "opcheck", "compile" or "hypothesis": gradcheck
    wants inputs away from kinks),
    backward_args(args, device) -> [args of the backward op] for opcheck.
    Where the public function's arguments are not the kernel op's: `kernel_args(args)`, and
    `kernel_opchecks` for the other kernel ops of the same public function.
    """

    op_def = None
    # the (backend, device) pairs, of which those of op_def.backends run; the reference may be one
    # of them where the test's reference is another implementation
    backends = kernel_backends()
    dtypes = DTYPES
    layouts = LAYOUTS
    cases = ("default",)
    grad_cases = None  # the cases of the gradient tests (backward, gradcheck), default all
    shape = None
    shapes = ()
    grad_inputs = (0,)
    grad_outputs = (0,)
    bad_inputs = ()
    kernel_checked = None  # how many of bad_inputs the kernel ops' schemas accept (the rest are Python-only)
    gradcheck_fast_triton_interpret = False  # the interpreter runs a forward per perturbed element
    opcheck_layouts = ("contiguous", "channels_last")
    opcheck_cases = None  # the cases opcheck runs on, default the last one
    bad_messages_are_patterns = False  # bad_inputs' messages are regular expressions already
    gradcheck_layouts = ("contiguous", "channels_last")
    kernel_bad_inputs = None  # default: bad_inputs[:kernel_checked] through kernel_args
    kernel_message_op = None  # the op the kernel ops' messages name, default op_def.op
    compile_backend = "inductor"
    hypothesis_exact_integers = False  # hypothesis compares integer outputs too (exact inputs)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.grad_inputs:  # no gradients: pytest collects no gradient tests of the class
            for name in GRADIENT_TESTS:
                setattr(cls, name, None)

    # --- what a subclass provides ---------------------------------------------------------------

    def make_inputs(self, case, shape, dtype, device, seed=0, purpose="forward"):
        raise NotImplementedError

    def backward_args(self, args, device):
        return []

    def kernel_args(self, args):
        """The arguments of the kernel op (op_def) for the public function's arguments `args`."""
        return args

    def kernel_opchecks(self, backend, args, device):
        """[(kernel op, its arguments)]: the other kernel ops behind the public function, for opcheck."""
        return []

    def output_dtype(self, position, dtype):
        """The dtype of the floating-point output `position` for inputs of `dtype`."""
        return dtype

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

    def make_grad_out(self, out, seed):
        """The incoming gradient of output `out` (subclasses may give it other strides)."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(out.device)

    def _pattern(self, message, op=None):
        return f"fgreid_ops.{op or self.op_def.op}: expected " + (
            message if self.bad_messages_are_patterns else _escape(message))

    def grad_dtype(self, position, dtype):
        """The dtype whose tolerance applies to the gradient of input `position`."""
        return dtype

    def assert_close(self, actual, expected, dtype, grad=False):
        tol = (GRAD_TOLERANCES if grad else TOLERANCES)[dtype]
        torch.testing.assert_close(actual, expected.to(actual.dtype), **tol)

    # --- parametrization ------------------------------------------------------------------------

    @classmethod
    def _backend_params(cls):
        return [p for p in cls.backends if p.values[0] in (*cls.op_def.backends, "reference")]

    @classmethod
    def battery_parameters(cls, metafunc):
        names = metafunc.fixturenames
        if "backend" in names and "device" in names:
            backends = cls._backend_params()
            if metafunc.function.__name__ == "test_opcheck":  # the reference has no kernel op
                backends = [p for p in backends if p.values[0] != "reference"]
            metafunc.parametrize("backend,device", backends)
        if "dtype" in names:
            metafunc.parametrize("dtype", cls.dtypes, ids=str)
        if "layout" in names:
            layouts = cls.opcheck_layouts if metafunc.function.__name__ == "test_opcheck" else (
                cls.gradcheck_layouts if metafunc.function.__name__ == "test_gradcheck" else cls.layouts)
            metafunc.parametrize("layout", layouts)
        if "case" in names:
            test = metafunc.function.__name__
            cases = cls.cases
            if test in ("test_backward_matches_reference", "test_gradcheck") and cls.grad_cases:
                cases = cls.grad_cases
            elif test == "test_opcheck":
                cases = cls.opcheck_cases or cls.cases[-1:]
            metafunc.parametrize("case", cases)
        if "checked_backend" in names:  # the checks run before the backend choice: the reference too
            reference = [] if any(p.values[0] == "reference" for p in cls.backends) else [
                pytest.param("reference", "cpu", id="reference")]
            metafunc.parametrize("checked_backend,device", [*cls._backend_params(), *reference])
        if "bad" in names:
            metafunc.parametrize("bad", cls.bad_inputs, ids=[f"{i}:{m}" for i, (m, _, _) in enumerate(cls.bad_inputs)])
        if "bad_kernel" in names:
            checked = cls.kernel_bad_inputs
            if checked is None:
                checked = [(m, (lambda make=make: cls().kernel_args(make())), e) for m, make, e in cls.bad_inputs[:cls.kernel_checked]]
            metafunc.parametrize("bad_kernel", checked, ids=[f"{i}:{m}" for i, (m, _, _) in enumerate(checked)])

    # --- helpers ----------------------------------------------------------------------------------

    def _float64_reference(self, args):
        return _as_tuple(self.reference(*_float64(args)))

    def _grad_positions(self, args):
        """The grad_inputs that are tensors in `args` (an optional input may be None)."""
        return [i for i in self.grad_inputs if isinstance(args[i], torch.Tensor)]

    def _with_grad(self, args):
        positions = self._grad_positions(args)
        return tuple(a.detach().requires_grad_() if i in positions else a for i, a in enumerate(args))

    def _grads(self, outputs, args, grads_out):
        diff = [outputs[i] for i in self.grad_outputs]
        inputs = [args[i] for i in self._grad_positions(args)]
        return torch.autograd.grad(diff, inputs, grads_out)

    def _reference_grads(self, args, grads_out):
        ref_args = self._with_grad(_float64(args))
        return self._grads(_as_tuple(self.reference(*ref_args)), ref_args, [t.double() for t in grads_out])

    def _assert_outputs(self, out, expected, dtype, exact_integers=True):
        assert len(out) == len(expected)
        for position, (o, e) in enumerate(zip(out, expected)):
            if e.is_floating_point():
                assert o.dtype == self.output_dtype(position, dtype)
                self.assert_close(o, e, dtype)
            elif exact_integers:
                torch.testing.assert_close(o, e.to(o.device), rtol=0, atol=0)

    # --- the battery ------------------------------------------------------------------------------

    def test_forward_matches_reference(self, backend, device, dtype, layout, case):
        args = self.layout_inputs(self.make_inputs(case, self.shape, dtype, device), layout)
        out = _as_tuple(self.call(backend, *args))
        expected = self._float64_reference(args)
        for o, e in zip(out, expected):
            assert o.device.type == device and o.shape == e.shape
        self._assert_outputs(out, expected, dtype)

    def test_backward_matches_reference(self, backend, device, dtype, layout, case):
        args = self._with_grad(self.layout_inputs(self.make_inputs(case, self.shape, dtype, device, seed=1, purpose="backward"), layout))
        out = _as_tuple(self.call(backend, *args))
        grads_out = [self.make_grad_out(out[i], seed=2 + i) for i in self.grad_outputs]
        grads = self._grads(out, args, grads_out)
        ref_grads = self._reference_grads(args, grads_out)
        for position, grad, ref in zip(self._grad_positions(args), grads, ref_grads):
            assert grad.dtype == args[position].dtype and grad.shape == args[position].shape
            self.assert_close(grad, ref, self.grad_dtype(position, dtype), grad=True)

    def test_gradcheck(self, backend, device, layout, case):
        args = self.layout_inputs(self.make_inputs(case, self.shape, torch.float64, device, seed=3, purpose="gradcheck"), layout)
        args = self._with_grad(args)
        positions = self._grad_positions(args)

        def fn(*diff):
            full = list(args)
            for position, value in zip(positions, diff):
                full[position] = value
            out = _as_tuple(self.call(backend, *full))
            return tuple(out[i] for i in self.grad_outputs)

        fast = self.gradcheck_fast_triton_interpret and backend == "triton" and device == "cpu"
        assert torch.autograd.gradcheck(fn, tuple(args[i] for i in positions), fast_mode=fast)

    def test_opcheck(self, backend, device, layout, case):
        op = getattr(torch.ops.fgreid, self.op_def.kernel_name(backend))
        args = self.layout_inputs(self.make_inputs(case, self.shape, torch.float32, device, seed=4, purpose="opcheck"), layout)
        torch.library.opcheck(op, self.kernel_args(args))
        if self.grad_inputs:
            torch.library.opcheck(op, self.kernel_args(self._with_grad(args)))
        if self.op_def.backward is not None:
            backward = getattr(torch.ops.fgreid, self.op_def.kernel_name(backend) + "_backward")
            for backward_args in self.backward_args(args, device):
                torch.library.opcheck(backward, backward_args)
        for other, other_args in self.kernel_opchecks(backend, args, device):
            torch.library.opcheck(other, other_args)

    def test_bad_input_raises_naming_argument(self, checked_backend, device, bad):
        message, make, error = bad
        args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in make())
        with pytest.raises(error, match=self._pattern(message)):
            self.call(checked_backend, *args)

    def test_bad_input_raises_in_kernel_and_on_meta(self, bad_kernel):
        """The kernel ops check their inputs (a direct torch.ops caller), and so do their fakes."""
        message, make, error = bad_kernel
        args = make()
        pattern = self._pattern(message, self.kernel_message_op)
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

        compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=self.compile_backend)
        for seed, shape in enumerate(self.shapes):
            args = self._with_grad(self.make_inputs(self.cases[0], shape, torch.float32, device, seed=seed, purpose="compile"))
            out = _as_tuple(compiled(*args))
            eager = _as_tuple(fn(*args))
            assert len(out) == len(eager)
            for o, e in zip(out, eager):
                torch.testing.assert_close(o, e, equal_nan=True)  # a skipped query's AP is NaN in both
            if not self.grad_inputs:
                continue
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
        self._assert_outputs(out, self._float64_reference(args), dtype, exact_integers=self.hypothesis_exact_integers)
        if not self.grad_inputs:
            return
        grads_out = [torch.ones_like(out[i]) for i in self.grad_outputs]
        grads = self._grads(out, args, grads_out)
        ref_grads = self._reference_grads(args, grads_out)
        for position, grad, ref in zip(self._grad_positions(args), grads, ref_grads):
            self.assert_close(grad, ref, self.grad_dtype(position, dtype), grad=True)

    def shape_strategy(self):
        raise NotImplementedError
