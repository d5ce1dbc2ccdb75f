"""The case API every bench/cases/<op>.py module implements, and the timers.

A case module defines ``cases(device: str, size: str) -> list[Case]``; bench/run.py discovers it.
``device`` is "cpu" or "cuda" (it picks the shape list), ``size`` is "quick" (CI smoke, seconds),
"default" (the models' shapes, minutes) or "full" (every shape). A Case only *describes* the work:
its ``inputs`` state the shape and dtype of every tensor the timed calls receive, and its
``setup(device)`` builds those tensors on ``device`` and returns one provider per name, each a
``Bound``: the timed callable with its inputs bound explicitly (Liger-Kernel's setup(config)
style), so no provider can reach a tensor of another case through a closure.

Providers: "eager" (the plain-PyTorch reference), "compile" (``compiled(reference)``), "fgreid"
(our op, default backend; "fgreid-cuda" / "fgreid-triton" where both exist), and for models
"fgreid-compile" / "fgreid-onnxruntime". Rules a case follows (tests/test_bench_binding.py
checks them by calling every provider with the real configs under a spy):

- each provider is ``bound(fn, *inputs)`` or ``bound_backward(fn, *inputs, grad=...)`` (the output
  gradient: "ones", "gap", "sum", each built at the first call and kept, or a dense tensor made
  once in setup and stated in ``inputs``, e.g. as "grad_out"); ``fn`` calls the op
  as ``fgreid_ops.<op>(...)``, a reference from ``fgreid_ops.reference``, a model, or an
  onnxruntime session, on exactly the tensors ``inputs`` names (no other tensor of the case's
  config may be captured);
- torch.compile goes through ``compiled`` (the harness resets Dynamo between cases);
- ``setup`` works on the "meta" device too (tensors made with ``device=device``); a CPU-only
  case (onnxruntime) builds on the CPU whatever device it is given.

A minimal module::

    def cases(device, size):
        shape = (4, 64, 24, 8) if size == "quick" else (64, 2048, 24, 8)
        def setup(dev):
            x = torch.rand(shape, device=dev)
            return {"eager": bound(gem_reference, x, 3.0), "compile": bound(compiled(gem_reference), x, 3.0),
                    "fgreid": bound(fgreid_ops.gem, x, 3.0)}
        return [Case("gem", f"x={list(shape)}", "fwd", {"x": spec(shape)}, setup, bytes_moved=...)]
"""

import dataclasses
import importlib.util
import statistics
from typing import Callable

import torch

SIZES = ("quick", "default", "full")


def spec(shape, dtype=torch.float32):
    """The stated shape and dtype of one input tensor."""
    return (tuple(int(s) for s in shape), dtype)


@dataclasses.dataclass
class Case:
    op: str
    config: str  # label: the shapes and options, as the tables and plots show them
    mode: str  # "fwd" or "fwd+bwd"
    inputs: dict  # name -> spec(shape, dtype): every tensor the timed calls receive, nothing else
    setup: Callable[[str], dict]  # setup(device) -> {provider name: Bound}
    bytes_moved: int = 0  # the bytes an ideal kernel reads and writes (for GB/s); 0 if not meaningful
    note: str = ""
    items: int = 0  # images per call, for whole-model cases (reported as img/s)


