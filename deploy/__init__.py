"""Deployment scripts: ONNX export with onnxruntime parity (export_onnx.py), TensorRT engine build
(build_engine.py) and run/benchmark (run_engine.py). See docs/export.md."""
