"""Model size presets, one registry (DiT's `DiT_models` style): `PRESETS[name]` is a
`ModelConfig`; build with `TalkingModel(PRESETS[name])`.

- `tm-mini`: the shipped CPU model, 128x128 at 25 fps, latent 8 x 32 x 32 (stride-4 VAE),
  patch (1, 4, 4) -> 64 tokens per latent frame, a tiny wav2vec2 (narrow convolutions).
  Sized so that the DiT share of a render (2 student steps + 1 cache refresh per chunk)
  stays small on a 2-core CPU (timings: docs/).
- `wan2.1-1.3b-audio`: the dimensions of Wan2.1 T2V-1.3B with Wan's I2V input channels
  (in_dim 36 = 16 noise + 4 mask + 16 reference latent), no CLIP branch, + audio layers.
- `wan2.1-14b-audio`: Wan2.1 I2V-14B (CLIP `img_emb`, 257 image tokens of width 1280,
  k_img / v_img / norm_k_img in every block) + audio layers; about 1.2B audio parameters
  (audio cross-attention in all 40 blocks + projection), ~17.6B for the DiT side as the
  paper's "18B". Build it on `torch.device("meta")` unless you have the memory.

Both Wan presets use wav2vec2-base dimensions for the audio encoder (all 12 layers) and
tm-mini's light VAE, so that `tmrender bench` measures the DiT; a checkpoint converted from
a Wan2.1 release (`tmrender convert`) carries the real Wan VAE and CLIP/umT5 encoders.
"""

from __future__ import annotations

from dataclasses import replace

from tmrender.config import (
    AudioEncoderConfig,
    AudioProjConfig,
    DiTConfig,
    ModelConfig,
    SamplerConfig,
    VAEConfig,
    require,
)

# Wan2.1 dimensions shared by both Wan presets (wan/configs/*.py, shared_config.py).
_WAN_COMMON = dict(
    patch_size=(1, 2, 2),
    in_dim=36,
    out_dim=16,
    freq_dim=256,
    text_len=512,
    text_dim=4096,
    qk_norm=True,
    cross_attn_norm=True,
    eps=1e-6,
)
_WAV2VEC2_BASE_LAYERS = 12
_WAV2VEC2_BASE = AudioEncoderConfig(
    hidden_size=768,
    num_hidden_layers=_WAV2VEC2_BASE_LAYERS,
    num_attention_heads=12,
    intermediate_size=3072,
    conv_dim=(512,) * 7,
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    layers=tuple(range(1, _WAV2VEC2_BASE_LAYERS + 1)),
)
_WAN_SAMPLER = SamplerConfig(shift=5.0, cfg_scale=4.5)

_TM_MINI_STRIDE8 = ModelConfig(  # the first tm-mini; its VAE could not carry the mouth
    name="tm-mini",
    height=128,
    width=128,
    chunk_latent_frames=2,
    vae=VAEConfig(),
    dit=DiTConfig(
        dim=128,
        ffn_dim=384,
        freq_dim=64,
        num_heads=2,
        num_layers=4,
        text_len=0,
        audio_dim=64,
        audio_attn_dim=64,
        audio_num_heads=1,
    ),
    audio_encoder=AudioEncoderConfig(),
    audio_proj=AudioProjConfig(window=2, tokens=8, hidden_dim=256),
    sampler=SamplerConfig(shift=3.0, cfg_scale=2.0, deflicker_taps=(1, 2, 2, 2, 1)),
)

WAN_1_3B_AUDIO = ModelConfig(
    name="wan2.1-1.3b-audio",
    height=512,
    width=512,
    chunk_latent_frames=3,
    dit=DiTConfig(
        **_WAN_COMMON,
        dim=1536,
        ffn_dim=8960,
        num_heads=12,
        num_layers=30,
        audio_dim=768,
        audio_attn_dim=768,
        audio_num_heads=6,
    ),
    audio_encoder=_WAV2VEC2_BASE,
    audio_proj=AudioProjConfig(window=2, tokens=32, hidden_dim=512),
    sampler=_WAN_SAMPLER,
)

WAN_14B_AUDIO = ModelConfig(
    name="wan2.1-14b-audio",
    height=512,
    width=512,
    chunk_latent_frames=3,
    dit=DiTConfig(
        **_WAN_COMMON,
        dim=5120,
        ffn_dim=13824,
        num_heads=40,
        num_layers=40,
        image_embedding=True,
        image_tokens=257,
        image_dim=1280,
        audio_dim=1024,
        audio_attn_dim=2048,
        audio_num_heads=16,
    ),
    audio_encoder=_WAV2VEC2_BASE,
    audio_proj=AudioProjConfig(window=2, tokens=32, hidden_dim=2048),
    sampler=_WAN_SAMPLER,
)


def tm_mini_variant(
    latent_channels: int = 8, spatial_stride: int = 4, temporal_stride: int = 4
) -> ModelConfig:
    """tm-mini with another VAE (the VAE stage's experiments); the defaults give TM_MINI.

    The DiT's input/output channels follow the latent (Wan I2V: noise | mask | reference).
    Stride 8 is the first tm-mini's three-level VAE with a (1, 2, 2) DiT patch; stride 4
    drops its coarsest level and doubles the patch to (1, 4, 4), so the DiT keeps its 64
    tokens per latent frame and its speed, while a latent cell covers 4x4 pixels instead
    of 8x8 (the ~13-px mouth spans ~3 latent rows instead of ~2). The levels kept have the
    same widths at the same resolutions. Temporal stride 2 (a latent frame per 2 video
    frames instead of 4) keeps 8 video frames per chunk, so the DiT reads twice the tokens
    per second of video."""
    require(spatial_stride in (4, 8), f"spatial_stride must be 4 or 8, got {spatial_stride}")
    require(temporal_stride in (2, 4), f"temporal_stride must be 2 or 4, got {temporal_stride}")
    first = _TM_MINI_STRIDE8
    levels = 3 if spatial_stride == 8 else 2
    vae = replace(
        first.vae,
        latent_channels=latent_channels,
        spatial_stride=spatial_stride,
        enc_channels=first.vae.enc_channels[:levels],  # fine -> coarse: keep the fine ones
        enc_blocks=first.vae.enc_blocks[:levels],
        dec_channels=first.vae.dec_channels[-levels:],  # coarse -> fine: keep the fine ones
        dec_expand_level=min(first.vae.dec_expand_level, levels - 1),
        temporal_stride=temporal_stride,
    )
    patch = first.dit.patch_size[1] * first.vae.spatial_stride // spatial_stride
    dit = replace(
        first.dit,
        out_dim=latent_channels,
        in_dim=2 * latent_channels + temporal_stride,  # + the I2V mask, a channel per frame
        patch_size=(1, patch, patch),
    )
    chunk = first.chunk_latent_frames * first.vae.temporal_stride // temporal_stride
    return replace(first, vae=vae, dit=dit, chunk_latent_frames=chunk)


# Stride-4 VAE with 8 latent channels: at equal steps of the VAE stage it carried the mouth
# far better than the stride-8 16-channel VAE (docs/EXPERIMENTS.md), and it decodes faster
# (2 levels).
TM_MINI = tm_mini_variant()


PRESETS: dict[str, ModelConfig] = {c.name: c for c in (TM_MINI, WAN_1_3B_AUDIO, WAN_14B_AUDIO)}
