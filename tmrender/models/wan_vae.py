"""Wan2.1's causal 3-D convolutional VAE, with the state-dict names of `Wan2.1_VAE.pth`.

Architecture of Wan2.1 (wan/modules/vae.py, `WanVAE_`), rebuilt here with an explicit
causal state instead of Wan's mutable `feat_cache` list:

    encoder.conv1 -> encoder.downsamples.N (ResidualBlock | Resample) -> encoder.middle
        (ResidualBlock, AttentionBlock, ResidualBlock) -> encoder.head (RMS_norm, SiLU, conv)
    conv1 (1x1x1 on mean|logvar)       conv2 (1x1x1 on the latent)
    decoder.conv1 -> decoder.middle -> decoder.upsamples.N -> decoder.head

Every `CausalConv3d` with a temporal kernel of 3 sees its input frame and the two before it
(zeros before the start of the clip). Wan runs the encoder on chunks of 1, 4, 4, ... frames
and the decoder on one latent frame at a time, carrying the last 2 input frames of each such
convolution; that equals one causal convolution over the whole clip, which is what `encode`
and `decode` do here. The time resamplers are the two exceptions Wan builds into its cache:
- `downsample3d` (encoder): frame 0 passes untouched, then a stride-2 convolution over
  frames (2j-2, 2j-1, 2j) makes output frame j.
- `upsample3d` (decoder): frame 0 passes untouched (1 frame); every later frame goes through
  a causal convolution (its own history, which starts at zeros after frame 0) to 2x the
  channels, split into 2 consecutive frames. So `1 + k` latents -> `1 + 4k` frames.

Streaming: `frames, state = vae.decode_step(latents, state)`; the `DecodeState` holds, for
each causal convolution of the decoder, its last 2 input frames (`B, C, 2, h, w`), so its size
is constant and any chunking of a clip gives the frames of `decode` (up to float rounding).
`tmrender.models.vae.StreamingDecoder` drives it like the mini VAE.

Layout: video `B, 3, T, H, W` in [-1, 1]; latents `B, z_dim, T, H / 8, W / 8`, normalised per
channel with the config's `latent_mean` / `latent_std` (Wan's `scale = [mean, 1 / std]`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tmrender.config import VAEConfig
from tmrender.models.vae import LOGVAR_RANGE, DecodeState, LatentShapes

CAUSAL_PAST = 2  # input frames a temporal-kernel-3 convolution keeps (Wan's CACHE_T)

# Wan2.1's per-channel latent statistics (`WanVAE.mean` / `WanVAE.std`, also the defaults
# of diffusers' AutoencoderKLWan `latents_mean` / `latents_std`).
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
WAN21_VAE = VAEConfig(kind="wan", latent_mean=WAN21_LATENT_MEAN, latent_std=WAN21_LATENT_STD)


class Pasts:
    """The past input frames of the causal convolutions of one pass, in call order.

    `given`: the stored pasts (None: start of a clip, zeros); `new` collects the pasts after
    this pass, in the same order, for the next `DecodeState`."""

    def __init__(self, given: tuple[Tensor, ...] | None) -> None:
        self._given: Iterator[Tensor] | None = None if given is None else iter(given)
        self.new: list[Tensor] = []

    def run(self, conv: CausalConv3d, x: Tensor) -> Tensor:
        """Apply `conv` to `x` (`B, C, T, H, W`) after its stored past; record the new one."""
        if conv.past_frames == 0:
            return conv(x, None)[0]
        past = None if self._given is None else next(self._given)
        y, past = conv(x, past)
        self.new.append(past)
        return y


def frames_apply(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a per-image module to every frame: `B, C, T, H, W` -> `B, C', T, H', W'`."""
    b, _, t = x.shape[:3]
    y = module(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, t)).transpose(1, 2)


