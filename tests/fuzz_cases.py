"""The table of hostile inputs run by tests/test_fuzz.py: for every public function and every
torch.ops.fgreid op, bad or edge inputs (wrong dtype, rank, shape, device, a meta tensor mixed with
CPU ones, empty dims, out-of-range indices, aliasing, NaN/inf, expanded and non-contiguous
tensors, sizes that must fail before anything is allocated).

Each case either expects an error whose message names one of the caller's arguments
(``names``), or a result equal to its reference (``expect``), or accepts either (both given).
Cases are built lazily: `run_case(name)` makes the tensors, so a subprocess can run any subset by
name (``python tests/fuzz_cases.py`` reads names on stdin and writes one JSON line per case).
"""

import dataclasses
import json
import re
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

import fgreid_ops
from fgreid_ops import reference as R

OPS = torch.ops.fgreid


@dataclasses.dataclass(frozen=True)
class Case:
    name: str                       # "<target>/<what>"
    run: Callable                   # the hostile call; returns its result
    names: tuple = ()               # an error must name one of these arguments
    expect: Callable | None = None  # the result must equal expect()
    rtol: float = 1e-5
    atol: float = 1e-6
    batch: str = ""                 # subprocess group; defaults to the target
    env: tuple = ()                 # (variable, value) pairs for that subprocess


CASES: dict[str, Case] = {}


def add(target, what, run, names=(), expect=None, **kw):
    name = f"{target}/{what}"
    if name in CASES:
        raise KeyError(name)
    kw.setdefault("batch", target.removeprefix("ops.").removesuffix("_backward").split(".")[0])
    CASES[name] = Case(name, run, tuple(names), expect, **kw)


# --- the verdict (runs where the case ran) -----------------------------------------------------

def _names_argument(message, names):
    """fgreid_ops-style ("fgreid_ops.<op>: expected <arg> ...") or the dispatcher's schema
    check ("... for argument 'x' ..."), naming one of the arguments as a whole word."""
    styled = message.startswith("fgreid_ops.") or "argument '" in message
    return styled and any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message) for n in names)


def _compare(actual, expected, case, where="result"):
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            return f"{where}: expected a tensor, got {type(actual).__name__}"
        if actual.device != expected.device or actual.shape != expected.shape or actual.dtype != expected.dtype:
            return (f"{where}: expected {expected.dtype} {list(expected.shape)} on {expected.device}, "
                    f"got {actual.dtype} {list(actual.shape)} on {actual.device}")
        if actual.device.type == "meta":
            return None
        try:
            torch.testing.assert_close(actual, expected, rtol=case.rtol, atol=case.atol, equal_nan=True)
        except AssertionError as e:
            return f"{where}: {str(e)[:400]}"
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(actual, (tuple, list)) or len(actual) != len(expected):
            return f"{where}: expected a sequence of {len(expected)}, got {actual!r:.200}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            err = _compare(a, e, case, f"{where}[{i}]")
            if err:
                return err
        return None
    if isinstance(expected, float):
        if not isinstance(actual, (float, int)) or not (actual == expected or (actual != actual and expected != expected)
                                                        or abs(actual - expected) <= case.atol + case.rtol * abs(expected)):
            return f"{where}: expected {expected}, got {actual!r}"
        return None
    if actual != expected:
        return f"{where}: expected {expected!r:.200}, got {actual!r:.200}"
    return None


def run_case(name):
    """(passed, detail) of one case."""
    case = CASES[name]
    torch.manual_seed(0)
    try:
        result = case.run()
    except Exception as e:  # noqa: BLE001  (the verdict is about which exception)
        message = str(e).strip()
        if case.names and _names_argument(message, case.names):
            return True, f"{type(e).__name__}: {message[:300]}"
        want = f"an error naming {' or '.join(case.names)}" if case.names else "a result"
        return False, f"expected {want}, got {type(e).__name__}: {message[:500]}"
    if case.expect is None:
        return False, f"expected an error naming {' or '.join(case.names)}, got a result: {_describe(result)}"
    torch.manual_seed(0)
    err = _compare(result, case.expect(), case)
    return (err is None), (err or "equal to the reference")


def _describe(result):
    if isinstance(result, torch.Tensor):
        return f"{result.dtype} {list(result.shape)} on {result.device}"
    if isinstance(result, (tuple, list)):
        return "(" + ", ".join(_describe(r) for r in result) + ")"
    return repr(result)[:200]


# --- tensor helpers ----------------------------------------------------------------------------

def rand(*shape, dtype=torch.float32, lo=0.1, hi=1.0):
    return torch.rand(*shape, dtype=torch.float64).mul(hi - lo).add(lo).to(dtype)


def strided(t):
    """The same values as t in a non-contiguous view (every other element of the last dim)."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


def transposed_last(t):
    """The same values as t, stored transposed in its last two dims (1-D: every other element)."""
    if t.dim() < 2:
        return strided(t)
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def channels_last(t):
    """The same values as t in channels_last order (4-D and 5-D; other ranks unchanged)."""
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    return t


def with_offset(t):
    """The same values as t in a view that does not start at its storage's first element."""
    flat = torch.cat([torch.zeros(3, dtype=t.dtype), t.reshape(-1)])
    return flat[3:].view(t.shape)


def with_value(t, value, index=0):
    t = t.clone()
    t.view(-1)[index] = value
    return t


def set_arg(base, **changes):
    """A builder: base() with some arguments replaced (each change a function of the old value)."""
    def build():
        args = base()
        for k, f in changes.items():
            args[k] = f(args[k]) if callable(f) else f
        return args
    return build


def call(fn, build):
    return lambda: fn(**build())


def _empty_dim(t, d):
    shape = list(t.shape)
    shape[d] = 0
    return t.new_empty(shape)


def _resize_dim(t, d, n):
    shape = list(t.shape)
    shape[d] = n
    return torch.rand(shape, dtype=torch.float64).add(0.1).to(t.dtype) if t.dtype.is_floating_point \
        else torch.zeros(shape, dtype=t.dtype)


