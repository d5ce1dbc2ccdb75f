"""Checks that every provider of a case times exactly the tensors its case states.

``check(case, device)`` builds the case's providers with its real config and calls each one with
the timed calls replaced by spies: every public op (``fgreid_ops.<op>``), every reference
(``fgreid_ops.reference.*``), every ``nn.Module`` call (whole models) and onnxruntime sessions
record the shape and dtype of each tensor they receive and return a cheap stand-in (connected to
the inputs, so backward providers run too); a dense output gradient a backward provider sends counts
as a tensor it reaches. ``compiled`` returns its function unchanged: what is
checked is what reaches the op, not Dynamo. A tensor returned by a spy (an intermediate, e.g. the
distance matrix between two references) is not an input. The check fails if a provider reaches a
tensor whose shape/dtype its case does not state, misses one it states, reaches a tensor that is
not among the inputs bound to it (a captured one, even of the right shape), is not a ``Bound``,
or calls no timed op at all.

Nothing is computed and nothing is compiled, so every case of every list (quick, default, full;
CPU and CUDA) is checked in seconds: the lists are built on the "meta" device.

    python bench/binding.py            # every op, every size, CPU and CUDA lists
"""

import contextlib
import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.append(os.path.dirname(HERE))

import torch  # noqa: E402

import common  # noqa: E402
import fgreid_ops  # noqa: E402
import fgreid_ops.reference  # noqa: E402
from common import SIZES, Bound  # noqa: E402


def _specs(values, produced, out, tensors):
    for v in values:
        if isinstance(v, torch.Tensor):
            if not any(v is p for p in produced):
                out.add((tuple(v.shape), v.dtype))
                tensors.append(v)
        elif isinstance(v, (list, tuple)):
            _specs(v, produced, out, tensors)
        elif isinstance(v, dict):
            _specs(v.values(), produced, out, tensors)
        elif type(v).__module__ == "numpy" and hasattr(v, "dtype") and hasattr(v, "shape"):
            out.add((tuple(v.shape), torch.from_numpy(v[:0] if v.ndim else v.reshape(1)[:0]).dtype))


STAND_IN_SHAPE = (1,) * 8  # one element, enough dims for a provider to index and reduce the result


def _stand_in(values):
    """A one-element tensor that depends on every floating input requiring grad (so that a
    backward provider runs), else a zero; shaped STAND_IN_SHAPE so that a provider can go on
    computing on it (e.g. ``reference(...)[0].mean((2, 3))``)."""
    tensors = []

    def collect(vs):
        for v in vs:
            if isinstance(v, torch.Tensor):
                tensors.append(v)
            elif isinstance(v, (list, tuple)):
                collect(v)
            elif isinstance(v, dict):
                collect(v.values())

    collect(values)
    grads = [t for t in tensors if t.requires_grad and t.numel()]
    if grads:
        return sum(t[(0,) * t.dim()].float() for t in grads).reshape(STAND_IN_SHAPE)
    device = tensors[0].device if tensors else "cpu"
    return torch.zeros(STAND_IN_SHAPE, device=device)


class Log:
    def __init__(self):
        self.calls, self.produced = [], []

    def clear(self):
        self.calls.clear()
        self.produced.clear()

    def reach(self, name, tensors):
        """Records tensors a provider hands to autograd (a dense output gradient) as reached."""
        seen, reached = set(), []
        _specs(tensors, self.produced, seen, reached)
        self.calls.append((name, seen, reached))

    def record(self, name, args, kwargs):
        seen, tensors = set(), []
        _specs([*args, *kwargs.values()], self.produced, seen, tensors)
        self.calls.append((name, seen, tensors))
        result = _stand_in([*args, *kwargs.values()])
        self.produced.append(result)
        return result


class _FakeSession:
    """Stands in for onnxruntime.InferenceSession: records the feeds of run()."""

    log = None

    def __init__(self, *args, **kwargs):
        pass

    def run(self, output_names, feeds, *args, **kwargs):
        self.log.record("onnxruntime.InferenceSession.run", (), dict(feeds))
        return []


def _timed_callables():
    """{qualified name: (owner object, attribute)} of the callables the spy replaces."""
    import fgreid_ops.ops

    out = {}
    for name in fgreid_ops.ops.__all__:
        fn = getattr(fgreid_ops, name)
        if callable(fn) and not isinstance(fn, type):
            out[f"fgreid_ops.{name}"] = fn
    for name in getattr(fgreid_ops.reference, "__all__", dir(fgreid_ops.reference)):
        fn = getattr(fgreid_ops.reference, name)
        if callable(fn) and not isinstance(fn, type):
            out[f"fgreid_ops.reference.{name}"] = fn
    return out


