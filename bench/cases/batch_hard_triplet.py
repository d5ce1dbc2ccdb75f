"""Batch-hard triplet loss: P×K batches (K = 4) of B ∈ {64, 256, 1024, 4096} embeddings of
D ∈ {256, 2048}, the batch as its own reference set, plus a cross-batch memory of M = 16384
reference rows. The work is a B×M×D matrix product (2·B·M·D flops): GB/s counts only the bytes
read (emb and references), so it is low by nature; the note gives the GFLOP of the product and
the size of one B×M fp32 matrix (eager and torch.compile materialize several, ours only O(B·D));
on CUDA the results also hold each provider's peak memory.

The default run takes B ∈ {64, 256} at D = 2048 on CPU and B ∈ {64, 1024} at D = 2048 and 4096 at
D = 256 on CUDA; --full every shape. CPU is scaled down (B ≤ 1024, M = 4096): the eager reference at
B = 4096 takes seconds per call."""

import torch

import fgreid_ops
from fgreid_ops.reference import batch_hard_triplet_reference

from common import Case, bound, bound_backward, compiled, nbytes, our_backends, spec

SHAPES = {"cuda": [(B, D) for B in (64, 256, 1024, 4096) for D in (256, 2048)],
          "cpu": [(B, D) for B in (64, 256, 1024) for D in (256, 2048)],
          "cpu-default": [(64, 2048), (256, 2048)], "cuda-default": [(64, 2048), (1024, 2048), (4096, 256)]}
MEMORY_BANK = {"cuda": (1024, 16384, 2048), "cpu": (256, 4096, 256)}  # (B, M, D)
QUICK_SHAPES = [(16, 32)]
QUICK_BANK = (8, 64, 32)
MARGIN = 0.3


def _loss(fn, **fixed):
    def run(emb, labels, ref_emb=None, ref_labels=None):
        return fn(emb, labels, MARGIN, ref_emb=ref_emb, ref_labels=ref_labels, **fixed)
    return run


def _setup(B, M, D, bank, dtype, backward, backends):
    def setup(device):
        torch.manual_seed(0)
        emb = torch.randn(B, D, device=device, dtype=dtype).requires_grad_(backward)
        labels = torch.arange(B, device=device) // 4
        refs = ()
        if bank:
            refs = (torch.randn(M, D, device=device, dtype=dtype), torch.randint(0, M // 4, (M,), device=device))
        ref = _loss(batch_hard_triplet_reference)
        fns = {"eager": ref, "compile": compiled(ref),
               **{name: _loss(fgreid_ops.batch_hard_triplet, backend=b) for name, b in backends.items()}}
        make = bound_backward if backward else bound
        return {name: make(fn, emb, labels, *refs) for name, fn in fns.items()}
    return setup


def cases(device: str, size: str) -> list[Case]:
    dtype = torch.float16 if device == "cuda" else torch.float32
    if size == "quick":
        shapes, memory_bank = QUICK_SHAPES, QUICK_BANK
    else:
        shapes = SHAPES[f"{device}-default" if size == "default" else device]
        memory_bank = MEMORY_BANK[device]
    configs = [(B, B, D, False) for B, D in shapes] + [(*memory_bank, True)]
    backends = our_backends(device, gpu=("triton",))
    out = []
    for B, M, D, bank in configs:
        inputs = {"emb": spec((B, D), dtype), "labels": spec((B,), torch.int64)}
        if bank:
            inputs.update(ref_emb=spec((M, D), dtype), ref_labels=spec((M,), torch.int64))
        config = f"B={B} M={M} D={D} K=4 {str(dtype).replace('torch.', '')}" + (" bank" if bank else "")
        read = nbytes(inputs["emb"]) + (nbytes(inputs["ref_emb"]) if bank else 0)
        note = f"one B×M fp32 matrix = {B * M * 4 / 2**20:.1f} MiB; {2 * B * M * D / 1e9:.2f} GFLOP"
        out.append(Case("batch_hard_triplet", config, "fwd", inputs,
                        _setup(B, M, D, bank, dtype, False, backends), read, note))
        out.append(Case("batch_hard_triplet", config, "fwd+bwd", inputs,
                        _setup(B, M, D, bank, dtype, True, backends), read + nbytes(inputs["emb"]), note))
    return out
