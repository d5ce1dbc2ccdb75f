"""Export a model that uses fgreid_ops to ONNX (standard operators only), check the graph with
onnx.checker, run it in onnxruntime on random inputs and print the max abs/rel error against
PyTorch.

    python deploy/export_onnx.py --model cuhs --checkpoint cuhs.pth --output cuhs.onnx
    python deploy/export_onnx.py --model fg_video --frames 10 --precision fp16 --output fgv.onnx
    python deploy/export_onnx.py --model mypkg.nets:build --model-kwargs '{"depth": 50}' --output my.onnx

The graph has a dynamic batch unless --static-batch; its parity is checked at --check-batches
(by default batch sizes other than the export batch, so the dynamic dim is exercised).
Exit status 0 on success, 1 when a check fails (or the error exceeds --max-abs-error).
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export_onnx.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_model_arguments(p)
    g = p.add_argument_group("export")
    g.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    g.add_argument("--batch", type=_common.positive_int, default=2,
                   help="batch of the example inputs traced for export (default 2; >= 2 with a dynamic batch)")
    g.add_argument("--static-batch", action="store_true", help="fix the batch dim to --batch (default: dynamic)")
    g.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 18 (default 18)")
    g.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16 exports a float16 graph (float16 weights and inputs); for TensorRT an fp32 graph "
                        "built with build_engine.py --fp16 is the usual route (default fp32)")
    c = p.add_argument_group("check")
    c.add_argument("--check-batches", default=None,
                   help="comma-separated batch sizes to compare in onnxruntime (default: 1,3 with a dynamic batch, "
                        "--batch with a static one)")
    c.add_argument("--no-check", action="store_true", help="only export and run onnx.checker")
    c.add_argument("--max-abs-error", type=float, default=None,
                   help="fail (exit 1) when an output's max abs error exceeds this")
    c.add_argument("--seed", type=int, default=0, help="seed of the model init and random inputs (default 0)")
    return p


def _batches(args) -> list[int]:
    if args.check_batches is None:
        return [args.batch] if args.static_batch else [1, 3]
    try:
        values = [int(v) for v in args.check_batches.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SystemExit(f"error: --check-batches expects positive integers like 1,3, got {args.check_batches!r}")
    if args.static_batch and any(v != args.batch for v in values):
        raise SystemExit(f"error: a static-batch graph runs only batch {args.batch}, got --check-batches {values}")
    return values


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.opset < 18:
        raise SystemExit(f"error: --opset must be >= 18 (the torch.onnx dynamo exporter's minimum), got {args.opset}")
    if not args.static_batch and args.batch < 2:
        raise SystemExit("error: a dynamic batch needs --batch >= 2 (torch.export specializes batch 1)")
    batches = _batches(args)

    import onnx
    import torch

    from fgreid_ops import onnx as fonnx

    torch.manual_seed(args.seed)
    spec = _common.build_model(args)
    fp16 = args.precision == "fp16"
    dtype = torch.float16 if fp16 else torch.float32
    example = spec.make_inputs(args.batch)
    with torch.no_grad():
        names = _common.output_names(spec.model(*example))

    t0 = time.perf_counter()
    path = fonnx.export_onnx(spec.model, example, args.output, dynamic_batch=not args.static_batch,
                             opset=args.opset, fp16=fp16, input_names=spec.input_names, output_names=names)
    print(f"exported {args.model} to {path} in {time.perf_counter() - t0:.1f} s "
          f"(opset {args.opset}, {args.precision}, {'static' if args.static_batch else 'dynamic'} batch)")
    onnx.checker.check_model(path, full_check=True)
    custom = fonnx.custom_domain_nodes(path)
    if custom:
        print(f"FAIL: the graph has non-standard nodes: {', '.join(sorted(set(custom)))}")
        return 1
    ops = sorted({n.op_type for n in onnx.load(path, load_external_data=False).graph.node})
    print(f"onnx.checker: ok; {len(ops)} standard op types: {' '.join(ops)}")
    if args.no_check:
        return 0

    worst = 0.0
    for batch in batches:
        torch.manual_seed(args.seed + batch)
        inputs = spec.make_inputs(batch, dtype=dtype)
        # The reference is the float32 PyTorch model on the same (possibly half-rounded) values.
        with torch.no_grad():
            expected = fonnx.flatten_outputs(spec.model(*(t.float() if t.is_floating_point() else t for t in inputs)))
        actual = fonnx.run_onnxruntime(path, inputs)
        labels = names or [f"output_{i}" for i in range(len(actual))]
        for label, e, a, (abs_err, rel_err) in zip(labels, expected, actual, fonnx.max_errors(expected, actual)):
            worst = max(worst, abs_err)
            print(f"batch {batch} {label} {list(a.shape)}: max abs error {abs_err:.3e}, max rel error {rel_err:.3e}")
    if args.max_abs_error is not None and worst > args.max_abs_error:
        print(f"FAIL: max abs error {worst:.3e} > --max-abs-error {args.max_abs_error:g}")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
