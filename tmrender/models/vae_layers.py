"""Building blocks of the causal video autoencoder (`tmrender.models.vae`).

Public tensors are `B, C, T, H, W`. Inside the autoencoder every frame is an image of a
batch of `N = B * T` images, `N, C, H, W`, kept in `channels_last` memory (fast 2-D
convolutions on CPU); the helpers here convert between the two and do the few things that
mix time: a causal "memory" block, a causal time pooling (encoder) and a time expansion
(decoder). Frame order inside `N` is batch-major: image `n = b * T + t`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def video_to_frames(video: Tensor, r: int = 1) -> Tensor:
    """`B, C, T, H, W` -> `B * T, r*r*C, H / r, W / r` (channels_last memory), one copy.

    Space-to-depth by `r`: channel `(i * r + j) * C + c` of pixel `(y, x)` is channel `c` of
    pixel `(r*y + i, r*x + j)` (the inverse of `frames_to_video`).
    """
    assert video.ndim == 5, f"expected B, C, T, H, W, got shape {tuple(video.shape)}"
    b, c, t, h, w = video.shape
    assert h % r == 0 and w % r == 0, f"H, W = {h}, {w} not divisible by {r}"
    blocks = video.reshape(b, c, t, h // r, r, w // r, r).permute(0, 2, 3, 5, 4, 6, 1)
    return blocks.reshape(b * t, h // r, w // r, r * r * c).permute(0, 3, 1, 2)


def frames_to_video(frames: Tensor, batch: int, r: int = 1) -> Tensor:
    """`B * T, r*r*C, H, W` -> contiguous `B, C, T, r*H, r*W` (depth-to-space by `r`)."""
    assert frames.ndim == 4, f"expected B*T, C, H, W, got shape {tuple(frames.shape)}"
    n, rrc, h, w = frames.shape
    assert n % batch == 0 and rrc % (r * r) == 0, f"bad frames {tuple(frames.shape)}"
    c = rrc // (r * r)
    nhwc = frames.permute(0, 2, 3, 1).reshape(batch, n // batch, h, w, r, r, c)
    return nhwc.permute(0, 6, 1, 2, 4, 3, 5).reshape(batch, c, n // batch, h * r, w * r)


def depth_to_space(frames: Tensor, r: int) -> Tensor:
    """`N, r*r*C, H, W` -> `N, C, r*H, r*W` (channels_last), channel order as in
    `video_to_frames`."""
    n, rrc, h, w = frames.shape
    c = rrc // (r * r)
    nhwc = frames.permute(0, 2, 3, 1).reshape(n, h, w, r, r, c).permute(0, 1, 3, 2, 4, 5)
    return nhwc.reshape(n, h * r, w * r, c).permute(0, 3, 1, 2)


def _to_nhwc5(frames: Tensor, batch: int) -> Tensor:
    """`B * T, C, H, W` -> `B, T, H, W, C` (a view when `frames` is channels_last)."""
    n, c, h, w = frames.shape
    return frames.permute(0, 2, 3, 1).reshape(batch, n // batch, h, w, c)


def _from_nhwc5(x: Tensor) -> Tensor:
    """`B, T, H, W, C` -> `B * T, C, H, W` (channels_last)."""
    b, t, h, w, c = x.shape
    return x.reshape(b * t, h, w, c).permute(0, 3, 1, 2)


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with "same" padding (halves H, W when `stride == 2`)."""
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


