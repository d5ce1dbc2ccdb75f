"""The one list of ops. An op `<name>` is the files `fgreid_ops/ops/<name>.py` (its public
functions and op descriptions), `fgreid_ops/reference/<name>.py`, `fgreid_ops/checks/<name>.py`,
optionally `fgreid_ops/triton/<name>.py` and the C++ kernels; adding its name here is what makes
the package export it (fgreid_ops.ops, fgreid_ops.reference and the ONNX table derive from this
list). See docs/adding_an_op.md."""

OPS = ("gem", "off", "mask_upsample_mul", "topk_mask", "batch_hard_triplet", "evaluate", "rerank")


def export_ops(package: str, namespace: dict) -> list:
    """Imports ``<package>.<op>`` for every op of OPS, puts the names of each module's __all__
    into `namespace` (a package's globals()) and returns them: the package's __all__."""
    import importlib

    names = []
    for op in OPS:
        module = importlib.import_module(f"{package}.{op}")
        for name in module.__all__:
            namespace[name] = getattr(module, name)
            names.append(name)
    return names
