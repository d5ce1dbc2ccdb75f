"""Argument checks per op, `fgreid_ops/checks/<op>.py`: the checks of the C++ kernels
(csrc/include/fgreid_ops/<op>_checks.h) with the same messages, called by the public function,
the fakes and the Triton launchers. Leaf modules: they import only `fgreid_ops._checks` and the
op's reference (for its constants)."""
