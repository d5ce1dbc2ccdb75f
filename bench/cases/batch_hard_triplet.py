"""Batch-hard triplet loss: P×K batches (K = 4) of B ∈ {64, 256, 1024, 4096} embeddings of
D ∈ {256, 2048}, the batch as its own reference set, plus a cross-batch memory of M = 16384
reference rows. The work is a B×M×D matrix product (2·B·M·D flops): GB/s counts only the bytes
read (emb and references), so it is low by nature; the note gives the GFLOP of the product and,
on CUDA, the peak memory of one call (eager and torch.compile materialize B×M matrices, ours
only O(B·D)); on CPU it states the size of one B×M matrix instead.

CPU is scaled down (B ≤ 1024, M = 4096): the eager reference at B = 4096 takes seconds per call
and torch.compile recompiles per shape."""

import torch

import fgreid_ops
from fgreid_ops.reference import batch_hard_triplet_reference

from common import Case, compiled, forward_backward, nbytes

SHAPES = {"cuda": [(B, D) for B in (64, 256, 1024, 4096) for D in (256, 2048)],
          "cpu": [(B, D) for B in (64, 256, 1024) for D in (256, 2048)]}
MEMORY_BANK = {"cuda": (1024, 16384, 2048), "cpu": (256, 4096, 256)}  # (B, M, D)
QUICK_SHAPES = [(16, 32)]
QUICK_BANK = (8, 64, 32)


def _peak_memory_mb(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _case(device, config, mode, bytes_moved, flops, matrix_mb, providers):
    if device == "cuda":
        peaks = {name: _peak_memory_mb(fn) for name, fn in providers.items()}
        note = "peak MB " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items())
    else:  # no allocator statistics on CPU
        note = f"one B×M fp32 matrix = {matrix_mb:.1f} MB (eager holds several, compile >= 1, ours none)"
    note += f"; {flops / 1e9:.2f} GFLOP"
    return Case("batch_hard_triplet", config, mode, bytes_moved, providers, note)


def _config_cases(device, dtype, B, M, D, bank):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(B, D, generator=g).to(device, dtype)
    labels = (torch.arange(B) // 4).to(device)
    kwargs = {}
    if bank:
        kwargs = dict(ref_emb=torch.randn(M, D, generator=g).to(device, dtype),
                      ref_labels=torch.randint(0, M // 4, (M,), generator=g).to(device))

    def ours(x):
        return fgreid_ops.batch_hard_triplet(x, labels, 0.3, **kwargs)

    def ref(x):
        return batch_hard_triplet_reference(x, labels, 0.3, **kwargs)

    compiled_ref = compiled(ref)
    config = f"B={B} M={M} D={D} K=4 {str(dtype).replace('torch.', '')}" + (" bank" if bank else "")
    read = nbytes(emb) + (nbytes(kwargs["ref_emb"]) if bank else 0)
    flops = 2 * B * M * D
    matrix_mb = B * M * 4 / 2**20
    fwd = {"eager": lambda: ref(emb), "compile": lambda: compiled_ref(emb), "fgreid": lambda: ours(emb)}
    x = emb.clone().requires_grad_()
    bwd = {"eager": forward_backward(ref, (x,)), "compile": forward_backward(compiled_ref, (x,)),
           "fgreid": forward_backward(ours, (x,))}
    return [_case(device, config, "fwd", read, flops, matrix_mb, fwd),
            _case(device, config, "fwd+bwd", read + nbytes(emb), flops, matrix_mb, bwd)]


def cases(device: str, quick: bool) -> list[Case]:
    dtype = torch.float16 if device == "cuda" else torch.float32
    configs = [(B, B, D, False) for B, D in (QUICK_SHAPES if quick else SHAPES[device])]
    configs.append((*(QUICK_BANK if quick else MEMORY_BANK[device]), True))
    return [case for B, M, D, bank in configs for case in _config_cases(device, dtype, B, M, D, bank)]