class CausalMemBlock(nn.Module):
    """Residual block whose first convolution also sees the `past_frames` previous frames.

    `y = relu(x_t + conv(relu(conv([x_t, x_{t-1}, ..., x_{t-P}]))))` with `P = past_frames`:
    a causal convolution in time (kernel `P + 1`) fused with a 3x3 spatial one. Frames before
    the start of a stream are zeros. The causal state is the last `P` input frames.
    """

    def __init__(self, channels: int, past_frames: int) -> None:
        super().__init__()
        assert past_frames >= 0, f"past_frames must be >= 0, got {past_frames}"
        self.channels = channels
        self.past_frames = past_frames
        self.conv1 = conv3x3(channels * (past_frames + 1), channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: Tensor, batch: int, past: Tensor) -> tuple[Tensor, Tensor]:
        """x: `B * T, C, H, W`, past: `B, C, P, H, W` -> (y `B * T, C, H, W`, new past)."""
        p = self.past_frames
        assert past.shape[:3] == (batch, self.channels, p), (
            f"past must be B, C, P = {(batch, self.channels, p)}, got {tuple(past.shape)}"
        )
        assert past.shape[3:] == x.shape[2:], (
            f"past H, W {tuple(past.shape[3:])} != frame H, W {tuple(x.shape[2:])}"
        )
        cur = _to_nhwc5(x, batch)  # B, T, H, W, C
        if p == 0:
            return F.relu_(x + self.conv2(F.relu_(self.conv1(x)))), past
        t = cur.shape[1]
        full = torch.cat([past.permute(0, 2, 3, 4, 1).to(cur.dtype), cur], dim=1)  # B, P+T, ...
        shifted = [cur] + [full[:, p - j : p - j + t] for j in range(1, p + 1)]
        y = self.conv2(F.relu_(self.conv1(_from_nhwc5(torch.cat(shifted, dim=-1)))))
        new_past = full[:, t:].permute(0, 4, 1, 2, 3).clone(memory_format=torch.contiguous_format)
        return F.relu_(x + y), new_past


class TimePool(nn.Module):
    """Causal time downsampling by `stride` (encoder): first frame alone, then groups.

    The clip `1 + s*k` frames long is front-padded with `s - 1` copies of its first frame, cut
    into `1 + k` groups of `s` consecutive frames whose channels are concatenated, and mixed
    by a 1x1 convolution. Group 0 is frame 0 alone, group `j > 0` holds frames
    `s*j - s + 1 .. s*j`: no group sees a later frame.
    """

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels * stride, channels, 1)

    def forward(self, x: Tensor, batch: int) -> Tensor:
        """`B * (1 + s*k), C, H, W` -> `B * (1 + k), C, H, W`."""
        s = self.stride
        v = _to_nhwc5(x, batch)
        b, t, h, w, c = v.shape
        assert (t - 1) % s == 0, f"time pooling needs 1 + {s}k frames, got {t}"
        padded = torch.cat([v[:, :1].expand(b, s - 1, h, w, c), v], dim=1)
        groups = padded.reshape(b, t // s + 1, s, h, w, c).permute(0, 1, 3, 4, 2, 5)
        return self.conv(_from_nhwc5(groups.reshape(b, t // s + 1, h, w, s * c)))


class TimeExpand(nn.Module):
    """Time upsampling by `stride` (decoder): a 1x1 conv to `s * C` channels, split into
    `s` consecutive frames (channel block `i` is frame `i` of the group). The very first
    latent of a stream keeps only its last frame (`1 + k` latents -> `1 + s*k` frames),
    mirroring `TimePool`.
    """

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1)

    def forward(self, x: Tensor, batch: int, drop_first: bool) -> Tensor:
        """`B * T, C, H, W` -> `B * (s*T - (s-1 if drop_first)), C, H, W`."""
        s = self.stride
        v = _to_nhwc5(self.conv(x), batch)
        b, t, h, w, sc = v.shape
        c = sc // s
        frames = v.reshape(b, t, h, w, s, c).permute(0, 1, 4, 2, 3, 5).reshape(b, t * s, h, w, c)
        if drop_first:
            frames = frames[:, s - 1 :]
        return _from_nhwc5(frames)


class Upsample2x(nn.Module):
    """Sub-pixel x2 spatial upsampling: a 3x3 conv to `4 * C_out` at the low resolution,
    then depth-to-space (same cost as nearest + conv at the high resolution, less memory)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = conv3x3(c_in, 4 * c_out)

    def forward(self, x: Tensor) -> Tensor:
        """`N, C_in, H, W` -> `N, C_out, 2H, 2W`."""
        return depth_to_space(self.conv(x), 2)