class CausalConv3d(nn.Conv3d):
    """Wan's causal 3-D convolution: `padding` (pt, ph, pw) pads space on both sides and
    time with `2 * pt` frames of the past only (zeros at the start of a clip)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        super().__init__(c_in, c_out, kernel, stride=stride)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.past_frames = 2 * pt
        self.spatial_padding = (pw, pw, ph, ph)

    def forward(self, x: Tensor, past: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """x `B, C, T, H, W`, past `B, C, past_frames, H, W` or None (zeros) -> (y, new
        past: the last `past_frames` frames of [past | x]; None when past_frames == 0)."""
        assert x.ndim == 5, f"expected B, C, T, H, W, got {tuple(x.shape)}"
        p = self.past_frames
        if p == 0:
            return super().forward(F.pad(x, self.spatial_padding)), None
        if past is None:
            past = x.new_zeros(*x.shape[:2], p, *x.shape[3:])
        if x.shape[2] == 0:
            h, w = x.shape[3:]
            return x.new_zeros(x.shape[0], self.out_channels, 0, h, w), past
        full = torch.cat((past.to(x.dtype), x), dim=2)
        y = super().forward(F.pad(full, self.spatial_padding))
        return y, full[:, :, -p:].clone()


class RMSNorm(nn.Module):
    """Wan's `RMS_norm` over channels (dim 1): `normalize(x) * sqrt(C) * gamma`; gamma is
    `C, 1, 1, 1` for video (`images=False`) or `C, 1, 1` for images."""

    def __init__(self, dim: int, images: bool) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: Tensor) -> Tensor:
        """x `B, C, ...` -> same shape."""
        return F.normalize(x.float(), dim=1).to(x.dtype) * self.scale * self.gamma


class Upsample(nn.Upsample):
    """Nearest-exact x2 upsampling computed in float32 (Wan's `Upsample`). x `N, C, H, W`."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type_as(x)


class ResidualBlock(nn.Module):
    """`x -> shortcut(x) + conv(silu(norm(conv(silu(norm(x))))))`, Wan's `residual` indices
    0 (norm), 2 (conv), 3 (norm), 6 (conv); `shortcut` is a 1x1x1 conv when widths differ."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(c_in, images=False),
            nn.SiLU(),
            CausalConv3d(c_in, c_out, 3, padding=1),
            RMSNorm(c_out, images=False),
            nn.SiLU(),
            nn.Identity(),  # Wan's dropout (0 at inference)
            CausalConv3d(c_out, c_out, 3, padding=1),
        )
        self.shortcut = CausalConv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, pasts: Pasts) -> Tensor:
        """x `B, C_in, T, H, W` -> `B, C_out, T, H, W`."""
        h = pasts.run(self.shortcut, x) if isinstance(self.shortcut, CausalConv3d) else x
        r = self.residual
        y = pasts.run(r[2], F.silu(r[0](x)))
        y = pasts.run(r[6], F.silu(r[3](y)))
        return y + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no time mixing)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, pasts: Pasts | None = None) -> Tensor:
        """x `B, C, T, H, W` -> same shape."""
        return x + frames_apply(self._attend, x)

    def _attend(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(n, 1, 3 * c, h * w).transpose(2, 3)
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)  # n, 1, hw, c
        return self.proj(out.squeeze(1).transpose(1, 2).reshape(n, c, h, w))


class Resample(nn.Module):
    """Wan's `Resample`: x2 spatial down/upsampling per frame (`resample`), and for the 3-D
    modes a time convolution (`time_conv`, see the module docstring)."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(
                Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                nn.Conv2d(dim, dim // 2, 3, padding=1),
            )
        elif mode.startswith("downsample"):
            self.resample = nn.Sequential(
                nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2))
            )
        else:
            raise ValueError(f"unknown resample mode {mode!r}")
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: Tensor, pasts: Pasts, first: bool = True) -> Tensor:
        """x `B, C, T, H, W`; `first`: x starts the clip (frame 0 skips the time conv).
        Down: whole clips only, `1 + 2k` -> `1 + k` frames for 3-D; up: `T` -> `2T` frames
        (`2T - 1` when `first`) at twice the size, `C / 2` channels."""
        if self.mode == "upsample3d":
            x = self._time_upsample(x, pasts, first)
        x = frames_apply(self.resample, x)
        if self.mode == "downsample3d":
            assert first, "the encoder runs on whole clips"
            if x.shape[2] > 1:
                x = torch.cat((x[:, :, :1], self.time_conv(x, None)[0]), dim=2)
        return x

    def _time_upsample(self, x: Tensor, pasts: Pasts, first: bool) -> Tensor:
        head = x[:, :, :1] if first else x[:, :, :0]
        rest = x[:, :, 1:] if first else x
        b, c, t, h, w = rest.shape
        y = pasts.run(self.time_conv, rest)  # B, 2C, T, H, W: 2 frames per input frame
        y = y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        return torch.cat((head, y), dim=2)


def _run_layer(layer: nn.Module, x: Tensor, pasts: Pasts, first: bool) -> Tensor:
    if isinstance(layer, Resample):
        return layer(x, pasts, first)
    return layer(x, pasts)


class Head(nn.Sequential):
    """Wan's output head: RMS_norm, SiLU, causal 3x3x3 conv (indices 0, 1, 2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            RMSNorm(c_in, images=False), nn.SiLU(), CausalConv3d(c_in, c_out, 3, padding=1)
        )

    def forward(self, x: Tensor, pasts: Pasts) -> Tensor:  # type: ignore[override]
        return pasts.run(self[2], F.silu(self[0](x)))


def _middle(dim: int) -> nn.ModuleList:
    return nn.ModuleList([ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim)])


class Encoder3d(nn.Module):
    """Video `B, 3, 1 + 4k, H, W` -> `B, 2 z_dim, 1 + k, H / 8, W / 8` (Wan's `Encoder3d`)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(cfg.image_channels, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        levels = len(cfg.dim_mult)
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(c_in, c_out))
                c_in = c_out
            if i != levels - 1:
                mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
                layers.append(Resample(c_out, mode))
        self.downsamples = nn.Sequential(*layers)
        self.middle = _middle(dims[-1])
        self.head = Head(dims[-1], 2 * cfg.latent_channels)

    def forward(self, x: Tensor) -> Tensor:
        pasts = Pasts(None)
        x = pasts.run(self.conv1, x)
        for layer in [*self.downsamples, *self.middle]:
            x = _run_layer(layer, x, pasts, True)
        return self.head(x, pasts)