def generic(target, fn, base, float_args=(), int_args=(), anchor=None, ref=None, others_named=(),
            sizes=(), skip=(), noncontig=(), nan=(), layout_ref=None, nan_labels=("nan", "inf", "neginf"), **kw):
    """The mutations every tensor argument gets: wrong dtype (int32, bool, complex), rank + 1,
    rank - 1, a meta tensor among CPU ones, a Python list or None instead of a tensor, an empty dim
    and a wrong size (``sizes``: (arg, dim) pairs whose size is tied to another argument), each
    expecting an error that names the argument (or ``anchor``, the one it is checked against).
    Against ``ref`` (a function of the same arguments; ``layout_ref`` for the layouts): strided,
    expanded, transposed, channels_last and offset views of ``noncontig``, NaN/inf in ``nan``,
    and every float argument in float64, float16 and bfloat16 (when ``nan`` is given)."""
    layout_ref = layout_ref or ref
    tensors = list(float_args) + list(int_args)
    anchor = anchor or tensors[0]

    def accept(arg):
        return tuple(tensors) + tuple(others_named) if arg == anchor else (arg, anchor, *others_named)

    def mutate(what, arg, f, names=None, expect=None, build=None, **extra):
        if what in skip:
            return
        add(target, what, call(fn, build or set_arg(base, **{arg: f})), names if names is not None else accept(arg),
            expect=expect, **{**kw, **extra})

    for arg in float_args:
        mutate(f"{arg}_int32", arg, lambda t: t.to(torch.int32))
        mutate(f"{arg}_bool", arg, lambda t: t > 0.5)
    for arg in int_args:
        mutate(f"{arg}_float", arg, lambda t: t.to(torch.float32))
        mutate(f"{arg}_bool", arg, lambda t: t > 0)
    for arg in tensors:
        mutate(f"{arg}_rank_plus", arg, lambda t: t[None])
        mutate(f"{arg}_rank_minus", arg, lambda t: t[0] if t.dim() > 0 else t[None, None])
        if len(tensors) > 1:  # one meta tensor among CPU ones (all-meta is a legitimate shape query)
            mutate(f"{arg}_meta", arg, lambda t: t.to("meta"))
        mutate(f"{arg}_list", arg, lambda t: t.tolist())
    for arg in float_args:
        mutate(f"{arg}_complex", arg, lambda t: t.to(torch.complex64))
    for arg in tensors:  # through torch.ops, None arrives as an undefined tensor
        mutate(f"{arg}_none", arg, None)
    for arg, d in sizes:
        mutate(f"{arg}_size{d}_plus1", arg, lambda t, d=d: _resize_dim(t, d, t.shape[d] + 1))
        mutate(f"{arg}_empty{d}", arg, lambda t, d=d: _empty_dim(t, d))
    if ref is not None:
        for arg in noncontig:
            mutate(f"{arg}_strided", arg, strided, names=(), expect=lambda arg=arg: layout_ref(**set_arg(base, **{arg: strided})()))
            mutate(f"{arg}_expanded", arg, lambda t: t[:1].expand(t.shape), names=(),
                   expect=lambda arg=arg: layout_ref(**set_arg(base, **{arg: lambda t: t[:1].expand(t.shape).contiguous()})()))
        for arg in noncontig:
            for label, f in (("transposed", transposed_last), ("channels_last", channels_last), ("offset", with_offset)):
                mutate(f"{arg}_{label}", arg, f, names=(), expect=lambda f=f, arg=arg: layout_ref(**set_arg(base, **{arg: f})()))
        if nan:
            for dtype, tol in ((torch.float64, 1e-6), (torch.float16, 4e-3), (torch.bfloat16, 3e-2)):
                cast = {a: (lambda t, dtype=dtype: t.to(dtype)) for a in float_args}
                mutate(f"all_{str(dtype)[6:]}", float_args[0], cast[float_args[0]], names=(), rtol=tol, atol=tol,
                       expect=lambda cast=cast: ref(**set_arg(base, **cast)()), build=set_arg(base, **cast))
        for arg in nan:
            for label, v in (("nan", float("nan")), ("inf", float("inf")), ("neginf", float("-inf"))):
                if label not in nan_labels:
                    continue
                f = lambda t, v=v: with_value(t, v, t.numel() // 2)  # noqa: E731
                mutate(f"{arg}_{label}", arg, f, names=(), expect=lambda f=f, arg=arg: ref(**set_arg(base, **{arg: f})()))


def grads_of(fn, inputs, grad_out, *keys):
    """torch.autograd.grad of fn(**inputs) for inputs[keys], with grad_out."""
    inputs = {k: (v.detach().clone().requires_grad_(k in keys) if isinstance(v, torch.Tensor) else v)
              for k, v in inputs.items()}
    out = fn(**inputs)
    return torch.autograd.grad(out, [inputs[k] for k in keys], grad_out)


# --- gem ---------------------------------------------------------------------------------------

def gem_base():
    return dict(x=rand(2, 3, 4, 5), p=torch.tensor([3.0]), eps=1e-6)


def gem_ref(x, p, eps, backend=None):
    return R.gem_reference(x, p, eps)


generic("gem", fgreid_ops.gem, gem_base, float_args=("x", "p"), ref=gem_ref, noncontig=("x",), nan=("x",),
        skip=("p_rank_minus",))
add("gem", "p_scalar_tensor", call(fgreid_ops.gem, set_arg(gem_base, p=torch.tensor(3.0))), names=("p",))
add("gem", "p_wrong_channels", call(fgreid_ops.gem, set_arg(gem_base, p=torch.tensor([3.0, 2.0]))), names=("p",))
add("gem", "p_per_channel", call(fgreid_ops.gem, set_arg(gem_base, p=torch.tensor([3.0, 2.0, 1.5]))),
    expect=lambda: gem_ref(**set_arg(gem_base, p=torch.tensor([3.0, 2.0, 1.5]))()))
add("gem", "p_python_float", call(fgreid_ops.gem, set_arg(gem_base, p=2.5)),
    expect=lambda: gem_ref(**set_arg(gem_base, p=torch.tensor([2.5]))()))
add("gem", "p_string", call(fgreid_ops.gem, set_arg(gem_base, p="abc")), names=("p",))
add("gem", "eps_zero", call(fgreid_ops.gem, set_arg(gem_base, eps=0.0)), names=("eps",))
add("gem", "eps_negative", call(fgreid_ops.gem, set_arg(gem_base, eps=-1.0)), names=("eps",))
add("gem", "x_empty_batch", call(fgreid_ops.gem, set_arg(gem_base, x=lambda t: t[:0])), names=("x",))
add("gem", "x_empty_hw", call(fgreid_ops.gem, set_arg(gem_base, x=lambda t: t[:, :, :0])), names=("x",))
add("gem", "x_float64_p_float32", call(fgreid_ops.gem, set_arg(gem_base, x=lambda t: t.double())),
    expect=lambda: gem_ref(**set_arg(gem_base, x=lambda t: t.double())()))
add("gem", "backend_bogus", call(fgreid_ops.gem, set_arg(gem_base, backend="gpu")), names=("backend",))
add("gem", "x_all_below_eps", call(fgreid_ops.gem, set_arg(gem_base, x=lambda t: -t)),
    expect=lambda: gem_ref(**set_arg(gem_base, x=lambda t: -t)()))


def gem_op_base():
    return dict(x=rand(2, 3, 4, 5), p=torch.tensor([3.0]), eps=1e-6)


def gem_bwd_base():
    return dict(grad_out=rand(2, 3), x=rand(2, 3, 4, 5), p=torch.tensor([3.0]), eps=1e-6, need_grad_p=True)


def gem_bwd_ref(grad_out, x, p, eps, need_grad_p):
    gx, gp = grads_of(lambda x, p: R.gem_reference(x.double(), p.double(), eps), dict(x=x, p=p), grad_out.double(), "x", "p")
    return gx.to(x.dtype), gp.double()


def _gem_bwd_compare(op):
    """The backward op's grad_x and grad_p (reduced over rows as the autograd formula does)."""
    def run(**args):
        gx, rows = op(**args)
        return gx, rows.double().sum().reshape(1)
    return run


for op_name in ("gem", "gem_triton"):
    fwd = getattr(OPS, op_name)
    bwd = getattr(OPS, f"{op_name}_backward")
    generic(f"ops.{op_name}", fwd, gem_op_base, float_args=("x", "p"), ref=gem_ref, noncontig=("x",), nan=("x",),
            sizes=(("p", 0),), skip=("p_rank_minus",))
    add(f"ops.{op_name}", "eps_zero", call(fwd, set_arg(gem_op_base, eps=0.0)), names=("eps",))
    add(f"ops.{op_name}", "x_3d", call(fwd, set_arg(gem_op_base, x=lambda t: t[0])), names=("x",))
    add(f"ops.{op_name}", "x_empty_batch", call(fwd, set_arg(gem_op_base, x=lambda t: t[:0])), names=("x",),
        expect=lambda: torch.empty(0, 3))
    add(f"ops.{op_name}", "x_empty_hw", call(fwd, set_arg(gem_op_base, x=lambda t: t[:, :, :0])), names=("x",))
    bwd_name = f"ops.{op_name}_backward"
    generic(bwd_name, _gem_bwd_compare(bwd), gem_bwd_base, float_args=("grad_out", "x", "p"), anchor="x",
            sizes=(("grad_out", 0), ("grad_out", 1), ("p", 0)), skip=("p_rank_minus",),
            ref=lambda **a: (gem_bwd_ref(**a)[0], gem_bwd_ref(**a)[1].sum().reshape(1)),
            noncontig=("grad_out", "x"), nan=("grad_out",), nan_labels=("nan",), rtol=1e-4, atol=1e-5, batch=op_name)
    # the shape mismatch of issue 14: x is 2^26 elements but grad_out has one
    add(bwd_name, "grad_out_mismatch_huge_x", lambda bwd=bwd: bwd(torch.ones(1), torch.ones(1, 2**26, 1, 1).expand(1, 2**26, 1, 1),
                                                                torch.tensor([3.0]), 1e-6, False),
        names=("grad_out",), batch=op_name)
    add(bwd_name, "x_expanded_huge_mismatch", lambda bwd=bwd: bwd(torch.ones(2, 3), torch.ones(1, 1, 1, 1).expand(2**20, 2**10, 2**10, 2**10),
                                                                torch.tensor([3.0]), 1e-6, True),
        names=("grad_out", "x"), batch=op_name)
    add(bwd_name, "grad_out_one_value_broadcast", lambda bwd=bwd: _gem_bwd_compare(bwd)(**set_arg(gem_bwd_base, grad_out=lambda g: g[:1, :1].expand(2, 3))()),
        expect=lambda: (lambda a: (gem_bwd_ref(**a)[0], gem_bwd_ref(**a)[1].sum().reshape(1)))(
            set_arg(gem_bwd_base, grad_out=lambda g: g[:1, :1].expand(2, 3).contiguous())()),
        rtol=1e-4, atol=1e-5, batch=op_name)
    add(bwd_name, "x_aliases_grad_out_storage",
        lambda bwd=bwd: (lambda s: _gem_bwd_compare(bwd)(grad_out=s[:6].view(2, 3), x=s[:120].view(2, 3, 4, 5), p=torch.tensor([3.0]),
                                                           eps=1e-6, need_grad_p=True))(rand(120)),
        expect=lambda: (lambda s: (lambda a: (gem_bwd_ref(**a)[0], gem_bwd_ref(**a)[1].sum().reshape(1)))(
            dict(grad_out=s[:6].view(2, 3).clone(), x=s[:120].view(2, 3, 4, 5).clone(), p=torch.tensor([3.0]), eps=1e-6,
                 need_grad_p=True)))(rand(120)), rtol=1e-4, atol=1e-5, batch=op_name)


# gem's second derivative: correct or a clear error, never silent zeros
def _gem_double_backward(backend):
    x = rand(2, 3, 4, 5, dtype=torch.float64).requires_grad_()
    p = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    y = fgreid_ops.gem(x, p, backend=backend)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    return torch.autograd.grad(gx.pow(2).sum(), x)[0]


def _gem_double_backward_ref():
    x = rand(2, 3, 4, 5, dtype=torch.float64).requires_grad_()
    p = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    y = R.gem_reference(x, p, 1e-6)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    return torch.autograd.grad(gx.pow(2).sum(), x)[0]


for backend in ("cpu", "triton"):
    add("gem", f"double_backward_{backend}", lambda b=backend: _gem_double_backward(b), names=("gem", "gem_backward", "gem_triton_backward"),
        expect=_gem_double_backward_ref)


def _gradient_penalty(fn, *shapes, wrt=0, seed=0):
    """d/dx of |d(fn(x, ...).pow(2).sum())/dx|^2 (double backward) in float64."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.rand(*shape, generator=g, dtype=torch.float64).add(0.1).requires_grad_() for shape in shapes]
    out = fn(*xs)
    out = out[0] if isinstance(out, tuple) else out
    (gx,) = torch.autograd.grad(out.pow(2).sum(), xs[wrt], create_graph=True)
    return torch.autograd.grad(gx.pow(2).sum(), xs[wrt])[0]


for backend in ("cpu", "triton"):
    add("topk_mask", f"double_backward_{backend}",
        lambda b=backend: _gradient_penalty(lambda f1, f2: fgreid_ops.topk_mask(f1, f2, 3, backend=b), (2, 3, 4, 5), (2, 3, 4, 5), wrt=1),
        expect=lambda: _gradient_penalty(lambda f1, f2: R.topk_mask_reference(f1, f2, 3), (2, 3, 4, 5), (2, 3, 4, 5), wrt=1),
        batch="topk_mask" if backend == "cpu" else "topk_mask_triton")
    add("batch_hard_triplet", f"double_backward_{backend}",
        lambda b=backend: _gradient_penalty(lambda e: fgreid_ops.batch_hard_triplet(e, torch.tensor(LABELS), backend=b), (6, 4)),
        names=("batch_hard_triplet_mine_backward", "batch_hard_triplet_mine_triton_backward"),
        expect=lambda: _gradient_penalty(lambda e: R.batch_hard_triplet_reference(e, torch.tensor(LABELS)), (6, 4)),
        batch="batch_hard_triplet" if backend == "cpu" else "bht_triton")
add("mask_upsample_mul", "double_backward",
    lambda: _gradient_penalty(lambda f, m: fgreid_ops.mask_upsample_mul(f, m), (2, 3, 6, 8), (2, 1, 3, 4), wrt=1),
    names=("mask_upsample_mul_backward",),
    expect=lambda: _gradient_penalty(lambda f, m: R.mask_upsample_mul_reference(f, m), (2, 3, 6, 8), (2, 1, 3, 4), wrt=1))
add("off", "double_backward",
    lambda: _gradient_penalty(lambda a, b: fgreid_ops.off(a, b), (2, 3, 5, 6), (2, 3, 5, 6)),
    expect=lambda: _gradient_penalty(lambda a, b: R.off_reference(a, b), (2, 3, 5, 6), (2, 3, 5, 6)))


# --- mask_upsample_mul ---------------------------------------------------------------------------

def mum_base():
    return dict(feat=rand(2, 3, 6, 8), mask=rand(2, 1, 3, 4), mode="bilinear", pool=False)


def mum_ref(feat, mask, mode, pool, backend=None):
    return R.mask_upsample_mul_reference(feat, mask, mode, pool)


generic("mask_upsample_mul", fgreid_ops.mask_upsample_mul, mum_base, float_args=("feat", "mask"), ref=mum_ref,
        noncontig=("feat", "mask"), nan=("feat", "mask"), sizes=(("mask", 0), ("mask", 1)))
add("mask_upsample_mul", "mode_bogus", call(fgreid_ops.mask_upsample_mul, set_arg(mum_base, mode="bicubic")), names=("mode",))
add("mask_upsample_mul", "mask_dtype_differs", call(fgreid_ops.mask_upsample_mul, set_arg(mum_base, mask=lambda m: m.double())), names=("mask",))
add("mask_upsample_mul", "mask_empty_hw", call(fgreid_ops.mask_upsample_mul, set_arg(mum_base, mask=lambda m: m[:, :, :0])), names=("mask",))
add("mask_upsample_mul", "feat_empty_hw", call(fgreid_ops.mask_upsample_mul, set_arg(mum_base, feat=lambda m: m[:, :, :0])), names=("feat",))
add("mask_upsample_mul", "mask_per_channel_pool", call(fgreid_ops.mask_upsample_mul, set_arg(mum_base, mask=lambda _: rand(2, 3, 5, 9), pool=True)),
    expect=lambda: mum_ref(**set_arg(mum_base, mask=lambda _: rand(2, 3, 5, 9), pool=True)()))
add("mask_upsample_mul", "nearest_larger_mask", call(fgreid_ops.mask_upsample_mul, set_arg(mum_base, mask=lambda _: rand(2, 1, 13, 17), mode="nearest")),
    expect=lambda: mum_ref(**set_arg(mum_base, mask=lambda _: rand(2, 1, 13, 17), mode="nearest")()))
add("mask_upsample_mul", "feat_and_mask_one_storage",
    lambda: (lambda s: fgreid_ops.mask_upsample_mul(s[:288].view(2, 3, 6, 8), s[100:124].view(2, 1, 3, 4)))(rand(400)),
    expect=lambda: (lambda s: mum_ref(s[:288].view(2, 3, 6, 8).clone(), s[100:124].view(2, 1, 3, 4).clone(), "bilinear", False))(rand(400)))
add("mask_upsample_mul", "mask_batch_mismatch_huge_feat", lambda: fgreid_ops.mask_upsample_mul(
    torch.ones(1, 1, 1, 1).expand(2**15, 2**15, 2**15, 2**15), torch.ones(3, 1, 1, 1), pool=True), names=("mask",))

def mum_bwd_base():
    return dict(grad_out=rand(2, 3, 6, 8), feat=rand(2, 3, 6, 8), mask=rand(2, 1, 3, 4), mode="bilinear", pool=False,
                need_grad_feat=True, need_grad_mask=True)


def mum_bwd_ref(grad_out, feat, mask, mode, pool, need_grad_feat, need_grad_mask):
    return grads_of(lambda feat, mask: R.mask_upsample_mul_reference(feat, mask, mode, pool), dict(feat=feat, mask=mask),
                    grad_out, "feat", "mask")


generic("ops.mask_upsample_mul", OPS.mask_upsample_mul, mum_base, float_args=("feat", "mask"), ref=mum_ref,
        noncontig=("feat",), nan=("feat",), sizes=(("mask", 0), ("mask", 1)), batch="mask_upsample_mul")
generic("ops.mask_upsample_mul_backward", OPS.mask_upsample_mul_backward, mum_bwd_base, float_args=("grad_out", "feat", "mask"),
        anchor="feat", ref=mum_bwd_ref, noncontig=("grad_out", "feat"), nan=("grad_out",),
        sizes=(("grad_out", 0), ("grad_out", 1), ("grad_out", 2), ("grad_out", 3), ("mask", 0)), rtol=1e-4, atol=1e-5,
        batch="mask_upsample_mul")
add("ops.mask_upsample_mul_backward", "pool_grad_out_full_shape", call(OPS.mask_upsample_mul_backward, set_arg(mum_bwd_base, pool=True)),
    names=("grad_out",), batch="mask_upsample_mul")
add("ops.mask_upsample_mul_backward", "mode_bogus", call(OPS.mask_upsample_mul_backward, set_arg(mum_bwd_base, mode="cubic")),
    names=("mode",), batch="mask_upsample_mul")
add("ops.mask_upsample_mul_backward", "grad_out_expanded_pool", lambda: OPS.mask_upsample_mul_backward(
    **set_arg(mum_bwd_base, grad_out=torch.ones(1, 1).expand(2, 3), pool=True)()),
    expect=lambda: mum_bwd_ref(**set_arg(mum_bwd_base, grad_out=torch.ones(2, 3), pool=True)()), rtol=1e-4, atol=1e-5,
    batch="mask_upsample_mul")
add("ops.mask_upsample_mul_backward", "grad_out_mismatch_huge_feat", lambda: OPS.mask_upsample_mul_backward(
    torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1).expand(2**12, 2**12, 2**12, 2**12), torch.ones(2**12, 1, 1, 1), "nearest", False,
    True, True), names=("grad_out", "mask"), batch="mask_upsample_mul")


# --- off -------------------------------------------------------------------------------------------

def off_base():
    return dict(a=rand(2, 3, 5, 6), b=rand(2, 3, 5, 6))


def off_ref(a, b=None, stride=None, backend=None):
    return R.off_reference(a, b, stride=stride)


generic("off", fgreid_ops.off, off_base, float_args=("a", "b"), ref=off_ref, noncontig=("a", "b"), nan=("a", "b"),
        sizes=(("b", 1), ("b", 2), ("b", 3)), skip=("a_rank_plus", "b_rank_plus"))
add("off", "b_dtype_differs", call(fgreid_ops.off, set_arg(off_base, b=lambda t: t.double())), names=("b",))
add("off", "a_2d", lambda: fgreid_ops.off(rand(5, 6), rand(5, 6)), names=("a",))
add("off", "same_tensor_twice", lambda: (lambda a: fgreid_ops.off(a, a))(rand(2, 3, 5, 6)),
    expect=lambda: (lambda a: off_ref(a, a.clone()))(rand(2, 3, 5, 6)))
add("off", "overlapping_views", lambda: (lambda x: fgreid_ops.off(x[:, :-1], x[:, 1:]))(rand(2, 4, 3, 5, 6)),
    expect=lambda: (lambda x: off_ref(x[:, :-1].clone(), x[:, 1:].clone()))(rand(2, 4, 3, 5, 6)))
add("off", "no_leading_dims", lambda: fgreid_ops.off(rand(3, 5, 6), rand(3, 5, 6)),
    expect=lambda: off_ref(rand(3, 5, 6), rand(3, 5, 6)))
add("off", "one_pixel", lambda: fgreid_ops.off(rand(2, 3, 1, 1), rand(2, 3, 1, 1)),
    expect=lambda: off_ref(rand(2, 3, 1, 1), rand(2, 3, 1, 1)))
add("off", "channels_last", lambda: fgreid_ops.off(rand(2, 3, 5, 6).contiguous(memory_format=torch.channels_last), rand(2, 3, 5, 6)),
    expect=lambda: off_ref(rand(2, 3, 5, 6), rand(2, 3, 5, 6)))
add("off", "neither_b_nor_stride", lambda: fgreid_ops.off(rand(2, 3, 5, 6)), names=("b", "stride"))
add("off", "b_and_stride", lambda: fgreid_ops.off(rand(2, 3, 3, 5, 6), rand(2, 3, 3, 5, 6), stride=1), names=("b", "stride"))
for s in (0, 3, -1, 10**12):
    add("off", f"stride_{s}", lambda s=s: fgreid_ops.off(rand(2, 3, 3, 5, 6), stride=s), names=("stride",))
add("off", "stride_float", lambda: fgreid_ops.off(rand(2, 3, 3, 5, 6), stride=1.0), names=("stride",))
add("off", "stride_bool", lambda: fgreid_ops.off(rand(2, 3, 3, 5, 6), stride=True), names=("stride",))
add("off", "segment_4d", lambda: fgreid_ops.off(rand(3, 3, 5, 6), stride=1), names=("x",))
add("off", "segment_strided", lambda: fgreid_ops.off(strided(rand(2, 4, 3, 5, 6)), stride=2),
    expect=lambda: off_ref(rand(2, 4, 3, 5, 6), stride=2))
add("off", "segment_nan", lambda: fgreid_ops.off(with_value(rand(2, 4, 3, 5, 6), float("nan"), 77), stride=1),
    expect=lambda: off_ref(with_value(rand(2, 4, 3, 5, 6), float("nan"), 77), stride=1))


def off_bwd_base():
    return dict(grad_out=rand(2, 9, 5, 6))


def off_bwd_ref(grad_out):
    """grad_a of off(a, 0) (linear: the point a does not matter)."""
    shape = (*grad_out.shape[:-3], grad_out.shape[-3] // 3, *grad_out.shape[-2:])
    a = torch.zeros(shape, dtype=grad_out.dtype)
    return grads_of(lambda a: R.off_reference(a, torch.zeros_like(a)), dict(a=a), grad_out, "a")[0]


generic("ops.off", OPS.off, off_base, float_args=("a", "b"), ref=off_ref, noncontig=("a", "b"), nan=("a",),
        sizes=(("b", 1), ("b", 3)), batch="off", skip=("a_rank_plus", "b_rank_plus"))
generic("ops.off_backward", OPS.off_backward, off_bwd_base, float_args=("grad_out",), ref=off_bwd_ref,
        noncontig=("grad_out",), nan=("grad_out",), batch="off", skip=("grad_out_rank_plus", "grad_out_rank_minus"))
add("ops.off_backward", "channels_not_3c", lambda: OPS.off_backward(rand(2, 8, 5, 6)), names=("grad_out",), batch="off")
add("ops.off_backward", "grad_out_empty", lambda: OPS.off_backward(rand(2, 0, 5, 6)), names=("grad_out",), batch="off")
add("ops.off_backward", "grad_out_scalar_broadcast", lambda: OPS.off_backward(torch.ones(1, 1, 1, 1).expand(2, 9, 5, 6)),
    expect=lambda: off_bwd_ref(torch.ones(2, 9, 5, 6)), batch="off")

for shape in ((9, 5, 6), (2, 2, 9, 5, 6), (2, 9, 1, 6), (2, 9, 5, 1), (1, 3, 1, 1), (2, 48, 3, 3), (1, 2, 3, 9, 4, 4)):
    what = "shape_" + "x".join(map(str, shape))
    add("ops.off_backward", what, lambda shape=shape: OPS.off_backward(rand(*shape)),
        expect=lambda shape=shape: off_bwd_ref(rand(*shape)), batch="off")
for what, shape in (("1d", (9,)), ("2d", (9, 5)), ("empty_h", (2, 9, 0, 6)), ("empty_lead", (0, 9, 5, 6))):
    add("ops.off_backward", f"grad_out_{what}", lambda shape=shape: OPS.off_backward(rand(*shape)), names=("grad_out",), batch="off")

add("ops.off_backward", "huge_grad_out_not_3c", lambda: OPS.off_backward(torch.ones(1, 1, 1, 1).expand(2**20, 3 * 2**10 + 1, 2**10, 2**10)),
    names=("grad_out",), batch="off")
for what, kw in (("pool", dict(pool=True)), ("nearest", dict(mode="nearest")), ("nearest_pool", dict(mode="nearest", pool=True))):
    add("ops.mask_upsample_mul", what, lambda kw=kw: OPS.mask_upsample_mul(**{**mum_base(), **kw}),
        expect=lambda kw=kw: mum_ref(**{**mum_base(), **kw}), batch="mask_upsample_mul")
add("ops.mask_upsample_mul", "mode_bogus", lambda: OPS.mask_upsample_mul(**{**mum_base(), "mode": "area"}), names=("mode",),
    batch="mask_upsample_mul")


def seg_base():
    return dict(x=rand(2, 4, 3, 5, 6), stride=1)


def seg_bwd_base():
    return dict(grad_out=rand(2, 3, 9, 5, 6), stride=1)


def seg_bwd_ref(grad_out, stride):
    """grad_x of the segment form (linear: the point x does not matter)."""
    N, pairs, C3, H, W = grad_out.shape
    x = torch.zeros(N, pairs + stride, C3 // 3, H, W, dtype=grad_out.dtype)
    return grads_of(lambda x: R.off_reference(x, stride=stride), dict(x=x), grad_out, "x")[0]


generic("ops.off_segment", OPS.off_segment, seg_base, float_args=("x",), ref=lambda x, stride: off_ref(x, stride=stride),
        noncontig=("x",), nan=("x",), batch="off")
for s in (0, 4, -1, 2**40):
    add("ops.off_segment", f"stride_{s}", lambda s=s: OPS.off_segment(rand(2, 4, 3, 5, 6), s), names=("stride",), batch="off")
generic("ops.off_segment_backward", OPS.off_segment_backward, seg_bwd_base, float_args=("grad_out",), ref=seg_bwd_ref,
        noncontig=("grad_out",), nan=("grad_out",), batch="off")
for shape, stride in (((1, 2, 3, 1, 1), 1), ((2, 5, 3, 2, 7), 3), ((1, 2, 6, 4, 4), 1), ((3, 3, 3, 5, 1), 2)):
    what = "shape_" + "x".join(map(str, shape)) + f"_stride{stride}"
    add("ops.off_segment", what, lambda shape=shape, stride=stride: OPS.off_segment(rand(*shape), stride), batch="off",
        expect=lambda shape=shape, stride=stride: off_ref(rand(*shape), stride=stride))
    gshape = (shape[0], shape[1] - stride, 3 * shape[2], *shape[3:])
    add("ops.off_segment_backward", what, lambda g=gshape, stride=stride: OPS.off_segment_backward(rand(*g), stride), batch="off",
        expect=lambda g=gshape, stride=stride: seg_bwd_ref(rand(*g), stride))
for what, stride in (("stride_float", 1.0), ("stride_none", None)):
    add("ops.off_segment", what, lambda stride=stride: OPS.off_segment(rand(2, 4, 3, 5, 6), stride), names=("stride",), batch="off")
    add("ops.off_segment_backward", what, lambda stride=stride: OPS.off_segment_backward(rand(2, 3, 9, 5, 6), stride), names=("stride",),
        batch="off")
add("ops.off_segment", "huge_x_stride_past_t", lambda: OPS.off_segment(torch.ones(1, 1, 1, 1, 1).expand(2**20, 4, 2**10, 2**10, 2**10), 4),
    names=("stride",), batch="off")
add("ops.off_segment_backward", "huge_grad_out_not_3c",
    lambda: OPS.off_segment_backward(torch.ones(1, 1, 1, 1, 1).expand(2**20, 3, 3 * 2**10 + 1, 2**10, 2**10), 1),
    names=("grad_out",), batch="off")
add("ops.off_segment", "x_stride_equals_t", lambda: OPS.off_segment(rand(2, 3, 3, 5, 6), 3), names=("stride",), batch="off")
add("ops.off_segment", "x_t_is_1", lambda: OPS.off_segment(rand(2, 1, 3, 5, 6), 1), names=("stride", "x"), batch="off")
add("ops.off_segment_backward", "grad_out_4d", lambda: OPS.off_segment_backward(rand(3, 9, 5, 6), 1), names=("grad_out",), batch="off")
for s in (0, -1, 2**40):
    add("ops.off_segment_backward", f"stride_{s}", lambda s=s: OPS.off_segment_backward(rand(2, 3, 9, 5, 6), s),
        names=("stride",), batch="off")
add("ops.off_segment_backward", "channels_not_3c", lambda: OPS.off_segment_backward(rand(2, 3, 8, 5, 6), 1),
    names=("grad_out",), batch="off")
add("ops.off_segment_backward", "grad_out_scalar_broadcast", lambda: OPS.off_segment_backward(torch.ones(1, 1, 1, 1, 1).expand(2, 3, 9, 5, 6), 2),
    expect=lambda: seg_bwd_ref(torch.ones(2, 3, 9, 5, 6), 2), batch="off")


# --- topk_mask ----------------------------------------------------------------------------------

def topk_base():
    return dict(f1=rand(2, 3, 4, 5), f2=rand(2, 3, 4, 5), k=3)


def topk_ref(f1, f2, k, backend=None):
    return R.topk_mask_reference(f1, f2, k)


def topk_bwd_base():
    return dict(grad_out=rand(2, 3, 4, 5), mask=(rand(2, 1, 4, 5) > 0.5).float())


def topk_bwd_ref(grad_out, mask):
    return grad_out * mask


for target, fn, batch in (("topk_mask", fgreid_ops.topk_mask, "topk_mask"), ("ops.topk_mask", OPS.topk_mask, "topk_mask"),
                          ("ops.topk_mask_triton", OPS.topk_mask_triton, "topk_mask_triton")):
    generic(target, fn, topk_base, float_args=("f1", "f2"), ref=topk_ref, noncontig=("f1", "f2"), nan=("f1", "f2"),
            sizes=(("f2", 0), ("f2", 1), ("f2", 2), ("f2", 3)), batch=batch)
    add(target, "k_negative", call(fn, set_arg(topk_base, k=-1)), names=("k",), batch=batch)
    add(target, "f2_dtype_differs", call(fn, set_arg(topk_base, f2=lambda t: t.double())), names=("f2",), batch=batch)
    for k in (0, 20, 10**15):
        add(target, f"k_{k}", call(fn, set_arg(topk_base, k=k)), expect=lambda k=k: topk_ref(**set_arg(topk_base, k=k)()), batch=batch)
    add(target, "same_tensor_twice", lambda fn=fn: (lambda f: fn(f, f, 3))(rand(2, 3, 4, 5)),
        expect=lambda: (lambda f: topk_ref(f, f.clone(), 3))(rand(2, 3, 4, 5)), batch=batch)
    add(target, "ties_everywhere", lambda fn=fn: fn(torch.ones(2, 3, 4, 5), rand(2, 3, 4, 5), 7),
        expect=lambda: topk_ref(torch.ones(2, 3, 4, 5), rand(2, 3, 4, 5), 7), batch=batch)
    add(target, "f1_empty_batch", call(fn, set_arg(topk_base, f1=lambda t: t[:0], f2=lambda t: t[:0])), names=("f1",), batch=batch)
add("topk_mask", "k_float", call(fgreid_ops.topk_mask, set_arg(topk_base, k=2.0)), names=("k",))
add("topk_mask", "k_bool", call(fgreid_ops.topk_mask, set_arg(topk_base, k=True)), names=("k",))
for target, fn, batch in (("ops.topk_mask_backward", OPS.topk_mask_backward, "topk_mask"),
                          ("ops.topk_mask_triton_backward", OPS.topk_mask_triton_backward, "topk_mask_triton")):
    generic(target, fn, topk_bwd_base, float_args=("grad_out", "mask"), ref=topk_bwd_ref, noncontig=("grad_out", "mask"),
            nan=("grad_out",), sizes=(("mask", 0), ("mask", 1), ("mask", 2), ("mask", 3)), batch=batch)
    add(target, "grad_out_scalar_broadcast", lambda fn=fn: fn(torch.ones(1, 1, 1, 1).expand(2, 3, 4, 5), torch.ones(2, 1, 4, 5)),
        expect=lambda: torch.ones(2, 3, 4, 5), batch=batch)
    add(target, "mask_aliases_grad_out", lambda fn=fn: (lambda g: fn(g, g[:, :1]))(rand(2, 3, 4, 5)),
        expect=lambda: (lambda g: g * g[:, :1])(rand(2, 3, 4, 5)), batch=batch)


# --- batch_hard_triplet ----------------------------------------------------------------------------

LABELS = [0, 0, 1, 1, 2, 2]


def bht_base():
    return dict(emb=torch.randn(6, 4), labels=torch.tensor(LABELS))


def bht_ref(emb, labels, margin=0.3, **kw):
    kw.pop("backend", None)
    return R.batch_hard_triplet_reference(emb, labels, margin, **kw)


generic("batch_hard_triplet", fgreid_ops.batch_hard_triplet, bht_base, float_args=("emb",), int_args=("labels",),
        ref=bht_ref, noncontig=("emb",), nan=("emb",), sizes=(("labels", 0),))


def bht_kw(**kw):
    def build():
        args = bht_base()
        for k, v in kw.items():
            args[k] = v() if callable(v) else v
        return args
    return build


for what, kw, names in (
    ("margin_negative", dict(margin=-0.5), ("margin",)),
    ("margin_string", dict(margin="0.3"), ("margin",)),
    ("reduction_bogus", dict(reduction="max"), ("reduction",)),
    ("distance_bogus", dict(distance="manhattan"), ("distance",)),
    ("normalize_int", dict(normalize=1), ("normalize",)),
    ("ref_emb_without_labels", dict(ref_emb=lambda: torch.randn(5, 4)), ("ref_emb", "ref_labels")),
    ("ref_emb_width", dict(ref_emb=lambda: torch.randn(5, 3), ref_labels=lambda: torch.zeros(5, dtype=torch.long)), ("ref_emb",)),
    ("ref_emb_empty", dict(ref_emb=lambda: torch.randn(0, 4), ref_labels=lambda: torch.zeros(0, dtype=torch.long)), ("ref_emb",)),
    ("ref_labels_length", dict(ref_emb=lambda: torch.randn(5, 4), ref_labels=lambda: torch.zeros(4, dtype=torch.long)), ("ref_labels",)),
    ("ref_labels_int32", dict(ref_emb=lambda: torch.randn(5, 4), ref_labels=lambda: torch.zeros(5, dtype=torch.int32)), ("ref_labels",)),
    ("ref_emb_dtype", dict(ref_emb=lambda: torch.randn(5, 4).double(), ref_labels=lambda: torch.zeros(5, dtype=torch.long)), ("ref_emb",)),
    ("ref_emb_meta", dict(ref_emb=lambda: torch.randn(5, 4, device="meta"), ref_labels=lambda: torch.zeros(5, dtype=torch.long)), ("ref_emb",)),
    ("emb_empty_width", dict(emb=lambda: torch.randn(6, 0)), ("emb",)),
    ("emb_empty_batch", dict(emb=lambda: torch.randn(0, 4), labels=lambda: torch.zeros(0, dtype=torch.long)), ("emb",)),
):
    add("batch_hard_triplet", what, call(fgreid_ops.batch_hard_triplet, bht_kw(**kw)), names=names)
for what, kw in (
    ("soft_margin", dict(margin=None)), ("margin_zero", dict(margin=0.0)), ("sqeuclidean_sum", dict(distance="sqeuclidean", reduction="sum")),
    ("cosine_none", dict(distance="cosine", reduction="none")), ("normalize", dict(normalize=True)),
    ("one_identity", dict(labels=lambda: torch.zeros(6, dtype=torch.long))), ("all_distinct", dict(labels=lambda: torch.arange(6))),
    ("float64", dict(emb=lambda: torch.randn(6, 4).double())),
    ("ref_same_data_other_labels", dict(ref_emb=lambda: _seeded_emb(), emb=lambda: _seeded_emb(),
                                        ref_labels=lambda: torch.tensor([1, 2, 0, 0, 1, 2]))),
    ("duplicate_rows", dict(emb=lambda: torch.randn(3, 4).repeat(2, 1))),
    ("return_indices", dict(return_indices=True)),
    ("inf_row", dict(emb=lambda: with_value(_seeded_emb(), float("inf"), 0))),
    ("triton_backend", dict(backend="triton")),
):
    add("batch_hard_triplet", what, call(fgreid_ops.batch_hard_triplet, bht_kw(**kw)), expect=lambda kw=kw: bht_ref(**bht_kw(**kw)()))


def _inf_batch():
    emb = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    emb[0, 1] = float("inf")
    return dict(emb=emb, labels=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), reduction="none")


# issue 14: one inf in emb gave other anchors a loss of 0 where the reference gives NaN
for backend in ("cpu", "triton"):
    add("batch_hard_triplet", f"one_inf_per_anchor_{backend}", lambda b=backend: fgreid_ops.batch_hard_triplet(**_inf_batch(), backend=b),
        expect=lambda: bht_ref(**_inf_batch()), batch="batch_hard_triplet" if backend == "cpu" else "bht_triton")


def _seeded_emb():
    return torch.randn(6, 4, generator=torch.Generator().manual_seed(3))


def big_ref_same_data():
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(200, 16, generator=g)
    labels = torch.randint(0, 20, (200,), generator=g)
    other = torch.randint(0, 20, (200,), generator=g)
    return dict(emb=emb, labels=labels, ref_emb=emb, ref_labels=other)


def big_ref_same_data_float64():
    return {k: (v.double() if v.dtype.is_floating_point else v) for k, v in big_ref_same_data().items()}


# against the float64 reference: an anchor that is its own negative has d = 0 in the kernels
# (|a - b|^2) and float32 cancellation noise in a float32 reference
add("batch_hard_triplet", "ref_emb_is_emb_other_labels_B200", call(fgreid_ops.batch_hard_triplet, big_ref_same_data),
    expect=lambda: bht_ref(**big_ref_same_data_float64()).float())
add("batch_hard_triplet", "ref_emb_is_emb_other_labels_B200_triton",
    lambda: fgreid_ops.batch_hard_triplet(**big_ref_same_data(), backend="triton"),
    expect=lambda: bht_ref(**big_ref_same_data_float64()).float())


def mine_base():
    return dict(emb=torch.randn(6, 4), labels=torch.tensor(LABELS), ref_emb=torch.randn(5, 4),
                ref_labels=torch.tensor([0, 1, 2, 3, 0]), distance="euclidean")


def mine_ref(emb, labels, ref_emb, ref_labels, distance):
    """(d_ap, d_an, idx_p, idx_n) from the reference indices."""
    _, idx_p, idx_n = R.batch_hard_triplet_reference(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels, distance=distance,
                                                     return_indices=True)
    acc = torch.float64 if emb.dtype == torch.float64 else torch.float32
    a, b = emb.to(acc), ref_emb.to(acc)

    def dist(idx, missing):
        d = (a - b[idx.clamp(min=0)]).pow(2).sum(1)
        d = d.clamp(min=1e-12).sqrt() if distance == "euclidean" else d
        return torch.where(idx >= 0, d, missing)
    return dist(idx_p, float("-inf")), dist(idx_n, float("inf")), idx_p, idx_n


def mine_bwd_base():
    args = mine_base()
    d_ap, d_an, idx_p, idx_n = OPS.batch_hard_triplet_mine(**args)
    return dict(grad_d_ap=rand(6), grad_d_an=rand(6), emb=args["emb"], ref_emb=args["ref_emb"], idx_p=idx_p, idx_n=idx_n,
                d_ap=d_ap, d_an=d_an, distance="euclidean", need_ref_grad=True)


def mine_bwd_ref(grad_d_ap, grad_d_an, emb, ref_emb, idx_p, idx_n, d_ap, d_an, distance, need_ref_grad):
    def f(emb, ref_emb):
        ip, i_n = idx_p.clamp(min=0), idx_n.clamp(min=0)
        dp = (emb - ref_emb[ip]).pow(2).sum(1).clamp(min=1e-12).sqrt() * (idx_p >= 0)
        dn = (emb - ref_emb[i_n]).pow(2).sum(1).clamp(min=1e-12).sqrt() * (idx_n >= 0)
        return dp * grad_d_ap + dn * grad_d_an
    e = emb.detach().clone().requires_grad_()
    r = ref_emb.detach().clone().requires_grad_()
    ge, gr = torch.autograd.grad(f(e, r).sum(), [e, r])
    return ge, gr


for op_name, batch in (("batch_hard_triplet_mine", "batch_hard_triplet"), ("batch_hard_triplet_mine_triton", "bht_triton")):
    fwd, bwd = getattr(OPS, op_name), getattr(OPS, f"{op_name}_backward")
    generic(f"ops.{op_name}", fwd, mine_base, float_args=("emb", "ref_emb"), int_args=("labels", "ref_labels"), anchor="emb",
            ref=mine_ref, noncontig=("emb", "ref_emb"), nan=(), sizes=(("labels", 0), ("ref_labels", 0), ("ref_emb", 1)),
            batch=batch)
    add(f"ops.{op_name}", "distance_bogus", call(fwd, set_arg(mine_base, distance="l1")), names=("distance",), batch=batch)
    add(f"ops.{op_name}", "emb_is_ref_other_labels", lambda fwd=fwd: fwd(**big_ref_same_data(), distance="euclidean"),
        expect=lambda: mine_ref(**big_ref_same_data(), distance="euclidean"), batch=batch, rtol=1e-4, atol=1e-5)
    bwd_name = f"ops.{op_name}_backward"
    generic(bwd_name, bwd, mine_bwd_base, float_args=("grad_d_ap", "grad_d_an", "emb", "ref_emb", "d_ap", "d_an"),
            int_args=("idx_p", "idx_n"), anchor="emb", ref=mine_bwd_ref, noncontig=("emb", "ref_emb"), nan=("grad_d_ap",),
            layout_ref=lambda bwd=bwd, **a: bwd(**{k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}),
            sizes=(("grad_d_ap", 0), ("grad_d_an", 0), ("idx_p", 0), ("idx_n", 0), ("d_ap", 0), ("d_an", 0), ("ref_emb", 1)),
            batch=batch, rtol=1e-4, atol=1e-5)
    add(bwd_name, "idx_p_out_of_range", call(bwd, set_arg(mine_bwd_base, idx_p=lambda i: i + 5)), names=("idx_p",), batch=batch)
    add(bwd_name, "idx_p_huge", call(bwd, set_arg(mine_bwd_base, idx_p=lambda i: i + 2**40)), names=("idx_p",), batch=batch)
    add(bwd_name, "idx_n_below_minus1", call(bwd, set_arg(mine_bwd_base, idx_n=lambda i: i - 3)), names=("idx_n",), batch=batch)
    # M = 0 is valid when every index is -1 (no pair): zero gradients (batch_hard_triplet_checks.h)
    add(bwd_name, "ref_emb_empty_idx_minus1", lambda bwd=bwd: bwd(torch.ones(2), torch.ones(2), torch.randn(2, 4), torch.randn(0, 4),
                                                                torch.full((2,), -1), torch.full((2,), -1), torch.zeros(2),
                                                                torch.zeros(2), "euclidean", True),
        expect=lambda: (torch.zeros(2, 4), torch.zeros(0, 4)), batch=batch)
    add(bwd_name, "distance_bogus", call(bwd, set_arg(mine_bwd_base, distance="l1")), names=("distance",), batch=batch)
    add(bwd_name, "grad_d_ap_scalar_broadcast", lambda bwd=bwd: bwd(**set_arg(mine_bwd_base, grad_d_ap=torch.ones(1).expand(6))()),
        expect=lambda: mine_bwd_ref(**set_arg(mine_bwd_base, grad_d_ap=torch.ones(6))()), batch=batch, rtol=1e-4, atol=1e-5)
    add(bwd_name, "ref_emb_is_emb", lambda bwd=bwd, fwd=fwd: bwd(**_mine_bwd_self(fwd)),
        expect=lambda fwd=fwd: _mine_bwd_self_ref(fwd), batch=batch, rtol=1e-4, atol=1e-5)


def _mine_bwd_self(fwd):
    emb, labels = torch.randn(6, 4), torch.tensor(LABELS)
    d_ap, d_an, idx_p, idx_n = fwd(emb, labels, emb, labels, "euclidean")
    return dict(grad_d_ap=torch.ones(6), grad_d_an=torch.ones(6), emb=emb, ref_emb=emb, idx_p=idx_p, idx_n=idx_n, d_ap=d_ap,
                d_an=d_an, distance="euclidean", need_ref_grad=True)


def _mine_bwd_self_ref(fwd):
    a = _mine_bwd_self(fwd)
    a["ref_emb"] = a["emb"].clone()
    return mine_bwd_ref(**a)


# --- evaluate --------------------------------------------------------------------------------------

def ev_ids():
    return dict(q_pids=torch.tensor([0, 1, 2, 3]), g_pids=torch.tensor([0, 1, 2, 3, 0, 1, 9]),
                q_camids=torch.tensor([0, 0, 0, 0]), g_camids=torch.tensor([1, 1, 1, 0, 0, 1, 1]))


def ev_base():
    return dict(distmat=torch.rand(4, 7), **ev_ids())


def ev_ref(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, **kw):
    kw.pop("backend", None)
    return tuple(fgreid_ops.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, backend="reference", **kw))


def ev_run(**a):
    return tuple(fgreid_ops.evaluate(**a))


generic("evaluate", ev_run, ev_base, float_args=("distmat",), int_args=("q_pids", "g_pids", "q_camids", "g_camids"),
        ref=ev_ref, noncontig=("distmat",), nan=("distmat",), sizes=(("q_pids", 0), ("g_pids", 0), ("q_camids", 0), ("g_camids", 0)),
        skip=("q_pids_float", "g_pids_float", "q_camids_float", "g_camids_float"), rtol=1e-12, atol=1e-12)
for arg in ("q_pids", "g_camids"):
    add("evaluate", f"{arg}_float_rejected", lambda arg=arg: ev_run(**set_arg(ev_base, **{arg: lambda t: t.float()})()), names=(arg,))
    add("evaluate", f"{arg}_int32", lambda arg=arg: ev_run(**set_arg(ev_base, **{arg: lambda t: t.int()})()),
        expect=lambda: ev_ref(**ev_base()), rtol=1e-12, atol=1e-12)
    add("evaluate", f"{arg}_numpy", lambda arg=arg: ev_run(**set_arg(ev_base, **{arg: lambda t: t.numpy()})()),
        expect=lambda: ev_ref(**ev_base()), rtol=1e-12, atol=1e-12)
for what, kw, names in (("max_rank_zero", dict(max_rank=0), ("max_rank",)), ("max_rank_huge", dict(max_rank=10**12), ("max_rank",)),
                        ("max_rank_float", dict(max_rank=5.0), ("max_rank",)), ("junk_pid_float", dict(junk_pid=1.0), ("junk_pid",)),
                        ("backend_bogus", dict(backend="fpga"), ("backend",))):
    add("evaluate", what, lambda kw=kw: ev_run(**ev_base(), **kw), names=names)
for what, build in (
    ("ties_everywhere", lambda: dict(distmat=torch.zeros(4, 7), **ev_ids())),
    ("all_nan", lambda: dict(distmat=torch.full((4, 7), float("nan")), **ev_ids())),
    ("no_valid_query", lambda: dict(distmat=torch.rand(4, 7), **{**ev_ids(), "g_pids": torch.full((7,), 42)})),
    ("junk", lambda: dict(distmat=torch.rand(4, 7), junk_pid=9, **ev_ids())),
    ("float16", lambda: dict(distmat=torch.rand(4, 7).half(), **ev_ids())),
    ("transposed", lambda: dict(distmat=torch.rand(7, 4).T, **ev_ids())),
    ("max_rank_past_gallery", lambda: dict(distmat=torch.rand(4, 7), max_rank=100, **ev_ids())),
    ("triton_backend", lambda: dict(distmat=torch.rand(4, 7), backend="triton", **ev_ids())),
    ("negative_ids", lambda: dict(distmat=torch.rand(4, 7), **{k: v - 5 for k, v in ev_ids().items()})),
):
    add("evaluate", what, lambda b=build: ev_run(**b()), expect=lambda b=build: ev_ref(**b()), rtol=1e-12, atol=1e-12)


def ev_op_base():
    return dict(distmat=torch.rand(4, 7), **ev_ids(), junk_pid=None)


def ev_op_ref(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid):
    return R.per_query_reference(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid)


for op_name, batch in (("evaluate", "evaluate"), ("evaluate_triton", "evaluate_triton")):
    generic(f"ops.{op_name}", getattr(OPS, op_name), ev_op_base, float_args=("distmat",),
            int_args=("q_pids", "g_pids", "q_camids", "g_camids"), ref=ev_op_ref, noncontig=("distmat",), nan=("distmat",),
            sizes=(("q_pids", 0), ("g_pids", 0), ("g_camids", 0), ("distmat", 1)), batch=batch, rtol=1e-12, atol=1e-12)
    add(f"ops.{op_name}", "q_pids_int32", call(getattr(OPS, op_name), set_arg(ev_op_base, q_pids=lambda t: t.int())),
        names=("q_pids",), batch=batch)


def matches_base():
    return dict(**ev_ids(), junk_pid=None)


def matches_ref(q_pids, g_pids, q_camids, g_camids, junk_pid):
    return OPS.evaluate_matches(q_pids.contiguous(), g_pids.contiguous(), q_camids.contiguous(), g_camids.contiguous(), junk_pid)


generic("ops.evaluate_matches", OPS.evaluate_matches, matches_base, int_args=("q_pids", "g_pids", "q_camids", "g_camids"),
        ref=matches_ref, noncontig=("q_pids", "g_pids"), sizes=(("q_camids", 0), ("g_camids", 0)), batch="evaluate")


def count_base():
    ids = ev_ids()
    offsets, index = OPS.evaluate_matches(**ids, junk_pid=None)
    dist = torch.rand(4, 7)
    query = torch.repeat_interleave(torch.arange(4), offsets.diff())
    return dict(dist=dist, q_pids=ids["q_pids"], g_pids=ids["g_pids"], g_start=0, match_offsets=offsets, match_index=index,
                match_dist=dist[query, index].contiguous(), junk_pid=None, counts=torch.zeros(index.shape[0], dtype=torch.long))


def count_run(op):
    def run(**a):
        op(**a)
        return a["counts"]
    return run


def count_ref(**a):
    a = {k: (v.contiguous() if isinstance(v, torch.Tensor) and k != "counts" else v) for k, v in a.items()}
    OPS.evaluate_count(**a)
    return a["counts"]


for op_name, batch in (("evaluate_count", "evaluate"), ("evaluate_count_triton", "evaluate_triton")):
    op = getattr(OPS, op_name)
    generic(f"ops.{op_name}", count_run(op), count_base, float_args=("dist", "match_dist"),
            int_args=("q_pids", "g_pids", "match_offsets", "match_index", "counts"), anchor="dist", ref=count_ref,
            noncontig=("dist",), sizes=(("q_pids", 0), ("g_pids", 0), ("match_offsets", 0), ("match_dist", 0), ("counts", 0)),
            skip=("counts_list", "match_index_rank_minus"), batch=batch)
    for what, change, names in (
        ("g_start_negative", dict(g_start=-1), ("g_start",)),
        ("match_offsets_decreasing", dict(match_offsets=lambda o: o.flip(0)), ("match_offsets",)),
        ("match_offsets_past_nnz", dict(match_offsets=lambda o: o * 3), ("match_offsets",)),
        ("match_dist_dtype", dict(match_dist=lambda d: d.double()), ("match_dist",)),
    ):
        add(f"ops.{op_name}", what, call(count_run(op), set_arg(count_base, **change)), names=names,
            batch=batch)


def finalize_base():
    a = count_base()
    OPS.evaluate_count(**a)
    return dict(match_offsets=a["match_offsets"], match_index=a["match_index"], match_dist=a["match_dist"], counts=a["counts"])


def finalize_ref(match_offsets, match_index, match_dist, counts):
    return OPS.evaluate_finalize(match_offsets.contiguous(), match_index.contiguous(), match_dist.contiguous(), counts.contiguous())


generic("ops.evaluate_finalize", OPS.evaluate_finalize, finalize_base, float_args=("match_dist",),
        int_args=("match_offsets", "match_index", "counts"), anchor="match_offsets", ref=finalize_ref,
        noncontig=("match_dist", "counts"), nan=("match_dist",), sizes=(("match_index", 0), ("counts", 0), ("match_dist", 0)),
        others_named=("match_dist", "counts", "match_index"),
        batch="evaluate", skip=("match_index_rank_minus",))
for what, change, names in (
    ("match_offsets_decreasing", dict(match_offsets=lambda o: o.flip(0)), ("match_offsets",)),
    ("match_offsets_past_nnz", dict(match_offsets=lambda o: o * 3), ("match_offsets",)),
    ("match_offsets_one", dict(match_offsets=lambda o: o[:1]), ("match_offsets",)),
    ("counts_negative", dict(counts=lambda c: c - 100), ("counts",)),
):
    add("ops.evaluate_finalize", what, call(OPS.evaluate_finalize, set_arg(finalize_base, **change)), names=names,
        batch="evaluate")


# --- evaluate_features, the video protocols --------------------------------------------------------

def evf_base():
    return dict(q_feats=torch.randn(4, 8), g_feats=torch.randn(7, 8), **ev_ids())


def evf_ref(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, max_rank=50, metric="euclidean", **kw):
    kw.pop("backend", None)
    kw.pop("memory_budget", None)
    return tuple(fgreid_ops.evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, max_rank, metric=metric,
                                              backend="reference", **kw))


def evf_run(**a):
    return tuple(fgreid_ops.evaluate_features(**a))


generic("evaluate_features", evf_run, evf_base, float_args=("q_feats", "g_feats"),
        int_args=("q_pids", "g_pids", "q_camids", "g_camids"), ref=evf_ref, noncontig=("q_feats", "g_feats"),
        layout_ref=lambda **a: evf_run(**{k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}),
        sizes=(("g_feats", 1), ("q_pids", 0), ("g_camids", 0)), skip=("q_pids_float", "g_pids_float", "q_camids_float",
                                                                      "g_camids_float"), rtol=1e-12, atol=1e-12)
for what, kw, names in (("metric_bogus", dict(metric="l1"), ("metric",)), ("memory_budget_zero", dict(memory_budget=0), ("memory_budget",)),
                        ("max_rank_huge", dict(max_rank=10**12), ("max_rank",)), ("q_pids_float", dict(q_pids=torch.zeros(4)), ("q_pids",))):
    add("evaluate_features", what, lambda kw=kw: evf_run(**{**evf_base(), **kw}), names=names)
for what, kw in (("tiny_budget", dict(memory_budget=64)), ("cosine", dict(metric="cosine")),
                 ("float64_gallery", dict(g_feats=lambda: torch.randn(7, 8).double())), ("triton_backend", dict(backend="triton")),
                 ("tiny_budget_triton", dict(memory_budget=64, backend="triton")), ("junk", dict(junk_pid=9))):
    def b(kw=kw):
        a = evf_base()
        a.update({k: (v() if callable(v) else v) for k, v in kw.items()})
        return a
    add("evaluate_features", what, lambda b=b: evf_run(**b()), expect=lambda b=b: evf_ref(**b()), rtol=1e-12, atol=1e-12)


def duplicate_gallery(Q=40, D=512, G0=60):
    """Issue 14: exact duplicate gallery rows, pids rolled so that a match and a non-match tie."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(Q, D, generator=g)
    g0 = torch.randn(G0, D, generator=g)
    gallery = torch.cat([g0, g0])
    g_pids = torch.arange(2 * G0) % 20
    g_pids[G0:] = g_pids[:G0].roll(1)
    return dict(q_feats=q, g_feats=gallery, q_pids=torch.arange(Q) % 20, g_pids=g_pids,
                q_camids=torch.zeros(Q, dtype=torch.long), g_camids=torch.ones(2 * G0, dtype=torch.long))


def duplicate_gallery_cdist():
    a = duplicate_gallery()
    return ev_run(distmat=torch.cdist(a.pop("q_feats"), a.pop("g_feats")), **a)


for backend in ("cpu", "triton"):
    add("evaluate_features", f"duplicate_gallery_rows_{backend}",
        lambda backend=backend: fgreid_ops.evaluate_features(**duplicate_gallery(), backend=backend, return_per_query=True).ap,
        expect=lambda: fgreid_ops.evaluate(torch.cdist(duplicate_gallery()["q_feats"], duplicate_gallery()["g_feats"]),
                                           *[duplicate_gallery()[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")],
                                           return_per_query=True).ap, rtol=0, atol=0)
    add("evaluate_features", f"duplicate_gallery_rows_chunked_{backend}",
        lambda backend=backend: fgreid_ops.evaluate_features(**duplicate_gallery(), backend=backend, return_per_query=True,
                                                             memory_budget=40 * 514 * 4 * 9).ap,
        expect=lambda: fgreid_ops.evaluate(torch.cdist(duplicate_gallery()["q_feats"], duplicate_gallery()["g_feats"]),
                                           *[duplicate_gallery()[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")],
                                           return_per_query=True).ap, rtol=0, atol=0)


def tf_base():
    return dict(frame_feats=torch.randn(6, 4), tracklet_ids=torch.tensor([0, 0, 1, 2, 2, 2]))


def tf_ref(frame_feats, tracklet_ids, num_tracklets=None):
    T = int(tracklet_ids.max()) + 1 if num_tracklets is None else num_tracklets
    acc = torch.float64 if frame_feats.dtype == torch.float64 else torch.float32
    return torch.stack([frame_feats[tracklet_ids == t].to(acc).mean(0) for t in range(T)])


generic("tracklet_features", fgreid_ops.tracklet_features, tf_base, float_args=("frame_feats",), int_args=("tracklet_ids",),
        ref=tf_ref, noncontig=("frame_feats",), nan=("frame_feats",), sizes=(("tracklet_ids", 0),),
        skip=("tracklet_ids_empty0",))
for what, kw, names in (("ids_negative", dict(tracklet_ids=torch.tensor([0, 0, -1, 2, 2, 2])), ("tracklet_ids",)),
                        ("ids_past_num", dict(num_tracklets=2), ("tracklet_ids", "num_tracklets")),
                        ("tracklet_without_frames", dict(num_tracklets=5), ("tracklet_ids", "num_tracklets")),
                        ("num_tracklets_float", dict(num_tracklets=3.0), ("num_tracklets",)),
                        ("num_tracklets_huge", dict(num_tracklets=10**13), ("num_tracklets",)),
                        ("ids_huge", dict(tracklet_ids=torch.tensor([0, 0, 1, 2, 2, 2**40])), ("tracklet_ids",)),
                        ("empty_frames", dict(frame_feats=torch.randn(0, 4), tracklet_ids=torch.zeros(0, dtype=torch.long)),
                         ("frame_feats", "tracklet_ids"))):
    add("tracklet_features", what, lambda kw=kw: fgreid_ops.tracklet_features(**{**tf_base(), **kw}), names=names)
add("tracklet_features", "int32_ids", lambda: fgreid_ops.tracklet_features(**set_arg(tf_base, tracklet_ids=lambda t: t.int())()),
    expect=lambda: tf_ref(**tf_base()))
add("tracklet_features", "float64", lambda: fgreid_ops.tracklet_features(**set_arg(tf_base, frame_feats=lambda t: t.double())()),
    expect=lambda: tf_ref(**tf_base()).double(), rtol=1e-6)
add("tracklet_features", "half", lambda: fgreid_ops.tracklet_features(**set_arg(tf_base, frame_feats=lambda t: t.half())()),
    expect=lambda: tf_ref(**set_arg(tf_base, frame_feats=lambda t: t.half())()), rtol=1e-3)


def mars_base():
    return dict(q_frame_feats=torch.randn(6, 4), q_tracklet_ids=torch.tensor([0, 0, 1, 2, 2, 3]),
                g_frame_feats=torch.randn(10, 4), g_tracklet_ids=torch.tensor([0, 1, 2, 3, 4, 5, 6, 6, 5, 4]), **ev_ids())


def mars_ref(q_frame_feats, q_tracklet_ids, g_frame_feats, g_tracklet_ids, q_pids, g_pids, q_camids, g_camids, **kw):
    return evf_ref(tf_ref(q_frame_feats, q_tracklet_ids, 4), tf_ref(g_frame_feats, g_tracklet_ids, 7), q_pids, g_pids, q_camids,
                   g_camids, **kw)


def mars_run(**a):
    return tuple(fgreid_ops.evaluate_mars(**a))


generic("evaluate_mars", mars_run, mars_base, float_args=("q_frame_feats", "g_frame_feats"),
        int_args=("q_tracklet_ids", "g_tracklet_ids", "q_pids", "g_pids"), ref=mars_ref,
        layout_ref=lambda **a: mars_run(**{k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}),
        noncontig=("q_frame_feats", "g_frame_feats"), nan=("q_frame_feats",), skip=("q_pids_float", "g_pids_float",
                                                                                     "q_pids_list", "g_pids_list"),
        rtol=1e-12, atol=1e-12)
for what, kw, names in (
    ("g_width_differs", dict(g_frame_feats=torch.randn(10, 5)), ("g_frame_feats",)),
    ("q_ids_length", dict(q_tracklet_ids=torch.tensor([0, 0, 1, 2, 3])), ("q_tracklet_ids",)),
    ("g_ids_past_pids", dict(g_tracklet_ids=torch.tensor([0, 1, 2, 3, 4, 5, 6, 6, 5, 7])), ("g_tracklet_ids",)),
    ("q_tracklet_without_frames", dict(q_tracklet_ids=torch.tensor([0, 0, 1, 1, 1, 3])), ("q_tracklet_ids",)),
    ("q_frames_1d", dict(q_frame_feats=torch.randn(6)), ("q_frame_feats",)),
    ("g_frames_int", dict(g_frame_feats=torch.ones(10, 4, dtype=torch.long)), ("g_frame_feats",)),
    ("g_frames_meta", dict(g_frame_feats=torch.ones(10, 4, device="meta")), ("g_frame_feats",)),
    ("max_rank_huge", dict(max_rank=10**12), ("max_rank",)),
):
    add("evaluate_mars", what, lambda kw=kw: mars_run(**{**mars_base(), **kw}), names=names)


def fgpr_base():
    g = torch.Generator().manual_seed(2)
    pids = torch.arange(12) // 2
    camids = torch.tensor([1, 2] * 2 + [2, 3] * 2 + [4, 5] * 2)
    groups = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    return dict(feats=torch.randn(12, 4, generator=g), pids=pids, camids=camids, groups=groups)


def fgpr_run(**a):
    r = fgreid_ops.evaluate_fgpr(**a)
    return r.all_group, r.single_group


def fgpr_ref(feats, pids, camids, groups, **kw):
    r = fgreid_ops.evaluate_fgpr(feats.contiguous(), pids.contiguous(), camids.contiguous(), groups.contiguous(),
                                 backend="reference")
    return r.all_group, r.single_group


generic("evaluate_fgpr", fgpr_run, fgpr_base, float_args=("feats",), int_args=("pids", "camids", "groups"), ref=fgpr_ref,
        layout_ref=lambda **a: fgpr_run(**{k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}),
        noncontig=("feats",), nan=(), sizes=(("pids", 0), ("camids", 0), ("groups", 0), ("feats", 1)),
        skip=("feats_empty1", "feats_size1_plus1"))
for what, kw, names in (
    ("group_with_three_cameras", dict(camids=torch.tensor([1, 2, 3, 2] + [2, 3] * 2 + [4, 5] * 2)), ("camids", "groups")),
    ("feats_int", dict(feats=torch.ones(12, 4, dtype=torch.long)), ("feats",)),
    ("pids_float_values", dict(pids=torch.zeros(12) + 0.5), ("pids",)),
    ("max_rank_kw", dict(max_rank=3), ("max_rank",)),
):
    add("evaluate_fgpr", what, lambda kw=kw: fgpr_run(**{**fgpr_base(), **kw}), names=names)


# --- nn ---------------------------------------------------------------------------------------------

for what, kw, names in (("p_string", dict(p="abc"), ("p",)), ("p_none", dict(p=None), ("p",)), ("p_zero", dict(p=0.0), ("p",)),
                        ("p_negative", dict(p=-2.0), ("p",)), ("eps_zero", dict(eps=0.0), ("eps",)),
                        ("eps_string", dict(eps="x"), ("eps",)), ("num_channels_negative", dict(num_channels=-3), ("num_channels",)),
                        ("num_channels_float", dict(num_channels=2.5), ("num_channels",)), ("learn_p_string", dict(learn_p="yes"),
                                                                                            ("learn_p",)),
                        ("backend_bogus", dict(backend="tpu"), ("backend",))):
    add("nn.GeM", what, lambda kw=kw: fgreid_ops.nn.GeM(**kw)(rand(2, 3, 4, 5)), names=names, batch="nn")
for what, x, names in (("x_3d", lambda: rand(3, 4, 5), ("x",)), ("x_int", lambda: torch.ones(2, 3, 4, 5, dtype=torch.long), ("x",)),
                       ("x_meta", lambda: rand(2, 3, 4, 5).to("meta"), ("x", "p")), ("x_wrong_channels", lambda: rand(2, 4, 4, 5), ("p", "x")),
                       ("x_empty", lambda: rand(0, 3, 4, 5), ("x",)), ("x_list", lambda: [[1.0]], ("x",))):
    add("nn.GeM", what, lambda x=x: fgreid_ops.nn.GeM(num_channels=3)(x()), names=names, batch="nn")
def gem_module_ref(x, p=3.0, num_channels=None):
    return R.gem_reference(x, torch.full((num_channels or 1,), float(p)))


for what, x, kw in (("channels_last", lambda: rand(2, 3, 4, 5).contiguous(memory_format=torch.channels_last), {}),
                    ("half", lambda: rand(2, 3, 4, 5).half(), {}), ("float64", lambda: rand(2, 3, 4, 5).double(), {}),
                    ("per_channel", lambda: rand(2, 3, 4, 5), dict(num_channels=3)), ("p_numpy", lambda: rand(2, 3, 4, 5), dict(p=2.0)),
                    ("one_pixel", lambda: rand(2, 3, 1, 1), {}), ("nan", lambda: with_value(rand(2, 3, 4, 5), float("nan"), 7), {}),
                    ("strided", lambda: strided(rand(2, 3, 4, 5)), {})):
    add("nn.GeM", what, lambda x=x, kw=kw: fgreid_ops.nn.GeM(**kw)(x()),
        expect=lambda x=x, kw=kw: gem_module_ref(x(), **kw), rtol=4e-3 if what == "half" else 1e-5, batch="nn")
add("nn.GeM", "loads_fastreid_state_dict", lambda: (lambda m: (m.load_state_dict({"p": torch.tensor([2.5])}), m(rand(2, 3, 4, 5)))[1])(
    fgreid_ops.nn.GeM()), expect=lambda: gem_module_ref(rand(2, 3, 4, 5), 2.5), batch="nn")
add("nn.GeM", "p_list", lambda: fgreid_ops.nn.GeM(p=[3.0])(rand(2, 3, 4, 5)), names=("p",), batch="nn")
add("nn.GeM", "flatten_string", lambda: fgreid_ops.nn.GeM(flatten="no")(rand(2, 3, 4, 5)), names=("flatten",), batch="nn")
add("nn.GeM", "p_from_int", lambda: fgreid_ops.nn.GeM(p=2)(rand(2, 3, 4, 5)),
    expect=lambda: R.gem_reference(rand(2, 3, 4, 5), torch.tensor([2.0])), batch="nn")
add("nn.GeM", "p_from_tensor", lambda: fgreid_ops.nn.GeM(p=torch.tensor(2.0))(rand(2, 3, 4, 5)),
    expect=lambda: R.gem_reference(rand(2, 3, 4, 5), torch.tensor([2.0])), batch="nn")
add("nn.GeM", "flatten_false", lambda: fgreid_ops.nn.GeM(flatten=False)(rand(2, 3, 4, 5)),
    expect=lambda: R.gem_reference(rand(2, 3, 4, 5), torch.tensor([3.0]))[:, :, None, None], batch="nn")


def fastreid_triplet(emb, targets, margin, norm_feat=False, hard_mining=True):
    """fast-reid's triplet_loss (euclidean_dist, hard or softmax-weighted mining, margin > 0:
    margin ranking, else soft margin), transcribed for the comparison."""
    if norm_feat:
        emb = emb / (emb.norm(dim=1, keepdim=True) + 1e-12)
    dist = (emb.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1)[None] - 2 * emb @ emb.T).clamp(min=1e-12).sqrt()
    is_pos = (targets[:, None] == targets[None]).float()
    is_neg = 1 - is_pos
    if hard_mining:
        d_ap = (dist * is_pos - 1e9 * is_neg).amax(1)
        d_an = (dist + 1e9 * is_pos).amin(1)
    else:
        def w(d, mask):
            e = torch.exp(d - (d * mask).amax(1, keepdim=True))
            return e * mask / ((e * mask).sum(1, keepdim=True) + 1e-6)
        d_ap = (dist * is_pos * w(dist * is_pos, is_pos)).sum(1)
        d_an = (dist * is_neg * w(-dist * is_neg, is_neg)).sum(1)
    y = torch.ones_like(d_an)
    if margin > 0:
        return F.margin_ranking_loss(d_an, d_ap, y, margin=margin)
    return F.soft_margin_loss(d_an - d_ap, y)


for margin in (0.3, 0.0, -1.0):
    for hard in (True, False):
        for norm in (False, True):
            what = f"fastreid_margin{margin}_hard{hard}_norm{norm}"
            add("nn.TripletLoss", what,
                lambda m=margin, h=hard, n=norm: fgreid_ops.nn.TripletLoss(margin=m, hard_mining=h, norm_feat=n)(
                    torch.randn(6, 4), torch.tensor(LABELS)),
                expect=lambda m=margin, h=hard, n=norm: fastreid_triplet(torch.randn(6, 4), torch.tensor(LABELS), m, n, h), batch="nn")
for what, labels, kw in (("unequal_counts", [0, 0, 0, 1, 2, 2], {}), ("one_identity", [3] * 6, {}), ("all_distinct", [0, 1, 2, 3, 4, 5], {}),
                         ("margin_none", LABELS, dict(margin=None)), ("margin_int", LABELS, dict(margin=1))):
    add("nn.TripletLoss", what, lambda labels=labels, kw=kw: fgreid_ops.nn.TripletLoss(**kw)(torch.randn(6, 4), torch.tensor(labels)),
        expect=lambda labels=labels, kw=kw: bht_ref(torch.randn(6, 4), torch.tensor(labels), kw.get("margin", 0.3) or None),
        batch="nn")
add("nn.TripletLoss", "gather_string", lambda: fgreid_ops.nn.TripletLoss(gather="yes")(torch.randn(6, 4), torch.tensor(LABELS)),
    names=("gather",), batch="nn")
for what, kw, names in (("margin_string", dict(margin="0.3"), ("margin",)), ("distance_bogus", dict(distance="l1"), ("distance",)),
                        ("norm_feat_string", dict(norm_feat="yes"), ("norm_feat",)),
                        ("hard_mining_string", dict(hard_mining="no"), ("hard_mining",))):
    add("nn.TripletLoss", what, lambda kw=kw: fgreid_ops.nn.TripletLoss(**kw)(torch.randn(6, 4), torch.tensor(LABELS)), names=names,
        batch="nn")
for what, args, names in (("embedding_3d", lambda: (torch.randn(6, 4, 1), torch.tensor(LABELS)), ("emb", "embedding")),
                          ("targets_float", lambda: (torch.randn(6, 4), torch.tensor(LABELS).float()), ("labels", "targets")),
                          ("targets_length", lambda: (torch.randn(6, 4), torch.tensor(LABELS[:5])), ("labels", "targets")),
                          ("embedding_meta", lambda: (torch.randn(6, 4, device="meta"), torch.tensor(LABELS)),
                           ("labels", "targets", "emb", "embedding"))):
    for hard in (True, False):
        add("nn.TripletLoss", f"{what}_hard{hard}", lambda a=args, h=hard: fgreid_ops.nn.TripletLoss(hard_mining=h)(*a()), names=names,
            batch="nn")


# --- raw Triton ops on CPU tensors without the interpreter ------------------------------------------

for op_name, args in (("gem_triton", lambda: (rand(2, 3, 4, 5), torch.tensor([3.0]), 1e-6)),
                      ("topk_mask_triton", lambda: (rand(2, 3, 4, 5), rand(2, 3, 4, 5), 2)),
                      ("batch_hard_triplet_mine_triton", lambda: (torch.randn(6, 4), torch.tensor(LABELS), torch.randn(6, 4),
                                                                  torch.tensor(LABELS), "euclidean")),
                      ("evaluate_triton", lambda: (torch.rand(4, 7), *ev_ids().values(), None))):
    add(f"ops.{op_name}", "cpu_without_interpreter", lambda o=op_name, a=args: getattr(OPS, o)(*a()), names=("cpu", "device"),
        batch="no_interpreter", env=(("TRITON_INTERPRET", "0"),))
add("gem", "backend_triton_cpu_without_interpreter", lambda: fgreid_ops.gem(rand(2, 3, 4, 5), 3.0, backend="triton"),
    names=("backend", "cpu"), batch="no_interpreter", env=(("TRITON_INTERPRET", "0"),))


# --- None for tensor arguments of every registered op --------------------------------------------
# Every tensor argument None: the dispatcher finds no dispatch key (fgreid_ops/_registry.py
# _register_none_arguments names the argument). One None among real tensors: the kernel's checks
# name it (the ops that `generic` covers get that per argument above; the others here).

def _schema(op_name):
    return getattr(OPS, op_name).default._schema


def _placeholder(arg):
    """A value of a non-tensor argument's type (it does not matter: the call fails on the tensors)."""
    if isinstance(arg.type, torch.OptionalType):
        return None
    return {"int": 1, "float": 0.5, "bool": False, "str": "euclidean"}[str(arg.type)]


def _all_none(op_name):
    args = [None if isinstance(a.type, torch.TensorType) else _placeholder(a) for a in _schema(op_name).arguments]
    return getattr(OPS, op_name)(*args)


def _first_tensor_arg(op_name):
    return next(a.name for a in _schema(op_name).arguments if isinstance(a.type, torch.TensorType))


for op_name in sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fgreid::")):
    add("ops.none", f"{op_name}_all", lambda o=op_name: _all_none(o), names=(_first_tensor_arg(op_name),))


def rerank_knn_base():
    feats = torch.randn(8, 4)
    return dict(feats=feats, sqnorms=feats.pow(2).sum(1), k=3)


def rerank_neighbours_base():
    a = rerank_knn_base()
    index, row_max = OPS.rerank_knn(a["feats"], a["sqnorms"], 4)
    return dict(feats=a["feats"], sqnorms=a["sqnorms"], knn_index=index, row_max=row_max, k1=3, k2=1)


def rerank_blend_base():
    long = dict(dtype=torch.long)
    return dict(gram=torch.zeros(2, 3), row_sq=torch.ones(2), col_sq=torch.ones(3), row_max=torch.ones(8),
                v_offsets=torch.zeros(9, **long), v_columns=torch.zeros(0, **long), v_values=torch.zeros(0),
                inv_offsets=torch.zeros(9, **long), inv_rows=torch.zeros(0, **long), inv_values=torch.zeros(0),
                row_start=0, col_start=0, lambda_value=0.3)


for op_name, base in (("rerank_knn", rerank_knn_base), ("rerank_knn_triton", rerank_knn_base),
                      ("rerank_neighbours", rerank_neighbours_base), ("rerank_blend_", rerank_blend_base),
                      ("evaluate_matches_triton", matches_base), ("evaluate_finalize_triton", finalize_base)):
    for a in _schema(op_name).arguments:
        if isinstance(a.type, torch.TensorType):
            add("ops.none", f"{op_name}_{a.name}", call(getattr(OPS, op_name), set_arg(base, **{a.name: None})),
                names=(a.name,))


# Cases that still fail, with why: strict xfails in test_fuzz.py (a fix makes them fail as XPASS,
# then drop the entry).
KNOWN_FAILURES: dict[str, str] = {}


# Subprocesses: each costs an import of torch and fgreid_ops (and the first Triton launch), so the
# per-op batches are grouped, C++ ops, Triton ops (interpreter) and the Python-level functions.
PROCESSES = {"gem": "cpp", "mask_upsample_mul": "cpp", "off": "cpp", "topk_mask": "cpp", "batch_hard_triplet": "cpp",
             "evaluate": "cpp", "gem_triton": "triton", "topk_mask_triton": "triton", "bht_triton": "triton",
             "evaluate_triton": "triton"}


def batches():
    """{process: (env, [case names])}."""
    out = {}
    for case in CASES.values():
        out.setdefault(PROCESSES.get(case.batch, case.batch if case.env else "python"), (case.env, []))[1].append(case.name)
    return out


if __name__ == "__main__":
    # One JSON line when a case starts and one when it ends, so that the parent knows which case
    # a crash interrupted.
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        print(json.dumps({"start": name}), flush=True)
        t0 = time.perf_counter()
        passed, detail = run_case(name)
        print(json.dumps({"name": name, "passed": passed, "detail": detail, "seconds": time.perf_counter() - t0}), flush=True)
