// Makes the shared library importable as `fgreid_ops._C`; importing it runs the static
// TORCH_LIBRARY registrations. The operators themselves are reached through torch.ops.fgreid.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
