"""Audio side: Wav2Vec2 encoder, per-latent-frame windows, audio projection, silence.

    wav (B, n) 16 kHz --AudioEncoder--> features (B, F, L, D)   F video frames (25 fps)
        --audio_windows--> (B, T_lat, 4 + 2w, L, D)             own 4 frames +- w frames
        --AudioProjection--> tokens (B, T_lat, N, audio_dim)    what the DiT attends to
    SilenceEmbedding replaces the tokens of silent latent frames.

The encoder is `transformers.Wav2Vec2Model`, built from an `AudioEncoderConfig` (never a
hub download) or loaded from a local wav2vec2 directory through the same class
(`AudioEncoder.from_pretrained`). 50 Hz -> 25 fps: the input is padded on the right by
`receptive_field - total_stride` samples (80 for wav2vec2) so that exactly 2 features fall in
each video frame's 640 samples, and those 2 are averaged — exact, no interpolation, and the
same whether the audio is encoded whole or in frame-aligned windows (up to the
transformer's context).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from tmrender.config import MOUTH_PARAMS, AudioEncoderConfig, AudioProjConfig

# Structural fields copied between AudioEncoderConfig and Wav2Vec2Config (same names).
_HF_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "layer_norm_eps",
    "do_stable_layer_norm",
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
)
# Inference-time settings forced on every encoder: no dropout, no LayerDrop, no SpecAugment.
_HF_QUIET = dict(
    hidden_dropout=0.0,
    activation_dropout=0.0,
    attention_dropout=0.0,
    feat_proj_dropout=0.0,
    final_dropout=0.0,
    layerdrop=0.0,
    mask_time_prob=0.0,
    mask_feature_prob=0.0,
)


def hf_config(cfg: AudioEncoderConfig) -> Wav2Vec2Config:
    """The Wav2Vec2Config of an AudioEncoderConfig."""
    kwargs = {name: getattr(cfg, name) for name in _HF_FIELDS}
    return Wav2Vec2Config(**kwargs, **_HF_QUIET)


def encoder_config_from_hf(
    hf: Wav2Vec2Config, layers: tuple[int, ...], normalize_input: bool
) -> AudioEncoderConfig:
    """An AudioEncoderConfig describing an existing Wav2Vec2Config."""
    kwargs = {name: getattr(hf, name) for name in _HF_FIELDS}
    return AudioEncoderConfig(**kwargs, layers=layers, normalize_input=normalize_input)


class AudioEncoder(nn.Module):
    """Wav2Vec2 -> per-video-frame features. `samples_per_frame` = sample_rate / fps (640)."""

    def __init__(
        self, cfg: AudioEncoderConfig, samples_per_frame: int, model: Wav2Vec2Model | None = None
    ) -> None:
        super().__init__()
        assert samples_per_frame % cfg.total_stride == 0, "features must tile frames exactly"
        self.cfg = cfg
        self.samples_per_frame = samples_per_frame
        self.wav2vec2 = model if model is not None else Wav2Vec2Model(hf_config(cfg))

    @classmethod
    def from_pretrained(
        cls,
        local_dir: str | Path,
        samples_per_frame: int,
        layers: tuple[int, ...] | None = None,
        normalize_input: bool = False,
    ) -> AudioEncoder:
        """Load a wav2vec2 directory from disk (`local_files_only`, never the hub).

        layers: hidden states to take (default: every transformer layer, 1..N)."""
        model = Wav2Vec2Model.from_pretrained(str(local_dir), local_files_only=True, **_HF_QUIET)
        hf = model.config
        chosen = layers if layers is not None else tuple(range(1, hf.num_hidden_layers + 1))
        return cls(encoder_config_from_hf(hf, chosen, normalize_input), samples_per_frame, model)

    def frames(self, samples: int) -> int:
        """Video frames covered by `samples` audio samples (the last one zero-padded)."""
        return -(-samples // self.samples_per_frame)

    def forward(self, wav: Tensor) -> Tensor:
        """wav (B, n) mono float at cfg.sample_rate -> features (B, F, L, D) float32,
        F = ceil(n / samples_per_frame), L = len(cfg.layers), D = hidden_size."""
        assert wav.ndim == 2, f"wav must be (B, samples), got {tuple(wav.shape)}"
        cfg = self.cfg
        frames = self.frames(wav.shape[1])
        wav = F.pad(wav.float(), (0, frames * self.samples_per_frame - wav.shape[1]))
        if cfg.normalize_input:
            wav = (wav - wav.mean(1, keepdim=True)) / (wav.std(1, keepdim=True) + 1e-7)
        wav = F.pad(wav, (0, cfg.receptive_field - cfg.total_stride))
        dtype = next(self.wav2vec2.parameters()).dtype
        out = self.wav2vec2(wav.to(dtype), output_hidden_states=True)
        hidden = torch.stack([out.hidden_states[i] for i in cfg.layers], dim=2)
        per_frame = self.samples_per_frame // cfg.total_stride
        assert hidden.shape[1] == frames * per_frame, "unexpected wav2vec2 output length"
        return hidden.unflatten(1, (frames, per_frame)).mean(2).float()


def audio_windows(
    features: Tensor,
    window: int,
    frames_per_latent: int,
    pad: Literal["edge", "zero", "none"] = "edge",
) -> Tensor:
    """Per-latent-frame audio windows.

    features (B, F, L, D), frame 0 = the first video frame of latent frame 0 -> (B, T_lat,
    frames_per_latent + 2 * window, L, D): latent j sees frames [j*fpl - window, (j+1)*fpl +
    window). pad "edge"/"zero": T_lat = ceil(F / fpl), missing frames repeat the edge frame
    or are zero. pad "none" (streaming): the caller includes `window` frames of context on
    each side, F = T_lat * fpl + 2 * window.
    """
    assert features.ndim == 4, f"features must be (B, F, L, D), got {tuple(features.shape)}"
    b, f = features.shape[:2]
    if pad == "none":
        assert f > 2 * window and (f - 2 * window) % frames_per_latent == 0, (
            f"{f} frames is not T * {frames_per_latent} + 2 * {window}"
        )
        latents, padded = (f - 2 * window) // frames_per_latent, features
    else:
        latents = -(-f // frames_per_latent)
        right = window + latents * frames_per_latent - f
        if pad == "edge":
            idx = torch.arange(-window, f + right, device=features.device).clamp(0, f - 1)
            padded = features[:, idx]
        else:
            padded = F.pad(features, (0, 0, 0, 0, window, right))
    width = frames_per_latent + 2 * window
    idx = torch.arange(latents, device=features.device)[:, None] * frames_per_latent
    idx = idx + torch.arange(width, device=features.device)[None]
    return padded[:, idx]


class MouthHead(nn.Module):
    """Encoder features (B, F, L, D) -> the 7 mouth parameters per frame (B, F, 7), through
    one temporal convolution of width 2 * context + 1. Trained with the encoder by the
    audio stage (which adds a phoneme readout)."""

    def __init__(self, feature_dim: int, hidden: int = 128, context: int = 1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.conv = nn.Conv1d(feature_dim, hidden, 2 * context + 1, padding=context)
        self.mouth = nn.Linear(hidden, MOUTH_PARAMS)

    def hidden(self, features: Tensor) -> Tensor:
        """features (B, F, L, D) -> the shared hidden layer (B, F, hidden)."""
        assert features.ndim == 4, f"features must be (B, F, L, D), got {tuple(features.shape)}"
        x = self.norm(features.flatten(2).to(self.norm.weight.dtype))
        return F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)

    def forward(self, features: Tensor) -> Tensor:
        return self.mouth(self.hidden(features))


class AudioProjection(nn.Module):
    """Audio windows (B, T, W, L, D) -> audio tokens (B, T, N, out_dim).

    MLP over the flattened window (MultiTalk/Hallo-style), then N tokens, LayerNorm'd."""

    def __init__(
        self, cfg: AudioProjConfig, window_frames: int, feature_dim: int, out_dim: int
    ) -> None:
        super().__init__()
        self.tokens, self.out_dim = cfg.tokens, out_dim
        self.in_features = window_frames * feature_dim
        self.proj = nn.Sequential(
            nn.Linear(self.in_features, cfg.hidden_dim),
            nn.GELU(),
            nn.Linear(cfg.hidden_dim, cfg.hidden_dim),
            nn.GELU(),
            nn.Linear(cfg.hidden_dim, cfg.tokens * out_dim),
        )
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, windows: Tensor) -> Tensor:
        assert windows.ndim == 5, f"windows must be (B, T, W, L, D), got {tuple(windows.shape)}"
        flat = windows.flatten(2)
        assert flat.shape[2] == self.in_features, (
            f"window size {flat.shape[2]} != {self.in_features}"
        )
        tokens = self.proj(flat.to(self.norm.weight.dtype))
        return self.norm(tokens.unflatten(-1, (self.tokens, self.out_dim)))


class SilenceEmbedding(nn.Module):
    """Learned audio tokens (N, dim) used instead of the projected audio in silence mode."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(tokens, dim) * 0.02)

    def expand(self, batch: int, frames: int) -> Tensor:
        """-> (batch, frames, N, dim)."""
        return self.embedding.expand(batch, frames, *self.embedding.shape)

    def mix(self, tokens: Tensor, speaking: Tensor) -> Tensor:
        """tokens (B, T, N, dim), speaking (B,) or (B, T) bool -> silent frames replaced."""
        b, t = tokens.shape[:2]
        keep = speaking if speaking.ndim == 2 else speaking[:, None].expand(b, t)
        assert keep.shape == (b, t), f"speaking must be (B,) or (B, T) = ({b}, {t})"
        return torch.where(keep[..., None, None], tokens, self.expand(b, t).to(tokens.dtype))
