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