class Decoder3d(nn.Module):
    """Latents `B, z_dim, t, h, w` -> video `B, 3, 4t (- 3 when first), 8h, 8w`."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.base_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_upsample = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.latent_channels, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if i > 0:
                c_in //= 2  # the previous upsample halved the width
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(c_in, c_out))
                c_in = c_out
            if i != len(mult) - 1:
                mode = "upsample3d" if temporal_upsample[i] else "upsample2d"
                layers.append(Resample(c_out, mode))
        self.upsamples = nn.Sequential(*layers)
        self.head = Head(dims[-1], cfg.image_channels)

    def forward(self, z: Tensor, pasts: Pasts, first: bool) -> Tensor:
        x = pasts.run(self.conv1, z)
        for layer in [*self.middle, *self.upsamples]:
            x = _run_layer(layer, x, pasts, first)
        return self.head(x, pasts)

    def past_shapes(self) -> list[tuple[int, int]]:
        """(channels, spatial scale vs the latent) of each stateful convolution, in the
        order `forward` meets them (the layout of `DecodeState.memory`)."""
        shapes: list[tuple[int, int]] = []
        scale = 1

        def add(conv: nn.Module) -> None:
            if isinstance(conv, CausalConv3d) and conv.past_frames:
                shapes.append((conv.in_channels, scale))

        add(self.conv1)
        for layer in [*self.middle, *self.upsamples]:
            if isinstance(layer, ResidualBlock):
                add(layer.residual[2])
                add(layer.residual[6])
            elif isinstance(layer, Resample):
                if hasattr(layer, "time_conv"):
                    add(layer.time_conv)
                scale *= 2
        add(self.head[2])
        return shapes


class WanVAE(LatentShapes, nn.Module):
    """Wan2.1 VAE. Video `B, 3, 1 + 4k, H, W` in [-1, 1] <-> normalised latents
    `B, z_dim, 1 + k, H / 8, W / 8`. Same public API as `tmrender.models.vae.CausalVAE`."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        assert cfg.kind == "wan", f"WanVAE needs a VAEConfig of kind 'wan', got {cfg.kind!r}"
        self.cfg = cfg
        z = cfg.latent_channels
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)
        self.conv2 = CausalConv3d(z, z, 1)
        self.decoder = Decoder3d(cfg)

    # ---- encoder ------------------------------------------------------------------------

    def encode_dist(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Raw posterior. video `B, 3, 1 + 4k, H, W` in [-1, 1] -> (mean, logvar), each
        `B, z_dim, 1 + k, H / 8, W / 8`; logvar clamped to LOGVAR_RANGE."""
        self._check_video(video)
        moments = self.conv1(self.encoder(video), None)[0]
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, video: Tensor) -> Tensor:
        """video `B, 3, 1 + 4k, H, W` -> normalised posterior mean `B, z_dim, 1 + k, h, w`."""
        return self.normalise_latent(self.encode_dist(video)[0])

    # ---- decoder ------------------------------------------------------------------------

    def decoder_memory_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, past frames, size in latent pixels) of each causal convolution of the
        decoder, in `DecodeState.memory` order."""
        return [(c, CAUSAL_PAST, s) for c, s in self.decoder.past_shapes()]

    def decode_step(
        self, latent: Tensor, state: DecodeState | None = None
    ) -> tuple[Tensor, DecodeState]:
        """Decode the next latent frames of a stream.

        latent: normalised `B, z_dim, t, h, w` (any `t >= 0`); state: from the previous call,
        or None / `init_decode_state(...)` at the start. Returns frames `B, 3, n, 8h, 8w`
        (unclamped, ~[-1, 1]) with `n = 4t`, or `4t - 3` on the stream's first call, and the
        new state. Any chunking of a clip gives the frames of `decode`.
        """
        self._check_latent(latent)
        b, _, t, h, w = latent.shape
        if state is None:
            state = self.init_decode_state(b, h, w, device=latent.device, dtype=latent.dtype)
        assert len(state.memory) == len(self.decoder.past_shapes()), (
            "state does not belong to this decoder"
        )
        if t == 0:
            ss = self.cfg.spatial_stride
            return latent.new_zeros(b, self.cfg.image_channels, 0, h * ss, w * ss), state
        pasts = Pasts(state.memory)
        z = self.conv2(self.denormalise_latent(latent), None)[0]
        frames = self.decoder(z, pasts, first=not state.started)
        return frames, DecodeState(started=True, memory=tuple(pasts.new))
