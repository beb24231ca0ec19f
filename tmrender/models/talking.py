"""The bundle of networks of one model: `TalkingModel(ModelConfig)`.

Holds `vae` (CausalVAE, or WanVAE when `cfg.vae.kind == "wan"`), `dit` (WanDiT),
`audio_encoder` (Wav2Vec2), `audio_proj` and `silence`, and for converted Wan models the
conditioning encoders `image_encoder` (CLIP) and `text_encoder` (umT5) when the config
names them (None otherwise; see `tmrender.models.conditioning`); their state-dict prefixes
are the checkpoint's (`vae.`, `dit.`, ...). The renderer drives the parts directly (see
`tmrender.models.dit` for the streaming API); `audio_tokens` is the one convenience that
joins the audio parts:

    feats = model.audio_encoder(wav)                                  # (B, F, L, D)
    wins = audio_windows(feats, cfg.audio_proj.window, cfg.frames_per_latent)
    tokens = model.audio_tokens(wins[:, j:j + C], speaking)           # (B, C, N, audio_dim)
    v = model.dit.forward_chunk(x_t, t, tokens, state)
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from tmrender.config import ModelConfig
from tmrender.models.audio import AudioEncoder, AudioProjection, SilenceEmbedding
from tmrender.models.conditioning import ImageEncoder, TextEncoder
from tmrender.models.dit import WanDiT
from tmrender.models.vae import CausalVAE
from tmrender.models.wan_vae import WanVAE


class TalkingModel(nn.Module):
    def __init__(self, cfg: ModelConfig, dit: WanDiT | None = None) -> None:
        """`dit`: a DiT built elsewhere (e.g. materialised on a GPU from the meta device,
        see `tmrender.models.init.build_random_model`); None builds one here."""
        super().__init__()
        self.cfg = cfg
        self.vae = WanVAE(cfg.vae) if cfg.vae.kind == "wan" else CausalVAE(cfg.vae)
        self.dit = WanDiT(cfg.dit, cfg.chunk_latent_frames) if dit is None else dit
        self.audio_encoder = AudioEncoder(cfg.audio_encoder, cfg.samples_per_frame)
        self.audio_proj = AudioProjection(
            cfg.audio_proj, cfg.audio_window_frames, cfg.audio_feature_dim, cfg.dit.audio_dim
        )
        self.silence = SilenceEmbedding(cfg.audio_proj.tokens, cfg.dit.audio_dim)
        image, text = cfg.image_encoder, cfg.text_encoder
        self.image_encoder = ImageEncoder(image) if image is not None else None
        self.text_encoder = TextEncoder(text, cfg.dit.text_len) if text is not None else None

    def set_chunk_latent_frames(self, latents: int) -> None:
        """Render `latents` latent frames per autoregressive chunk from now on (the config
        and the DiT's window agree). The networks do not depend on it: a student distilled
        on one chunk length runs on another, which `train export --chunk-latents` measures."""
        self.cfg = replace(self.cfg, chunk_latent_frames=latents)
        self.dit.chunk_frames = latents

    def audio_tokens(self, windows: Tensor, speaking: Tensor | None = None) -> Tensor:
        """windows (B, T, W, L, D) from `audio_windows` -> tokens (B, T, N, audio_dim);
        `speaking` (B,) or (B, T) bool puts the silence embedding where False. For a chunk
        that is silent throughout, `silence.expand(B, T)` skips the projection."""
        tokens = self.audio_proj(windows)
        return tokens if speaking is None else self.silence.mix(tokens, speaking)
