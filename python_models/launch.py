"""Process setup shared by ``python -m python_models.train`` and ``python -m python_models.evaluate``:
one process by default; under torchrun (RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous in the
environment) a process group with NCCL for a CUDA device (rank i on ``cuda:<LOCAL_RANK>``) or gloo
for the CPU. Only rank 0 writes files, logs and progress bars (``Launch.main``)."""

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Launch:
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    owns_group: bool = False  # this module created the process group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def log(self, *args) -> None:
        """print to stderr on rank 0 only."""
        if self.main:
            print(*args, file=sys.stderr)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def start(device: str) -> Launch:
    """The Launch of this process: under torchrun, joins the process group (initialising it
    unless the caller already has) and pins rank i's CUDA device to cuda:<LOCAL_RANK>."""
    if not launched_by_torchrun():
        return Launch(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.device(device).type == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Launch(rank=dist.get_rank(), world=dist.get_world_size(), device=device, owns_group=owns)


def finish(launch: Launch) -> None:
    if launch.owns_group and dist.is_initialized():
        dist.destroy_process_group()