@contextlib.contextmanager
def spy():
    """Replaces the timed callables everywhere the case modules can reach them; yields the Log."""
    log = Log()
    originals = _timed_callables()
    by_id = {id(fn): name for name, fn in originals.items()}
    patches = []  # (namespace dict or object, attribute, old value)

    def patch(owner, attr, value):
        if isinstance(owner, dict):
            patches.append((owner, attr, owner[attr]))
            owner[attr] = value
        else:
            patches.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, value)

    def make_spy(name):
        def spy_fn(*args, **kwargs):
            return log.record(name, args, kwargs)
        return spy_fn

    def module_call(self, *args, **kwargs):
        return log.record(type(self).__name__, args, kwargs)

    def output_grads(outs, grad):  # the outputs are stand-ins: a dense gradient is recorded, not applied
        if isinstance(grad, torch.Tensor):
            log.reach("output gradient", [grad])
        return tuple(torch.ones_like(o) for o in outs)

    spies = {name: make_spy(name) for name in originals}
    modules = [fgreid_ops, fgreid_ops.reference, common] + [
        m for n, m in list(sys.modules.items()) if n == "cases" or n.startswith("cases.")]
    try:
        for module in modules:
            namespace = vars(module)
            for attr, value in list(namespace.items()):
                if id(value) in by_id and value is originals[by_id[id(value)]]:
                    patch(namespace, attr, spies[by_id[id(value)]])
                elif value is common.compiled and module is not common:
                    patch(namespace, attr, _identity)
        patch(vars(common), "compiled", _identity)
        patch(vars(common), "output_grads", output_grads)
        patch(torch.nn.Module, "__call__", module_call)
        try:
            import onnxruntime

            _FakeSession.log = log
            patch(onnxruntime, "InferenceSession", _FakeSession)
            import fgreid_ops.onnx as onnx_export

            patch(onnx_export, "export_onnx", _write_nothing)
        except ImportError:
            pass
        yield log
    finally:
        for owner, attr, old in reversed(patches):
            if isinstance(owner, dict):
                owner[attr] = old
            else:
                setattr(owner, attr, old)


def _identity(fn):
    return fn


def _write_nothing(model, example_inputs, path, *args, **kwargs):
    with open(path, "wb"):
        pass
    return str(path)


def _bound_tensors(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _bound_tensors(v)
        elif isinstance(v, dict):
            yield from _bound_tensors(v.values())


def _fmt(specs):
    return ", ".join(f"{list(s)} {str(d).replace('torch.', '')}" for s, d in sorted(specs, key=str)) or "nothing"


def check(case, device, log):
    """The problems of one case (empty if every provider reaches exactly the stated tensors).
    Call inside ``with spy() as log``."""
    stated = {(tuple(shape), dtype) for shape, dtype in case.inputs.values()}
    where = f"{case.op} {case.config} {case.mode}"
    problems = []
    providers = case.setup(device)
    if not providers:
        return [f"{where}: no provider"]
    for name, provider in providers.items():
        if not isinstance(provider, Bound):
            problems.append(f"{where} {name}: a {type(provider).__name__}, not a Bound (bound(fn, *inputs))")
            continue
        log.clear()
        provider()
        seen = set().union(*(s for _, s, _ in log.calls)) if log.calls else set()
        own = [t for t in _bound_tensors([*provider.args, *provider.kwargs.values()])]
        foreign = [t for _, _, ts in log.calls for t in ts if not any(t is o for o in own)]
        if foreign:
            problems.append(f"{where} {name}: reaches {_fmt({(tuple(t.shape), t.dtype) for t in foreign})} that is not "
                            "among the inputs bound to it (a captured tensor)")
        if not log.calls:
            problems.append(f"{where} {name}: calls no timed op (fgreid_ops.<op>, a reference, a model, a session)")
        elif seen != stated:
            problems.append(f"{where} {name}: reaches {_fmt(seen)}; the case states {_fmt(stated)}"
                            f" (calls: {', '.join(n for n, _, _ in log.calls)})")
    return problems


def setup_device(list_device, case):
    """Every list is built on meta: no GPU needed, nothing allocated (CPU-only cases, onnxruntime,
    build on the CPU whatever device they are given)."""
    return "meta"


def check_all(ops=None, sizes=SIZES, devices=("cpu", "cuda")):
    """{(op, device, size): number of cases checked}, problems."""
    import run

    counts, problems = {}, []
    for op in ops or run.available_ops():
        module = importlib.import_module(f"cases.{op}")
        for device in devices:
            for size in sizes:
                cases = module.cases(device, size)
                counts[(op, device, size)] = len(cases)
                with spy() as log:
                    for case in cases:
                        problems += check(case, setup_device(device, case), log)
    return counts, problems


if __name__ == "__main__":
    counts, problems = check_all(sys.argv[1:] or None)
    print(f"{sum(counts.values())} cases checked")
    print("\n".join(problems) or "every provider reaches exactly the tensors its case states")
    sys.exit(1 if problems else 0)
