"""Run a function on several gloo ranks (CPU, one thread each) spawned on free local ports, with
a bounded wall time: a hang fails the test instead of stalling the suite."""

import datetime
import os
import socket
import time

import pytest
import torch

TIMEOUT_S = 120  # generous: the CI box is shared; a healthy run takes a few seconds


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gloo_available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


needs_gloo = pytest.mark.skipif(not gloo_available(), reason="needs torch.distributed with gloo")


def _entry(rank, fn, world, port, args):
    import torch.distributed as dist

    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args, timeout: float = TIMEOUT_S) -> None:
    """fn(rank, world, *args) on `world` spawned processes; a failure on any rank fails the
    test with that rank's traceback; ranks still running after `timeout` seconds are killed."""
    import torch.multiprocessing as mp

    context = mp.start_processes(_entry, args=(fn, world, free_port(), args), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{world} ranks did not finish within {timeout} s (a hang)")
