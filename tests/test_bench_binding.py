"""Every provider of every bench case (quick, default and full lists; CPU and CUDA lists; every
op, models and ONNX included) reaches exactly the tensors its case states.

The providers are called with the cases' real configs; the timed calls (ops, references, model
calls, onnxruntime sessions) are spies that record what they receive and return a cheap stand-in,
so nothing is computed or compiled (bench/binding.py). The lists are built on the meta device."""

import os
import sys

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import binding  # noqa: E402
import common  # noqa: E402
import run  # noqa: E402


@pytest.mark.parametrize("op", run.available_ops())
def test_every_provider_reaches_the_stated_tensors(op):
    counts, problems = binding.check_all([op])
    assert not problems, "\n".join(problems)
    assert counts[(op, "cpu", "quick")] > 0 and counts[(op, "cpu", "default")] > 0


def _case(setup, inputs):
    return common.Case("gem", "x=[4, 8, 2, 2]", "fwd", inputs, setup)


def test_the_spy_catches_a_provider_that_times_another_case_tensor():
    import fgreid_ops
    import fgreid_ops.reference

    stale = torch.rand(5, 6, 2, 2)

    def setup(device):  # as in a case module, the reference is looked up when setup runs
        x = torch.rand(4, 8, 2, 2, device=device)
        p = torch.tensor([3.0])
        # the bug of issue 13: the closure reaches the last loop iteration's tensor
        return {"eager": common.bound(fgreid_ops.reference.gem_reference, x, p), "fgreid": common.bound(lambda x, p: fgreid_ops.gem(stale, p), x, p)}

    with binding.spy() as log:
        problems = binding.check(_case(setup, {"x": common.spec((4, 8, 2, 2)), "p": common.spec((1,))}), "cpu", log)
    assert len(problems) == 2 and all("fgreid" in p for p in problems), problems
    assert "[5, 6, 2, 2]" in problems[0]


def test_the_spy_catches_a_captured_tensor_of_the_right_shape_and_a_wrong_dtype():
    import fgreid_ops

    twin = torch.rand(4, 8, 2, 2)

    def setup(device):
        x = torch.rand(4, 8, 2, 2, device=device)
        p = torch.tensor([3.0])
        return {"fgreid": common.bound(lambda x, p: fgreid_ops.gem(twin, p), x, p),
                "half": common.bound(fgreid_ops.gem, x.half(), p)}

    with binding.spy() as log:
        problems = binding.check(_case(setup, {"x": common.spec((4, 8, 2, 2)), "p": common.spec((1,))}), "cpu", log)
    assert any("fgreid" in p and "captured" in p for p in problems), problems
    assert any("half" in p and "float16" in p for p in problems), problems


def test_the_spy_requires_bound_providers_that_call_a_timed_op():
    def setup(device):
        x = torch.rand(4, device=device)
        return {"lambda": lambda: x.sum(), "nothing": common.bound(torch.sum, x)}

    with binding.spy() as log:
        problems = binding.check(_case(setup, {"x": common.spec((4,))}), "cpu", log)
    assert any("lambda" in p and "not a Bound" in p for p in problems), problems
    assert any("nothing" in p and "calls no timed op" in p for p in problems), problems


def test_the_spy_restores_what_it_replaced():
    import fgreid_ops

    before = (fgreid_ops.gem, torch.nn.Module.__call__, common.compiled)
    with binding.spy():
        assert fgreid_ops.gem is not before[0]
    assert (fgreid_ops.gem, torch.nn.Module.__call__, common.compiled) == before


def test_the_spy_counts_a_dense_output_gradient_as_a_reached_tensor():
    import fgreid_ops

    def setup(device):
        x = torch.rand(4, 8, 2, 2, device=device).requires_grad_()
        p = torch.tensor([3.0])
        g = common.dense_grad((4, 8), device)
        return {"dense": common.bound_backward(fgreid_ops.gem, x, p, grad=g),
                "gap": common.bound_backward(fgreid_ops.gem, x, p, grad="gap")}

    inputs = {"x": common.spec((4, 8, 2, 2)), "p": common.spec((1,))}
    with binding.spy() as log:
        unstated = binding.check(_case(setup, inputs), "cpu", log)
        stated = binding.check(_case(setup, {**inputs, "grad_out": common.spec((4, 8))}), "cpu", log)
    assert len(unstated) == 1 and "dense" in unstated[0] and "[4, 8] float32" in unstated[0], unstated
    assert len(stated) == 1 and "gap" in stated[0] and "[4, 8] float32" in stated[0], stated


def test_output_gradients_have_the_models_layouts():
    out = torch.rand(2, 3, 4, 5)
    gap, = common.output_grads((out,), "gap")
    total, = common.output_grads((out,), "sum")
    assert gap.shape == out.shape and gap.stride() == (3, 1, 0, 0) and torch.all(gap == 1 / 20)
    assert total.shape == out.shape and total.stride() == (0, 0, 0, 0) and torch.all(total == 1)
    x = out.clone().requires_grad_()
    expected, = torch.autograd.grad(x.mean((2, 3)).sum(), x)
    assert torch.equal(common.bound_backward(torch.mul, x, 1.0, grad="gap")()[0], expected)
