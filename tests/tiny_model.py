"""A tiny `ModelConfig` (32 x 32, 4 latent channels, 2-layer DiT) for tests that train or
render whole models in seconds; `tiny_model` gives it weights whose frames vary."""

from __future__ import annotations

import torch

from tmrender.config import (
    AudioEncoderConfig,
    AudioProjConfig,
    DiTConfig,
    ModelConfig,
    SamplerConfig,
    VAEConfig,
)
from tmrender.models.talking import TalkingModel

TINY = ModelConfig(
    name="tiny",
    height=32,
    width=32,
    vae=VAEConfig(
        latent_channels=4, enc_channels=(8, 8, 8), enc_blocks=(0, 0, 0), enc_latent_blocks=0,
        dec_latent_blocks=0, dec_channels=(8, 8, 8),
    ),
    dit=DiTConfig(
        in_dim=12, out_dim=4, dim=32, ffn_dim=64, freq_dim=16, num_heads=2, num_layers=2,
        audio_dim=8, audio_attn_dim=16, audio_num_heads=1,
    ),
    audio_encoder=AudioEncoderConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8,) * 7, num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
        layers=(1,),
    ),
    audio_proj=AudioProjConfig(window=2, tokens=2, hidden_dim=16),
    sampler=SamplerConfig(),
)  # fmt: skip


def tiny_model(seed: int = 0) -> TalkingModel:
    """A TINY model in eval mode whose output head and audio layers are non-zero (a fresh
    Wan-initialised DiT outputs zeros and ignores the audio)."""
    torch.manual_seed(seed)
    model = TalkingModel(TINY).eval()
    with torch.no_grad():
        model.dit.head.head.weight.normal_(0, 0.05)
        for block in model.dit.blocks:
            block.audio_cross_attn.o.weight.normal_(0, 0.5)
    return model
