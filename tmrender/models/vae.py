"""Causal video autoencoder, stride (4, 8, 8), with a streaming decoder (DESIGN.md issue 4).

TAEHV-like (madebyollin/taehv) and light enough for the tm-mini CPU budget: mostly 2-D
convolutions, few channels at high resolution, causal time mixing by residual "memory"
blocks (each sees its last `temporal_kernel - 1` input frames), time pooling / expansion by
channel <-> time reshapes at the latent resolution, and pixel (un)shuffle at the image end.
Wan convention: the first frame is encoded alone, then groups of `temporal_stride` frames:
`1 + 4k` frames <-> `1 + k` latent frames.

Layout: video and latents are `B, C, T, H, W` everywhere; video is in [-1, 1].

Streaming: `frames, state = vae.decode_step(latents, state)` with `state = None` (or
`vae.init_decode_state(...)`) at the start of a stream; the state is a `DecodeState` holding,
for each causal block, only its last `temporal_kernel - 1` input frames, so its size does not
depend on the length of the stream (cf. Wan's `feat_cache`, Self-Forcing's explicit caches).
Frame `i` depends on its own latent and the ones before it only, so any chunking of a clip
decodes to the same frames. `StreamingDecoder` wraps that in `reset / decode / flush` for
the renderer.

Latent scale: `encode_dist` gives the raw posterior (mean, logvar); `encode` returns the
posterior mean normalised per channel by the config's `latent_mean` / `latent_std` (what
the DiT sees, unit scale), and `decode` / `decode_step` / `StreamingDecoder` take
normalised latents and undo it (`normalise_latent` / `denormalise_latent`). Training
(`tmrender.train.vae`) fits the raw autoencoder, then measures and stores the statistics;
this module holds no loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tmrender.config import VAEConfig
from tmrender.models.vae_layers import (
    CausalMemBlock,
    TimeExpand,
    TimePool,
    Upsample2x,
    conv3x3,
    frames_to_video,
    video_to_frames,
)

LOGVAR_RANGE = (-30.0, 20.0)  # clamp of the posterior log-variance (numerical safety)
DECODER_PREFIX = "dec_"  # state-dict prefix of the decoder: dec_in, dec_layers, dec_out


@dataclass(frozen=True)
class DecodeState:
    """Causal state of a decode stream, passed in and out of `CausalVAE.decode_step`.

    started: False until the stream's first latent frame (which yields 1 frame, later
        latents yield `temporal_stride` frames) has been decoded.
    memory: one tensor per causal block of the decoder (in `CausalVAE.decoder_blocks()`
        order), its last `temporal_kernel - 1` input frames, `B, C_l, P, H_l, W_l`
        (zeros at the start of a stream). Constant size: nothing grows with the stream.
    """

    started: bool
    memory: tuple[Tensor, ...]

    def numel(self) -> int:
        """Total number of elements held (the same after 5 or 5000 steps)."""
        return sum(m.numel() for m in self.memory)


class LatentShapes:
    """Frame counts, shape checks, the per-channel latent scale and the whole-clip
    `decode` / `forward` and the fresh decode state shared by the autoencoders
    (`CausalVAE`, `tmrender.models.wan_vae.WanVAE`); needs `self.cfg`, `encode`,
    `decode_step` and `decoder_memory_shapes`."""

    cfg: VAEConfig

    # ---- shapes -------------------------------------------------------------------------

    def latent_frames(self, frames: int) -> int:
        """Number of latent frames for `frames = 1 + 4k` video frames: `1 + k`."""
        st = self.cfg.temporal_stride
        assert frames >= 1 and (frames - 1) % st == 0, (
            f"video must have 1 + {st}k frames, got {frames}"
        )
        return 1 + (frames - 1) // st

    def _check_video(self, video: Tensor) -> None:
        cfg = self.cfg
        assert video.ndim == 5 and video.shape[1] == cfg.image_channels, (
            f"video must be B, {cfg.image_channels}, T, H, W, got {tuple(video.shape)}"
        )
        self.latent_frames(video.shape[2])
        h, w = video.shape[3:]
        ss = cfg.spatial_stride
        assert h % ss == 0 and w % ss == 0, f"H, W must be multiples of {ss}, got {h}x{w}"

    def _check_latent(self, latent: Tensor) -> None:
        c = self.cfg.latent_channels
        assert latent.ndim == 5 and latent.shape[1] == c, (
            f"latents must be B, {c}, T, h, w, got {tuple(latent.shape)}"
        )

    # ---- latent scale -------------------------------------------------------------------

    def _latent_stats(self, like: Tensor) -> tuple[Tensor, Tensor] | None:
        """Config statistics as `1, C, 1, 1, 1` tensors on `like`'s device and dtype, or
        None when the config has none (identity)."""
        cfg = self.cfg
        if not cfg.latent_mean and not cfg.latent_std:
            return None
        c = cfg.latent_channels
        mean = cfg.latent_mean or (0.0,) * c
        std = cfg.latent_std or (1.0,) * c
        shape = (1, c, 1, 1, 1)
        return (
            torch.tensor(mean, device=like.device, dtype=like.dtype).view(shape),
            torch.tensor(std, device=like.device, dtype=like.dtype).view(shape),
        )

    def normalise_latent(self, raw: Tensor) -> Tensor:
        """Raw latents `B, C, T, h, w` -> unit-scale latents `(raw - mean) / std` per channel."""
        self._check_latent(raw)
        stats = self._latent_stats(raw)
        return raw if stats is None else (raw - stats[0]) / stats[1]

    def denormalise_latent(self, latent: Tensor) -> Tensor:
        """Unit-scale latents `B, C, T, h, w` -> raw latents `latent * std + mean`."""
        self._check_latent(latent)
        stats = self._latent_stats(latent)
        return latent if stats is None else latent * stats[1] + stats[0]

    # ---- streaming ----------------------------------------------------------------------

    def init_decode_state(
        self,
        batch: int,
        latent_height: int,
        latent_width: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> DecodeState:
        """Fresh stream state for latents `batch, C, t, latent_height, latent_width`: zeros,
        one `batch, C_l, P, s latent_height, s latent_width` tensor per causal block of the
        decoder, (C_l, P, s) from `decoder_memory_shapes`."""
        h, w = latent_height, latent_width
        memory = tuple(
            torch.zeros(batch, c, p, h * s, w * s, device=device, dtype=dtype)
            for c, p, s in self.decoder_memory_shapes()
        )
        return DecodeState(started=False, memory=memory)

    def decode(self, latent: Tensor) -> Tensor:
        """Whole clip through `decode_step` from a fresh state. latent (normalised):
        `B, latent_channels, 1 + k, h, w` -> video `B, 3, 1 + 4k, s h, s w` (s the spatial
        stride; unclamped, ~[-1, 1])."""
        self._check_latent(latent)
        assert latent.shape[2] >= 1, "need at least one latent frame"
        return self.decode_step(latent, None)[0]

    def forward(self, video: Tensor) -> Tensor:
        """Reconstruction through the posterior mean. video -> video, both `B, 3, T, H, W`."""
        return self.decode(self.encode(video))


class CausalVAE(LatentShapes, nn.Module):
    """Causal video autoencoder. Video `B, 3, 1 + 4k, H, W` in [-1, 1] <-> latents
    `B, latent_channels, 1 + k, H / 8, W / 8` (for the default strides)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc_pixel = cfg.spatial_stride // 2 ** (len(cfg.enc_channels) - 1)
        self.dec_pixel = cfg.spatial_stride // 2 ** (len(cfg.dec_channels) - 1)
        self.enc_in = conv3x3(cfg.image_channels * self.enc_pixel**2, cfg.enc_channels[0])
        self.enc_layers = nn.ModuleList(_encoder_layers(cfg))
        self.enc_out = conv3x3(cfg.enc_channels[-1], 2 * cfg.latent_channels)
        self.dec_in = conv3x3(cfg.latent_channels, cfg.dec_channels[0])
        layers, scales = _decoder_layers(cfg)
        self.dec_layers = nn.ModuleList(layers)
        self._dec_scales = scales  # input size of each decoder layer, in latent pixels
        self.dec_out = conv3x3(cfg.dec_channels[-1], cfg.image_channels * self.dec_pixel**2)
        self.to(memory_format=torch.channels_last)

    # ---- encoder ------------------------------------------------------------------------

    def encode_dist(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior of the latents. video: `B, 3, 1 + 4k, H, W` in [-1, 1] ->
        (mean, logvar), each `B, latent_channels, 1 + k, H / 8, W / 8`."""
        self._check_video(video)
        b = video.shape[0]
        x = F.relu_(self.enc_in(video_to_frames(video, self.enc_pixel)))
        for layer in self.enc_layers:
            if isinstance(layer, CausalMemBlock):
                x = self._run_fresh(layer, x, b)
            elif isinstance(layer, TimePool):
                x = F.relu_(layer(x, b))
            else:
                x = F.relu_(layer(x))
        mean, logvar = frames_to_video(self.enc_out(x), b).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, video: Tensor) -> Tensor:
        """Normalised posterior mean. video: `B, 3, 1 + 4k, H, W` in [-1, 1] -> latents
        `B, latent_channels, 1 + k, H / 8, W / 8`. Latent `j` depends on frames `<= 4j` only."""
        return self.normalise_latent(self.encode_dist(video)[0])

    @staticmethod
    def _run_fresh(block: CausalMemBlock, x: Tensor, batch: int) -> Tensor:
        """A causal block over a whole clip from a zero past. x: `B * T, C, H, W`."""
        h, w = x.shape[2:]
        past = x.new_zeros(batch, block.channels, block.past_frames, h, w)
        return block(x, batch, past)[0]

    # ---- decoder ------------------------------------------------------------------------

    def decoder_blocks(self) -> list[CausalMemBlock]:
        """The decoder's causal blocks, in the order of `DecodeState.memory`."""
        return [layer for layer in self.dec_layers if isinstance(layer, CausalMemBlock)]

    def decoder_memory_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, past frames, size in latent pixels) of each causal decoder block."""
        return [
            (layer.channels, layer.past_frames, scale)
            for layer, scale in zip(self.dec_layers, self._dec_scales, strict=True)
            if isinstance(layer, CausalMemBlock)
        ]

    def decode_step(
        self, latent: Tensor, state: DecodeState | None = None
    ) -> tuple[Tensor, DecodeState]:
        """Decode the next latent frames of a stream.

        latent: normalised (`encode`'s scale) `B, latent_channels, t, h, w` (any `t >= 0`);
        state: from the previous call, or None / `init_decode_state(...)` at the start.
        Returns frames `B, 3, n, 8h, 8w` (unclamped, ~[-1, 1]), `n = 4t` (`4t - 3` on the
        stream's first call), and the new state. Any chunking of a clip gives the same
        frames as `decode`.
        """
        self._check_latent(latent)
        b, _, t, h, w = latent.shape
        if state is None:
            state = self.init_decode_state(b, h, w, device=latent.device, dtype=latent.dtype)
        frames, memory = self._decode_frames(self.denormalise_latent(latent), state)
        return frames, DecodeState(started=state.started or t > 0, memory=memory)

    def _decode_frames(self, raw: Tensor, state: DecodeState) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The causal decoder on denormalised latents `B, C, t, h, w` -> (frames, new block
        memories)."""
        b, t = raw.shape[0], raw.shape[2]
        blocks = self.decoder_blocks()
        assert len(state.memory) == len(blocks), "state does not belong to this decoder"
        if t == 0:
            _, _, _, h, w = raw.shape
            out_hw = (h * self.cfg.spatial_stride, w * self.cfg.spatial_stride)
            return raw.new_zeros(b, self.cfg.image_channels, 0, *out_hw), state.memory
        memory = iter(state.memory)
        new_memory = []
        x = F.relu_(self.dec_in(video_to_frames(raw)))
        for layer in self.dec_layers:
            if isinstance(layer, CausalMemBlock):
                x, past = layer(x, b, next(memory))
                new_memory.append(past)
            elif isinstance(layer, TimeExpand):
                x = F.relu_(layer(x, b, drop_first=not state.started))
            else:
                x = F.relu_(layer(x))
        return frames_to_video(self.dec_out(x), b, self.dec_pixel), tuple(new_memory)


def _encoder_layers(cfg: VAEConfig) -> list[nn.Module]:
    """Encoder after `enc_in`, fine -> coarse: per level its causal blocks then a stride-2
    conv to the next level; at the coarsest level the time pooling and the latent blocks."""
    past, enc = cfg.temporal_kernel - 1, cfg.enc_channels
    layers: list[nn.Module] = []
    for i, (width, blocks) in enumerate(zip(enc, cfg.enc_blocks, strict=True)):
        layers += [CausalMemBlock(width, past) for _ in range(blocks)]
        if i + 1 < len(enc):
            layers.append(conv3x3(width, enc[i + 1], stride=2))
    layers.append(TimePool(enc[-1], cfg.temporal_stride))
    layers += [CausalMemBlock(enc[-1], past) for _ in range(cfg.enc_latent_blocks)]
    return layers


def _decoder_layers(cfg: VAEConfig) -> tuple[list[nn.Module], tuple[int, ...]]:
    """Decoder after `dec_in`, coarse -> fine: the causal latent blocks, then per level its
    x2 upsample (level > 0) and the time expansion (level `dec_expand_level`). Also returns
    each layer's input size as a multiple of the latent size."""
    past, dec = cfg.temporal_kernel - 1, cfg.dec_channels
    layers: list[nn.Module] = [CausalMemBlock(dec[0], past) for _ in range(cfg.dec_latent_blocks)]
    scales = [1] * len(layers)
    for i, width in enumerate(dec):
        if i > 0:
            layers.append(Upsample2x(dec[i - 1], width))
            scales.append(2 ** (i - 1))
        if i == cfg.dec_expand_level:
            layers.append(TimeExpand(width, cfg.temporal_stride))
            scales.append(2**i)
    return layers, tuple(scales)


class StreamingDecoder:
    """Stateful wrapper for the renderer (cf. taehv's `StreamingTAEHV`).

    `reset()` starts a stream; `decode(latents B, C, t, h, w)` returns the frames those
    latents complete at once, `B, 3, n, H, W` clamped to [-1, 1] (1 frame for the stream's
    first latent, then 4 per latent). `flush()` ends the stream; the decoder holds no
    frame back, so it always returns None, and resets. Runs under `torch.no_grad`, so no
    autograd graph grows with the stream.
    """

    def __init__(self, vae: CausalVAE, clamp: bool = True) -> None:
        self.vae = vae
        self.clamp = clamp
        self.state: DecodeState | None = None

    def reset(self) -> None:
        """Forget the stream; the next `decode` starts a new one."""
        self.state = None

    def decode(self, latent: Tensor) -> Tensor:
        """latent `B, C, t, h, w` -> frames `B, 3, n, 8h, 8w` (see class docstring)."""
        with torch.no_grad():
            frames, self.state = self.vae.decode_step(latent, self.state)
        return frames.clamp_(-1.0, 1.0) if self.clamp else frames

    def flush(self) -> None:
        """End the stream: nothing is held back (None); then reset."""
        self.reset()
