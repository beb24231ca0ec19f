"""Finding and loading models: `--model NAME|PATH`, the default model, the device.

Weights ship in the repository's `weights/` folder (or a folder named by the
TMRENDER_WEIGHTS environment variable); nothing is ever downloaded. A model file whose
folder has a SHA256SUMS line for it is used only if its SHA-256 matches that line (checked
once per process and file version, see `tmrender.files.sha256_cached`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tmrender.errors import UserInputError

WEIGHTS_ENV = "TMRENDER_WEIGHTS"
DEFAULT_MODEL = "tm-mini"
SUFFIX = ".safetensors"
SUMS_FILE = "SHA256SUMS"


def weights_dir() -> Path:
    """The folder searched for model names: $TMRENDER_WEIGHTS, else the repo's weights/."""
    override = os.environ.get(WEIGHTS_ENV)
    return Path(override) if override else Path(__file__).resolve().parents[2] / "weights"


def installed_models() -> list[str]:
    """Names of the tmrender checkpoints in weights_dir() (other weights excluded)."""
    from tmrender.models.checkpoint import CheckpointError, read_metadata

    names = []
    for path in sorted(weights_dir().glob(f"*{SUFFIX}")):
        try:
            read_metadata(path)
        except CheckpointError:
            continue
        names.append(path.name[: -len(SUFFIX)])
    return names


def listed_checksum(path: Path) -> str | None:
    """The SHA-256 that the SHA256SUMS beside `path` lists for it (sha256sum format), or
    None when there is no such file or line."""
    sums = path.parent / SUMS_FILE
    if not sums.is_file():
        return None
    for line in sums.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if name.lstrip("*") == path.name:
            return digest.lower()
    return None


def verify_checksum(path: Path) -> None:
    """Refuse (CheckpointError, one line) a file whose SHA-256 differs from its SHA256SUMS
    line; files without a line are not checked."""
    from tmrender.files import sha256_cached
    from tmrender.models.checkpoint import CheckpointError

    expected = listed_checksum(path)
    if expected is not None and sha256_cached(path) != expected:
        raise CheckpointError(
            f"{path} does not match its SHA-256 in {path.parent / SUMS_FILE}: the file is "
            "damaged or was replaced; restore it (git checkout weights/) or, if you replaced "
            "it on purpose, update its line"
        )


def resolve_model_path(spec: str | Path | None) -> Path:
    """A model file from a path, an installed name, or None for the default model;
    checked against the SHA256SUMS of its folder (`verify_checksum`)."""
    path = _find_model(spec)
    verify_checksum(path)
    return path


def _find_model(spec: str | Path | None) -> Path:
    if spec is not None and (Path(spec).suffix == SUFFIX or os.sep in str(spec)):
        path = Path(spec)
        if not path.is_file():
            raise UserInputError(f"model file not found: {path}")
        return path
    name = str(spec) if spec is not None else DEFAULT_MODEL
    path = weights_dir() / f"{name}{SUFFIX}"
    if path.is_file():
        return path
    if spec is None:
        raise UserInputError(
            f"no trained model is installed (looked for {path}); pass --model PATH, "
            "or make an untrained one for testing with `tmrender init --preset tm-mini -o M`"
        )
    available = ", ".join(installed_models()) or "none"
    raise UserInputError(f"unknown model {name!r} (installed: {available}; or give a path)")


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


def load_model(spec: str | Path | None, device: str = "auto", vae_device: str | None = None):
    """-> (TalkingModel in eval mode on the device, checkpoint metadata with 'path').

    vae_device: put the VAE on another device (score/VAE disaggregation: the renderer then
    hands each latent chunk over to it and decodes there while the DiT goes on)."""
    from tmrender.models.checkpoint import load_checkpoint

    path = resolve_model_path(spec)
    target = resolve_device(device)
    model, meta = load_checkpoint(path, device=target, dtype=default_dtype(target))
    if vae_device is not None:
        other = resolve_device(vae_device)
        model.vae.to(device=other, dtype=default_dtype(other))
    return model, {**meta, "path": path}


def split_devices(devices: str) -> tuple[str, str]:
    """'cuda:0,cuda:1' -> ('cuda:0', 'cuda:1'): the DiT's device, then the VAE's."""
    parts = [p.strip() for p in devices.split(",")]
    if len(parts) != 2 or not all(parts):
        raise UserInputError(
            f"--devices takes two devices, DIT,VAE (e.g. cuda:0,cuda:1); got {devices!r}"
        )
    return parts[0], parts[1]
