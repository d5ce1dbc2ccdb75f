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

- each provider is ``bound(fn, *inputs)`` or ``bound_backward(fn, *inputs)``; ``fn`` calls the op
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


def _forward_backward(fn, *args, **kwargs):
    wrt = tuple(t for t in _tensors([*args, *kwargs.values()]) if t.requires_grad)
    out = fn(*args, **kwargs)
    outs = tuple(o for o in _tensors(out if isinstance(out, (tuple, list)) else [out]) if o.requires_grad)
    return torch.autograd.grad(outs, wrt, tuple(torch.ones_like(o) for o in outs))


def bound_backward(fn: Callable, *args, **kwargs) -> Bound:
    """A provider that runs fn(*args, **kwargs) and its backward to the inputs that require grad
    (all-ones output gradients)."""
    return Bound(_forward_backward, fn, *args, **kwargs)


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
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return q[0], m.median, q[3]


def time_cuda(fn: Callable, size: str) -> tuple[float, float, float]:
    """p20/p50/p80 seconds per call with triton.testing.do_bench (L2 flushed between calls)."""
    import triton.testing

    warmup, rep = {"quick": (5, 20), "default": (25, 100), "full": (25, 200)}[size]
    ms = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.2, 0.5, 0.8])
    return tuple(v / 1e3 for v in ms)


def peak_bandwidth_cuda() -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write of 1 GiB)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    _, median, _ = time_cuda(lambda: dst.copy_(src), "default")
    return 2 * src.numel() * src.element_size() / median
