"""Frozen dataclasses with the dimensions of every network. A checkpoint stores its
`ModelConfig` as JSON in its safetensors metadata, so loading needs nothing else.

Sections: VAE (owned by tmrender/models/vae.py), then the DiT, audio encoder, audio
projection, sampler, and the `ModelConfig` that bundles them.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---- VAE ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig:
    """Causal video autoencoder: stride (4, 8, 8), first frame alone then groups of 4."""

    image_channels: int = 3
    latent_channels: int = 16
    temporal_stride: int = 4
    spatial_stride: int = 8


# ---- DiT, audio encoder, audio projection, sampler, ModelConfig --------------------------
