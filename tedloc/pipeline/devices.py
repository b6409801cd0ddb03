"""Device selection shared by every stage."""

from __future__ import annotations

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
    return torch.device(device)
