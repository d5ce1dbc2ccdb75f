"""One small forward+backward call per GPU kernel (CUDA C++ and Triton), for compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python bench/sanitize_cases.py
    python bench/sanitize_cases.py --device cpu     # builds every input on the CPU and runs the CPU kernels

Shapes are small but not trivial: odd sizes that leave partial blocks/tiles, several batches, and
(where the op takes them) non-contiguous inputs, so that an out-of-bounds or racy index shows up.
bench/gpu_check.py runs this under memcheck and racecheck; the caching allocator is off there so
each tensor is its own allocation and memcheck sees a read past its end."""

import argparse
import os
import sys

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import fgreid_ops  # noqa: E402


def _gem(device):
    x = torch.rand(3, 37, 5, 7, device=device).requires_grad_()
    p = torch.tensor([3.0], device=device).requires_grad_()
    return lambda backend: fgreid_ops.gem(x, p, backend=backend), (x, p)


def _gem_channels_last(device):
    x = torch.rand(2, 33, 6, 5, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
    return lambda backend: fgreid_ops.gem(x, 2.5, backend=backend), (x,)


def _off_segment(device):
    x = torch.randn(2, 5, 3, 9, 11, device=device).requires_grad_()
    return lambda backend: fgreid_ops.off(x, stride=2, backend=backend), (x,)


def _off_pair(device):
    a = torch.randn(2, 3, 9, 11, device=device).requires_grad_()
    b = torch.randn(2, 3, 9, 11, device=device).requires_grad_()
    return lambda backend: fgreid_ops.off(a, b, backend=backend), (a, b)


def _mask(pool, per_channel):
    def build(device):
        feat = torch.rand(2, 5, 13, 9, device=device).requires_grad_()
        mask = torch.rand(2, 5 if per_channel else 1, 4, 3, device=device).requires_grad_()
        return lambda backend: fgreid_ops.mask_upsample_mul(feat, mask, "bilinear", pool, backend=backend), (feat, mask)
    return build


def _topk(dtype):
    def build(device):
        f1 = torch.randn(3, 17, 6, 5, device=device, dtype=dtype)
        f2 = torch.randn(3, 17, 6, 5, device=device, dtype=dtype).requires_grad_()
        return lambda backend: fgreid_ops.topk_mask(f1, f2, 7, backend=backend), (f2,)
    return build


def _triplet(bank):
    def build(device):
        emb = torch.randn(24, 33, device=device).requires_grad_()
        labels = torch.arange(24, device=device) // 4
        kwargs = {}
        if bank:
            kwargs = dict(ref_emb=torch.randn(70, 33, device=device).requires_grad_(),
                          ref_labels=torch.randint(0, 10, (70,), device=device))
        inputs = (emb,) + ((kwargs["ref_emb"],) if bank else ())
        return lambda backend: fgreid_ops.batch_hard_triplet(emb, labels, 0.3, backend=backend, **kwargs), inputs
    return build


def _evaluate(device):
    g = torch.Generator().manual_seed(0)
    d = torch.rand(9, 53, generator=g).to(device)
    ids = [torch.randint(0, 4, (n,), generator=g).to(device) for n in (9, 53, 9, 53)]
    return lambda backend: fgreid_ops.evaluate(d, *ids, backend=backend).mAP, ()


def _evaluate_features(device):
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(9, 16, generator=g).to(device), torch.randn(53, 16, generator=g).to(device)
    ids = [torch.randint(0, 4, (n,), generator=g).to(device) for n in (9, 53, 9, 53)]
    return lambda backend: fgreid_ops.evaluate_features(q, gal, *ids, backend=backend).mAP, ()


# (name, GPU backend, build(device) -> (call(backend) -> output, inputs to differentiate))
CASES = [
    ("gem", "cuda", _gem), ("gem channels_last", "cuda", _gem_channels_last), ("gem", "triton", _gem),
    ("off stride", "cuda", _off_segment), ("off pair", "cuda", _off_pair),
    ("mask_upsample_mul map per-frame", "cuda", _mask(False, False)),
    ("mask_upsample_mul pool per-channel", "cuda", _mask(True, True)),
    ("topk_mask fp32", "cuda", _topk(torch.float32)), ("topk_mask bf16", "cuda", _topk(torch.bfloat16)),
    ("topk_mask fp32", "triton", _topk(torch.float32)),
    ("batch_hard_triplet", "triton", _triplet(False)), ("batch_hard_triplet bank", "triton", _triplet(True)),
    ("evaluate", "triton", _evaluate), ("evaluate_features", "triton", _evaluate_features),
]


def run_case(build, backend, device):
    """Forward, then backward to every input that requires grad; returns the output."""
    call, inputs = build(device)
    out = call(backend if device == "cuda" else None)
    if isinstance(out, tuple):  # topk_mask: (output, mask)
        out = out[0]
    if inputs:
        loss = out if out.dim() == 0 else out.float().sum()
        grads = torch.autograd.grad(loss, inputs)
        assert all(g is not None and g.shape == t.shape for g, t in zip(grads, inputs))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: build every input there and run the CPU kernels (a dry run of this driver)")
    parser.add_argument("--list", action="store_true", help="print the cases")
    args = parser.parse_args(argv)
    if args.list:
        for name, backend, _ in CASES:
            print(f"{name} [{backend}]")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    for name, backend, build in CASES:
        run_case(build, backend, args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        print(f"sanitize_cases: {name} [{backend if args.device == 'cuda' else 'cpu'}] forward+backward ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
