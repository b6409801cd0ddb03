"""Device selection shared by every stage, and the CPU threads torch uses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from tedloc.errors import ConfigError


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; a CUDA device without CUDA is a ConfigError."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} asked for, but there are {torch.cuda.device_count()} CUDA devices "
                          f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return resolved


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside the block, restored after.

    For small tensor ops running beside other busy processes: an op split over several
    threads waits for the slowest, and a thread another process has preempted is slow.
    """
    previous = torch.get_num_threads()
    if count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
