"""Finding and loading models: `--model NAME|PATH`, the default model, installed models.

Weights ship in the repository's `weights/` folder (or a folder named by the
TMRENDER_WEIGHTS environment variable); nothing is ever downloaded. A model file whose
folder has a SHA256SUMS line for it is used only if its SHA-256 matches that line (checked
once per process and file version, see `tmrender.files.sha256_cached`).

Torch and the checkpoint code are imported when a model is looked at, not with this module:
commands import it for their defaults and `--help` stays quick.
"""

from __future__ import annotations

import os
from pathlib import Path

from tmrender.errors import UserInputError
from tmrender.files import verify_checksum

WEIGHTS_ENV = "TMRENDER_WEIGHTS"
DEFAULT_MODEL = "tm-mini"
SUFFIX = ".safetensors"


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


def resolve_model_path(spec: str | Path | None) -> Path:
    """A model file from a path, an installed name, or None for the default model;
    checked against the SHA256SUMS of its folder (`tmrender.files.verify_checksum`)."""
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


def load_model(spec: str | Path | None, device: str = "auto", vae_device: str | None = None):
    """-> (TalkingModel in eval mode on the device, checkpoint metadata with 'path').

    vae_device: put the VAE on another device (score/VAE disaggregation: the renderer then
    hands each latent chunk over to it and decodes there while the DiT goes on)."""
    from tmrender.devices import default_dtype, resolve_device
    from tmrender.models.checkpoint import load_checkpoint

    path = resolve_model_path(spec)
    target = resolve_device(device)
    model, meta = load_checkpoint(path, device=target, dtype=default_dtype(target))
    if vae_device is not None:
        other = resolve_device(vae_device)
        model.vae.to(device=other, dtype=default_dtype(other))
    return model, {**meta, "path": path}
