"""Run a TensorRT engine from build_engine.py on random inputs, compare it with the PyTorch model
on the same inputs (max abs/rel error per output) and time both.

    python deploy/run_engine.py cuhs.engine --model cuhs --checkpoint cuhs.pth --batch 64
    python deploy/run_engine.py cuhs.engine --batch 32          # engine only: latency and throughput

Inputs and outputs are torch CUDA tensors handed to the engine by address (set_tensor_address +
execute_async_v3 on the current torch stream): no host copies. The PyTorch side runs the float32
model (with fgreid_ops kernels) on the same values. The batch must lie in the engine's profile.
Needs the tensorrt Python package and a CUDA GPU; without tensorrt the script exits with one line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

try:
    from . import _common
except ImportError:  # run as a script: deploy/ is sys.path[0]
    import _common

PROG = "run_engine.py"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine", help="serialized engine from build_engine.py")
    _common.add_model_arguments(p, required=False)
    g = p.add_argument_group("run")
    g.add_argument("--batch", type=_common.positive_int, default=8, help="batch size (default 8)")
    g.add_argument("--iters", type=_common.positive_int, default=50, help="timed iterations (default 50)")
    g.add_argument("--warmup", type=int, default=10, help="untimed iterations first (default 10)")
    g.add_argument("--seed", type=int, default=0, help="seed of the model init and random inputs (default 0)")
    return p


def torch_dtype(trt, dtype):
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    for name, torch_type in (("int64", torch.int64), ("bf16", torch.bfloat16)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = torch_type
    return table[dtype]


class Engine:
    """A deserialized engine with one execution context, run on torch CUDA tensors."""

    def __init__(self, trt, path: str):
        self.trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as f:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise SystemExit(f"{PROG}: could not deserialize {path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]

    def input_specs(self):
        """(name, shape with -1 for the batch, torch dtype) per input."""
        return [(n, list(self.engine.get_tensor_shape(n)), torch_dtype(self.trt, self.engine.get_tensor_dtype(n)))
                for n in self.inputs]

    def prepare(self, inputs):
        """Bind inputs (contiguous CUDA tensors, engine order) and allocate the outputs; returns them."""
        import torch

        for name, tensor in zip(self.inputs, inputs):
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch_dtype(self.trt, self.engine.get_tensor_dtype(name))
            out = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        return outputs

    def execute(self) -> None:
        import torch

        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise SystemExit(f"{PROG}: execute_async_v3 failed")


def time_ms(fn, iters: int, warmup: int) -> float:
    """Median ms per call over `iters` calls, CUDA events on the current stream."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if not os.path.isfile(args.engine):
        raise SystemExit(f"error: no such engine file: {args.engine}")
    trt = _common.import_tensorrt(PROG)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"{PROG}: needs a CUDA GPU (torch.cuda.is_available() is False)")
    from fgreid_ops import onnx as fonnx

    torch.manual_seed(args.seed)
    engine = Engine(trt, args.engine)
    specs = engine.input_specs()
    spec = _common.build_model(args) if args.model else None
    if spec is not None:
        inputs = spec.make_inputs(args.batch, device="cuda")
        if len(inputs) != len(specs):
            raise SystemExit(f"{PROG}: the engine has {len(specs)} inputs, --model {args.model} takes {len(inputs)}")
    else:
        inputs = tuple(torch.randn([args.batch] + shape[1:], device="cuda").to(dtype) for _, shape, dtype in specs)
    inputs = tuple(t.to(dtype).contiguous() for t, (_, _, dtype) in zip(inputs, specs))

    outputs = engine.prepare(inputs)
    engine.execute()
    torch.cuda.synchronize()
    trt_ms = time_ms(engine.execute, args.iters, args.warmup)
    print(f"TensorRT: batch {args.batch}, {trt_ms:.3f} ms, {args.batch / trt_ms * 1e3:.1f} samples/s")

    if spec is not None:
        model = spec.model.cuda()
        ref_inputs = tuple(t.float() if t.is_floating_point() else t for t in inputs)
        with torch.no_grad():
            out = model(*ref_inputs)
            expected = fonnx.flatten_outputs(out)
            names = _common.output_names(out)
            if names and set(engine.outputs) == set(names):  # match by name when the export named them
                expected = [expected[names.index(n)] for n in engine.outputs]
            for name, o, (abs_err, rel_err) in zip(engine.outputs, outputs, fonnx.max_errors(expected, outputs)):
                print(f"{name} {list(o.shape)}: max abs error {abs_err:.3e}, max rel error {rel_err:.3e} vs PyTorch")
            torch_ms = time_ms(lambda: model(*ref_inputs), args.iters, args.warmup)
        print(f"PyTorch: batch {args.batch}, {torch_ms:.3f} ms, {args.batch / torch_ms * 1e3:.1f} samples/s "
              f"(TensorRT {torch_ms / trt_ms:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
