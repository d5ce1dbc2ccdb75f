"""Benchmark harness shared by every op. An op plugs in with one module bench/cases/<op>.py that
defines `cases(device, quick) -> list[Case]`; bench/run.py discovers it. Each Case names its
shape, the bytes an ideal kernel moves (for GB/s), and one zero-argument callable per provider:
"eager" (the plain-PyTorch reference), "compile" (torch.compile of the reference) and "fgreid"
(our op with the default backend; more, e.g. "fgreid-triton", when several backends apply)."""

import dataclasses
import statistics
from typing import Callable

import torch


@dataclasses.dataclass
class Case:
    op: str
    config: str
    mode: str  # "fwd" or "fwd+bwd"
    bytes_moved: int
    providers: dict  # name -> Callable[[], object]
    note: str = ""
    items: int = 0  # images per call, for whole-model cases (reported as img/s)


def forward_backward(fn: Callable, inputs: tuple, grad_outputs=None) -> Callable[[], object]:
    """A callable that runs fn(*inputs) and its backward to the inputs that require grad."""
    wrt = tuple(t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad)

    def run():
        out = fn(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        outs = tuple(o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad)
        grads = grad_outputs if grad_outputs is not None else tuple(torch.ones_like(o) for o in outs)
        return torch.autograd.grad(outs, wrt, grads)

    return run


def compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=False)


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def time_cpu(fn: Callable, quick: bool) -> tuple[float, float, float]:
    """p20/p50/p80 seconds per call with torch.utils.benchmark (honours torch.get_num_threads())."""
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=0.05 if quick else 0.5)
    times = sorted(m.times)
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return q[0], m.median, q[3]


def time_cuda(fn: Callable, quick: bool) -> tuple[float, float, float]:
    """p20/p50/p80 seconds per call with triton.testing.do_bench (L2 flushed between calls)."""
    import triton.testing

    ms = triton.testing.do_bench(fn, warmup=5 if quick else 25, rep=20 if quick else 100, quantiles=[0.2, 0.5, 0.8])
    return tuple(v / 1e3 for v in ms)


def peak_bandwidth_cuda() -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write of 1 GiB)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    _, median, _ = time_cuda(lambda: dst.copy_(src), quick=False)
    return 2 * src.numel() * src.element_size() / median
