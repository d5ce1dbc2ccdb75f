"""The one list of ops. An op `<name>` is the files `fgreid_ops/ops/<name>.py` (its public
functions and op descriptions), `fgreid_ops/reference/<name>.py`, `fgreid_ops/checks/<name>.py`,
optionally `fgreid_ops/triton/<name>.py` and the C++ kernels; adding its name here is what makes
the package export it (fgreid_ops.ops, fgreid_ops.reference and the ONNX table derive from this
list). See docs/adding_an_op.md."""

OPS = ("gem", "off", "mask_upsample_mul", "topk_mask", "batch_hard_triplet", "evaluate", "rerank")
