"""The package's structure: no import cycle (function-level imports included), leaf modules stay
leaves, every op registers through its description, and the backend probes look at the right
schemas."""

import ast
import pathlib
import re

import pytest
import torch

import fgreid_ops
from fgreid_ops import _backend, _oplist, _registry, _triton_support

PACKAGE_DIR = pathlib.Path(fgreid_ops.__file__).parent
PACKAGE = "fgreid_ops"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict:
    """{module: set of fgreid_ops modules it imports}, from every import statement anywhere in
    the file (module level, inside functions, under if), plus the imports the op list drives."""
    files = {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}
    # compiled modules import nothing of the package (_C, also when not built in this checkout)
    compiled = {f"{PACKAGE}._C"} | {_module_name(p.with_name(p.name.split(".")[0] + ".py"))
                                    for p in PACKAGE_DIR.rglob("*.so")}
    graph = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                # `from pkg import name` imports pkg.name when that is a module, else pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files.keys() | compiled else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in files and t != module)
        graph[module] = edges
    # importlib imports driven by the op list and by the registry
    for name in _oplist.OPS:
        graph[f"{PACKAGE}.ops"].add(f"{PACKAGE}.ops.{name}")
        graph[f"{PACKAGE}.reference"].add(f"{PACKAGE}.reference.{name}")
    graph[f"{PACKAGE}._registry"].update(m for m in files if m.startswith(f"{PACKAGE}.triton."))
    return graph


def find_cycle(graph: dict):
    """A list of modules forming a cycle (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_function_level_imports():
    graph = import_graph()
    # onnx.lowerings imports the registry inside the function
    assert f"{PACKAGE}._registry" in graph[f"{PACKAGE}.onnx"]
    assert f"{PACKAGE}.checks.gem" in graph[f"{PACKAGE}.ops.gem"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("prefix", ["checks", "triton", "reference", "_triton_support", "_checks", "_oplist"])
def test_leaf_modules_import_no_op_or_dispatch_module(prefix):
    """Checks, Triton launchers and references never reach the ops, the registry or the backend
    choice: those import them."""
    forbidden = (f"{PACKAGE}.ops", f"{PACKAGE}._registry", f"{PACKAGE}._backend", f"{PACKAGE}.nn", f"{PACKAGE}.onnx")
    for module, edges in import_graph().items():
        if module == f"{PACKAGE}.{prefix}" or module.startswith(f"{PACKAGE}.{prefix}."):
            bad = sorted(e for e in edges if e.startswith(forbidden))
            assert not bad, f"{module} imports {bad}"


# --- the registry ---------------------------------------------------------------------------------

def test_every_listed_op_registers_descriptions():
    public_ops = {op.op for op in _registry.all_ops()}
    assert public_ops == set(_oplist.OPS)
    for op in _registry.all_ops():
        for name in op.variants():
            assert hasattr(torch.ops.fgreid, name), name


def _schema(name):
    (schema,) = torch._C._jit_get_schemas_for_operator(f"fgreid::{name}")
    return schema


def _signature(name):
    schema = _schema(name)
    return [(a.name, str(a.type)) for a in schema.arguments], [str(r.type) for r in schema.returns]


@pytest.mark.parametrize("op", [op for op in _registry.all_ops() if op.cpp and op.triton], ids=lambda op: op.name)
def test_triton_twin_schema_matches_the_cpp_schema(op):
    if not fgreid_ops.has_extension():
        pytest.skip("the C++ extension did not load")
    assert _signature(op.name) == _signature(op.kernel_name("triton"))
    if op.backward is not None:
        assert _signature(f"{op.name}_backward") == _signature(f"{op.kernel_name('triton')}_backward")


def _parsed(name, signature):
    schema = torch._C.parse_schema(f"fgreid::{name}{signature}")
    return [(a.name, str(a.type)) for a in schema.arguments], [str(r.type) for r in schema.returns]


@pytest.mark.parametrize("op", _registry.all_ops(), ids=lambda op: op.name)
def test_description_signature_is_the_registered_schema(op):
    for name in op.variants():
        if name == op.name and not fgreid_ops.has_extension():
            continue
        assert _signature(name) == _parsed(name, op.signature)
        if op.backward is not None:
            assert _signature(f"{name}_backward") == _parsed(f"{name}_backward", op.backward.signature)


def test_each_op_defines_its_cpp_schemas_in_its_own_file():
    """csrc/ops/<op>.cpp defines exactly the C++ schemas of that op's descriptions (a new op adds a
    file, not lines in a shared one); the Triton twins are defined in Python, not there."""
    csrc = PACKAGE_DIR.parent / "csrc"
    defined = {}
    for path in sorted(csrc.rglob("*.cpp")) + sorted(csrc.rglob("*.cu")) + sorted(csrc.rglob("*.h")):
        source = path.read_text()
        assert not re.search(r"TORCH_LIBRARY\(", source), f"{path}: use TORCH_LIBRARY_FRAGMENT"
        for name in re.findall(r'm\.def\(\s*"(\w+)\(', source):
            defined.setdefault(path.relative_to(csrc).as_posix(), set()).add(name)
    expected = {}
    for op in _registry.all_ops():
        if op.cpp:
            names = expected.setdefault(f"ops/{op.op}.cpp", set())
            names.add(op.name)
            if op.backward is not None:
                names.add(f"{op.name}_backward")
    assert defined == expected


def test_every_op_has_a_battery_subclass():
    """Each listed op's tests/test_<op>.py runs the generic battery (tests/op_battery.py)."""
    tests = PACKAGE_DIR.parent / "tests"
    for name in _oplist.OPS:
        source = (tests / f"test_{name}.py").read_text()
        assert re.search(r"^class \w+\(OpTester\):", source, re.M), f"tests/test_{name}.py has no OpTester subclass"


