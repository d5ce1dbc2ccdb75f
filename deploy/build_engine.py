"""Build a TensorRT engine from an ONNX file written by export_onnx.py (no plugins needed: the
fgreid_ops lowerings are standard ONNX operators).

    python deploy/build_engine.py cuhs.onnx -o cuhs.engine --min-batch 1 --opt-batch 32 --max-batch 64 --fp16
    python deploy/build_engine.py cuhs.onnx -o cuhs.engine --timing-cache trt.cache   # reuse tactic timings

One optimization profile covers batch sizes [--min-batch, --max-batch], tuned for --opt-batch; the
other dims of every input are taken from the ONNX graph (they are static in our exports). With
--fp16, the layers that GeM and the top-k channel sum lower to (Pow, ReduceMean, ReduceSum by
default, see --fp32-layers) stay in float32: x**p overflows half for x > ~40 at p = 3.
Needs the tensorrt Python package (and a GPU); without it the script exits with one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

try:
    from . import _common
except ImportError:  # run as a script: deploy/ is sys.path[0]
    import _common

PROG = "build_engine.py"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx", help="the .onnx file")
    p.add_argument("--output", "-o", required=True, help="the serialized engine to write")
    p.add_argument("--min-batch", type=_common.positive_int, default=1, help="profile minimum batch (default 1)")
    p.add_argument("--opt-batch", type=_common.positive_int, default=None,
                   help="batch the tactics are tuned for (default: --max-batch)")
    p.add_argument("--max-batch", type=_common.positive_int, default=64, help="profile maximum batch (default 64)")
    p.add_argument("--fp16", action="store_true", help="allow FP16 kernels (BuilderFlag.FP16)")
    p.add_argument("--fp32-layers", default="Pow,ReduceMean,ReduceSum",
                   help="with --fp16: comma-separated substrings of layer names kept in FP32 "
                        "(default Pow,ReduceMean,ReduceSum; empty string for none)")
    p.add_argument("--workspace-mib", type=_common.positive_int, default=4096,
                   help="workspace memory pool limit in MiB (default 4096)")
    p.add_argument("--timing-cache", default=None,
                   help="timing cache file: read if it exists, written back after the build")
    p.add_argument("--verbose", action="store_true", help="TensorRT INFO logging (default WARNING)")
    return p


def check_batches(args) -> tuple[int, int, int]:
    opt = args.opt_batch or args.max_batch
    if not args.min_batch <= opt <= args.max_batch:
        raise SystemExit(f"error: expected --min-batch <= --opt-batch <= --max-batch, got "
                         f"{args.min_batch} / {opt} / {args.max_batch}")
    return args.min_batch, opt, args.max_batch


def build(trt, args) -> bytes:
    logger = trt.Logger(trt.Logger.INFO if args.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # deprecated (always on) in TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    onnx_parser = trt.OnnxParser(network, logger)
    if not onnx_parser.parse_from_file(os.path.abspath(args.onnx)):
        errors = [str(onnx_parser.get_error(i)) for i in range(onnx_parser.num_errors)]
        raise SystemExit(f"{PROG}: TensorRT could not parse {args.onnx}: " + " | ".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mib << 20)
    lo, opt, hi = check_batches(args)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if any(d < 0 for d in dims[1:]):
            raise SystemExit(f"{PROG}: input {tensor.name} {dims} has a dynamic dim other than the batch")
        profile.set_shape(tensor.name, [lo] + dims[1:], [opt] + dims[1:], [hi] + dims[1:])
    config.add_optimization_profile(profile)

    if args.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        keep = [s for s in args.fp32_layers.split(",") if s]
        if keep:
            kept = 0
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                floats = [j for j in range(layer.num_outputs)
                          if layer.get_output(j).dtype in (trt.float32, trt.float16)]
                if floats and any(s in layer.name for s in keep):
                    layer.precision = trt.float32
                    for j in floats:  # leave integer outputs (shape arithmetic) alone
                        layer.set_output_type(j, trt.float32)
                    kept += 1
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            print(f"fp16: {kept} layers kept in fp32 ({', '.join(keep)})")

    cache_bytes = b""
    if args.timing_cache and os.path.exists(args.timing_cache):
        with open(args.timing_cache, "rb") as f:
            cache_bytes = f.read()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    t0 = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise SystemExit(f"{PROG}: the TensorRT build failed (run with --verbose for the builder log)")
    print(f"built in {time.perf_counter() - t0:.1f} s: batch {lo}..{hi} (opt {opt}), "
          f"{'fp16' if args.fp16 else 'fp32'}, workspace {args.workspace_mib} MiB")
    if args.timing_cache:
        with open(args.timing_cache, "wb") as f:
            f.write(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(engine))


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    check_batches(args)
    if not os.path.isfile(args.onnx):
        raise SystemExit(f"error: no such ONNX file: {args.onnx}")
    trt = _common.import_tensorrt(PROG)
    engine = build(trt, args)
    with open(args.output, "wb") as f:
        f.write(engine)
    print(f"wrote {args.output} ({len(engine) / 2**20:.1f} MiB, TensorRT {trt.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
