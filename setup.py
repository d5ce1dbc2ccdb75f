"""Builds fgreid_ops._C: the CPU kernels always, the CUDA kernels when torch has CUDA
(or FORCE_CUDA=1 and nvcc is found). Install with `pip install --no-build-isolation .`
after torch is installed, so the extension is built against the torch that will run it."""

import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "fgreid_ops: torch is not importable in the build environment. Install torch first, "
        "then build without isolation: pip install --no-build-isolation ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _with_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return CUDA_HOME is not None
    return torch.cuda.is_available() or (torch.version.cuda is not None and CUDA_HOME is not None)


def extension():
    sources = ["csrc/python_module.cpp"] + _sources("csrc/ops/*.cpp") + _sources("csrc/cpu/*.cpp")
    # -fno-trapping-math lets gcc if-convert the selects in fast_math.h and vectorize the loops.
    # Py_LIMITED_API is defined by torch's BuildExtension (py_limited_api=True), to its minimum
    # supported CPython, which pyproject.toml's requires-python matches.
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"]
    kwargs = dict(
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    if not _with_cuda():
        return CppExtension("fgreid_ops._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return CUDAExtension(
        "fgreid_ops._C",
        sources + _sources("csrc/cuda/*.cu"),
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        **kwargs,
    )


setup(
    # bench/ is scripts, not a package: it ships as fgreid_ops._bench for the fgreid-bench command.
    packages=find_packages(include=["fgreid_ops", "fgreid_ops.*", "python_models", "deploy"])
    + ["fgreid_ops._bench", "fgreid_ops._bench.cases"],
    package_dir={"fgreid_ops._bench": "bench"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
