"""Randomly initialised checkpoints of a preset (`tmrender init`), marked untrained."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tmrender.config import ModelConfig
from tmrender.errors import UserInputError
from tmrender.files import atomic_write
from tmrender.models.checkpoint import save_checkpoint
from tmrender.models.dit import WanDiT
from tmrender.models.presets import PRESETS
from tmrender.models.talking import TalkingModel

MEMORY_FRACTION = 0.6  # refuse to build a model larger than this share of free memory


def preset_config(name: str):
    """The ModelConfig of a preset; UserInputError naming the presets for an unknown one."""
    if name not in PRESETS:
        raise UserInputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def parameter_count(name: str) -> int:
    """Parameters of a preset, counted on the meta device (no memory used)."""
    with torch.device("meta"):
        model = TalkingModel(preset_config(name))
    return sum(p.numel() for p in model.parameters())


def build_random_model(
    cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> TalkingModel:
    """A model with random weights whose DiT is built directly on `device` in `dtype`.

    The DiT is created on the meta device, cast, materialised on the device and
    initialised there (`reset_parameters` of every module, then Wan's `init_weights`), so a
    14B-parameter DiT never exists as a float32 copy, on the host or the GPU. The small
    networks (VAE, audio encoder, projection) are initialised on the CPU and moved.
    Returns the model in eval mode on `device`."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        dit = WanDiT(cfg.dit, cfg.chunk_latent_frames)
    dit = dit.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for module in dit.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        dit.init_weights()
    model = TalkingModel(cfg, dit=dit)
    return model.to(device=device, dtype=dtype).eval()


def init_checkpoint(name: str, output: Path | str, seed: int = 0) -> int:
    """Build a preset with random weights (seeded) and save it; returns its parameter count.

    The file is written under a temporary name and renamed when complete."""
    output = Path(output)
    count = parameter_count(name)
    needed = count * 4 * 2  # fp32 weights, plus the copy made while saving
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > MEMORY_FRACTION * available:
        raise UserInputError(
            f"{name} has {count / 1e9:.1f}B parameters and needs ~{needed / 2**30:.0f} GiB to "
            f"initialise; this machine has {available / 2**30:.0f} GiB free"
        )
    if not output.parent.is_dir():
        raise UserInputError(f"output folder does not exist: {output.parent}")
    torch.manual_seed(seed)
    model = TalkingModel(preset_config(name))
    try:
        with atomic_write(output) as partial:
            save_checkpoint(
                model, partial, trained=False, extra_meta={"preset": name, "seed": seed}
            )
    except OSError as err:
        raise UserInputError(f"cannot write {output}: {err.strerror}") from err
    return count
