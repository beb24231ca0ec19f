"""Which device and dtype a command runs on: `--device auto|cpu|cuda|cuda:N`, `--devices`."""

from __future__ import annotations

import torch

from tmrender.errors import UserInputError


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserInputError(f"unknown device {name!r}; use auto, cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda was asked for but no CUDA GPU is available")
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on the CPU (fast enough for tm-mini and exact), bfloat16 on GPUs."""
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def split_devices(devices: str) -> tuple[str, str]:
    """'cuda:0,cuda:1' -> ('cuda:0', 'cuda:1'): the DiT's device, then the VAE's."""
    parts = [p.strip() for p in devices.split(",")]
    if len(parts) != 2 or not all(parts):
        raise UserInputError(
            f"--devices takes two devices, DIT,VAE (e.g. cuda:0,cuda:1); got {devices!r}"
        )
    return parts[0], parts[1]
