"""Train: one process, or one rank of a DDP group under ``torchrun`` (WORLD_SIZE > 1; NCCL
on GPU, gloo on CPU)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from tedloc.configs.train import Config
from tedloc.errors import ArtifactError


class DistContext:
    """Rank, world size, device; whether this call initialized the process group."""

    def __init__(self, config: Config):
        from tedloc.pipeline.image_encoders import resolve_device

        self.owned = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = torch.cuda.is_available() and config.device != "cpu"
        if world > 1 and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if cuda else "gloo")
            self.owned = True
        self.enabled = dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.enabled else 0
        self.world = dist.get_world_size() if self.enabled else 1
        if self.enabled and cuda and config.device in ("auto", "cuda"):
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        else:
            self.device = resolve_device(config.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def agree(self, error: str | None) -> None:
        """Rank 0's verdict for everyone: an error raised on rank 0 is raised on every rank
        (instead of leaving the others waiting in a collective)."""
        if not self.enabled:
            return
        box = [error]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and not self.main:
            raise ArtifactError(box[0])

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce(self, sums: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's ``sums`` (a CPU tensor; reduced on the device for NCCL)."""
        if not self.enabled:
            return sums
        reduced = sums.to(self.device) if self.device.type == "cuda" else sums
        dist.all_reduce(reduced)
        return reduced.cpu()

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