class Bound:
    """``fn(*args, **kwargs)`` with every input bound explicitly: one provider of a case."""

    def __init__(self, fn: Callable, *args, **kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __call__(self):
        return self.fn(*self.args, **self.kwargs)


def bound(fn: Callable, *args, **kwargs) -> Bound:
    return Bound(fn, *args, **kwargs)


def _tensors(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _tensors(v)


GRADS = ("ones", "gap", "sum", "dense")  # the output-gradient layouts a fwd+bwd case can send


def grad_mode(grad: str) -> str:
    """The mode label of a fwd+bwd case with that output gradient: "fwd+bwd" for all-ones."""
    return "fwd+bwd" if grad == "ones" else f"fwd+bwd {grad}"


def dense_grad(shape, device, dtype=torch.float32, seed=1) -> torch.Tensor:
    """The "dense" output gradient: seeded random values, made once in setup and bound to the
    provider (``bound_backward(fn, *inputs, grad=dense_grad(...))``)."""
    if torch.device(device).type == "meta":
        return torch.empty(shape, dtype=dtype, device=device)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


def grad_bytes(grad: str, out_shape, itemsize: int) -> int:
    """The bytes the backward must read of that output gradient: the whole tensor for ones/dense,
    one value per plane for gap, one value for sum."""
    if grad == "gap":
        return int(torch.Size(out_shape[:-2]).numel()) * itemsize
    if grad == "sum":
        return itemsize
    return int(torch.Size(out_shape).numel()) * itemsize


def output_grads(outs, grad):
    """The gradient sent to each output, as the models send it. ``grad``: "ones" (dense ones),
    "gap" (the gradient of ``out.mean((-2, -1))``: one value 1/(H·W) per plane, expanded with
    stride 0 over H, W), "sum" (the gradient of ``out.sum()``: a scalar expanded to the output's
    shape) or a tensor (the dense gradient of the one differentiable output)."""
    if isinstance(grad, torch.Tensor):
        if len(outs) != 1:
            raise ValueError(f"bench: expected one differentiable output for a dense gradient, got {len(outs)}")
        return (grad,)
    if grad == "ones":
        return tuple(torch.ones_like(o) for o in outs)
    if grad == "gap":
        return tuple((torch.ones((*o.shape[:-2], 1, 1), dtype=o.dtype, device=o.device) / (o.shape[-2] * o.shape[-1]))
                     .expand(o.shape) for o in outs)
    if grad == "sum":
        return tuple(torch.ones((), dtype=o.dtype, device=o.device).expand(o.shape) for o in outs)
    raise ValueError(f"bench: expected grad in {GRADS[:-1]} or a dense tensor, got {grad!r}")


class _ForwardBackward:
    """fn's forward and backward with the output gradient ``grad``. The gradients are built at the
    first call and kept, as a dense one is made once in setup: a timed call runs the op's forward
    and backward, not a fill of a fresh all-ones tensor (which at 100 MB cost as much as the op)."""

    def __init__(self, fn: Callable):
        self.fn, self.grads = fn, None

    def __call__(self, grad, *args, **kwargs):
        wrt = tuple(t for t in _tensors([*args, *kwargs.values()]) if t.requires_grad)
        out = self.fn(*args, **kwargs)
        outs = tuple(o for o in _tensors(out if isinstance(out, (tuple, list)) else [out]) if o.requires_grad)
        layout = tuple((o.shape, o.dtype, o.device) for o in outs)
        if self.grads is None or self.grads[0] != layout:
            self.grads = layout, output_grads(outs, grad)
        return torch.autograd.grad(outs, wrt, self.grads[1])


def bound_backward(fn: Callable, *args, grad="ones", **kwargs) -> Bound:
    """A provider that runs fn(*args, **kwargs) and its backward to the inputs that require grad,
    with the output gradient ``grad`` (see ``output_grads``; a dense one is a case input too)."""
    return Bound(_ForwardBackward(fn), grad, *args, **kwargs)


def our_backends(device: str, gpu=("cuda", "triton")) -> dict:
    """Provider name -> backend argument: on CUDA one provider per GPU backend of the op
    (Triton only where it is installed), elsewhere the default backend."""
    if device != "cuda":
        return {"fgreid": None}
    has_triton = importlib.util.find_spec("triton") is not None
    return {f"fgreid-{b}": b for b in gpu if b != "triton" or has_triton}


def compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=False)


def nbytes(*tensors_or_specs) -> int:
    total = 0
    for t in tensors_or_specs:
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        else:
            shape, dtype = t
            total += int(torch.Size(shape).numel()) * dtype.itemsize
    return total


MIN_RUN_TIME = {"quick": 0.05, "default": 0.3, "full": 1.0}


def time_cpu(fn: Callable, size: str) -> tuple[float, float, float]:
    """p20/p50/p80 seconds per call with torch.utils.benchmark (honours torch.get_num_threads())."""
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=MIN_RUN_TIME[size])
    times = sorted(m.times)
    # "inclusive": quantiles within the measured range (the default extrapolates past it, which
    # with a few noisy blocks gave negative p20 times)
    q = statistics.quantiles(times, n=5, method="inclusive") if len(times) >= 2 else [times[0]] * 4
    return q[0], m.median, q[3]


def time_cuda(fn: Callable, size: str) -> tuple[float, float, float]:
    """p20/p50/p80 seconds per call with triton.testing.do_bench (L2 flushed between calls)."""
    import triton.testing

    warmup, rep = {"quick": (5, 20), "default": (25, 100), "full": (25, 200)}[size]
    ms = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.2, 0.5, 0.8])
    return tuple(v / 1e3 for v in ms)


def copy_bandwidth_cpu(size: str = "default") -> tuple[float, float]:
    """Measured copy bandwidth on CPU with the current thread count, bytes/s (read + write of
    256 MiB): into an existing buffer, and into freshly allocated memory (what an op that returns
    a new tensor pays: the first touch of every page faults it in)."""
    src = torch.ones(1 << 26, dtype=torch.float32)
    dst = torch.empty_like(src)
    moved = 2 * src.numel() * src.element_size()
    _, into_existing, _ = time_cpu(lambda: dst.copy_(src), size)
    _, into_fresh, _ = time_cpu(lambda: torch.empty_like(src).copy_(src), size)
    return moved / into_existing, moved / into_fresh


def peak_bandwidth_cuda() -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write of 1 GiB)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    _, median, _ = time_cuda(lambda: dst.copy_(src), "default")
    return 2 * src.numel() * src.element_size() / median