def test_registering_a_name_twice_raises():
    op = _registry.all_ops()[0]
    with pytest.raises(ValueError, match="registered twice"):
        _registry.register(op)


def test_no_kernel_error_is_one_kind():
    """An op without a kernel for the backend asked for fails the same way whichever op it is."""
    cases = [("off", "triton", "Triton"), ("mask_upsample_mul", "triton", "Triton"),
             ("batch_hard_triplet", "cuda", "CUDA C\\+\\+"), ("evaluate", "cuda", "CUDA C\\+\\+")]
    for name, backend, label in cases:
        with pytest.raises(_registry.NoKernelError, match=f"fgreid_ops.{name}: no {label} kernel for this op"):
            _backend.resolve(name, "cuda" if backend == "cuda" else "cpu", backend)
    assert issubclass(_registry.NoKernelError, ValueError)


# --- backend probes (issue 20 item 6) -------------------------------------------------------------

def test_resolve_cuda_probes_the_kernel_schema_not_the_op_name():
    # the mining op is fgreid::batch_hard_triplet_mine; there is no fgreid::batch_hard_triplet
    with pytest.raises(ValueError, match="no CUDA C\\+\\+ kernel") as info:
        _backend.resolve("batch_hard_triplet", "cuda", "cuda")
    assert "does not exist" not in str(info.value)
    probed = []

    def probe(name, key):
        probed.append(name)
        return False

    original = torch._C._dispatch_has_kernel_for_dispatch_key
    torch._C._dispatch_has_kernel_for_dispatch_key = probe
    try:
        for op in _registry.all_ops():
            if "cuda" in op.cpp and fgreid_ops.has_extension():
                with pytest.raises(RuntimeError, match="built without CUDA kernels"):
                    _backend.resolve(op.name, "cuda", "cuda")
    finally:
        torch._C._dispatch_has_kernel_for_dispatch_key = original
    assert set(probed) <= {f"fgreid::{op.name}" for op in _registry.all_ops()}


def test_has_cuda_kernels_probes_every_op_with_a_cuda_kernel(monkeypatch):
    if not fgreid_ops.has_extension():
        pytest.skip("the C++ extension did not load")
    cuda_ops = {f"fgreid::{op.name}" for op in _registry.all_ops() if "cuda" in op.cpp}
    assert {"fgreid::gem", "fgreid::off", "fgreid::topk_mask"} <= cuda_ops
    built = set(cuda_ops)
    monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", lambda name, key: name in built)
    assert fgreid_ops.has_cuda_kernels()
    built.discard("fgreid::off_segment")  # a build missing one op's CUDA kernel
    assert not fgreid_ops.has_cuda_kernels()


TRITON_WITHOUT_CPP = """
import sys
sys.modules["fgreid_ops._C"] = None  # as if the extension had not been built
import warnings
warnings.simplefilter("ignore")
import torch
import fgreid_ops
assert not fgreid_ops.has_extension()
x = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
p = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
torch.testing.assert_close(fgreid_ops.gem(x, p, backend="triton"), fgreid_ops.gem(x, p, backend="reference"))
assert torch.autograd.gradcheck(lambda a: fgreid_ops.gem(a, p, backend="triton"), (x,))
torch.library.opcheck(torch.ops.fgreid.gem_triton, (x.detach().float(), p.detach().float(), 1e-6))
f1 = torch.randint(-2, 3, (2, 3, 4, 5)).float()
out, mask = fgreid_ops.topk_mask(f1, f1, 3, backend="triton")
assert torch.equal(mask, fgreid_ops.topk_mask(f1, f1, 3, backend="reference")[1])
print("ok")
"""


@pytest.mark.skipif(not _triton_support.triton_available("cpu"), reason="needs triton and TRITON_INTERPRET=1")
def test_triton_ops_register_and_run_without_the_cpp_build():
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", TRITON_WITHOUT_CPP], capture_output=True, text=True, env=env,
                            cwd=PACKAGE_DIR.parent, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
