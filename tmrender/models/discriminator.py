"""A patch discriminator for the VAE decoder's adversarial and feature-matching losses.

PatchGAN (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial
Networks", section 3.2.2): a small fully convolutional network that scores every
overlapping patch of a frame as real or decoded, so it judges texture and edges, not
layout. Frames are scored one by one (time folded into the batch). Spectral norm on every
convolution (Miyato et al. 2018) keeps it 1-Lipschitz, as the hinge loss of the VAE stage
expects, without normalisation layers whose batch statistics would mix real and fake.

Trained from scratch with the VAE (`tmrender.train.vae`); it lives only in the training
checkpoint, never in an exported model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Shape of a `PatchDiscriminator`."""

    in_channels: int = 3
    width: int = 32  # channels of the first stage; each later stage doubles them
    stages: int = 3  # stride-2 4x4 convolutions: patch logits at 1 / 2**stages resolution
    spectral: bool = True  # spectral norm on every convolution

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.width * 2**i for i in range(self.stages))

    @property
    def receptive_field(self) -> int:
        """Pixels of a frame that one patch logit sees (square side)."""
        field = 3  # the 3x3 stride-1 head
        for _ in range(self.stages):
            field = 2 * field + 2  # a 4x4 stride-2 convolution before it
        return field


class PatchDiscriminator(nn.Module):
    """Video (B, C, T, H, W) in [-1, 1] -> patch logits (B, 1, T, H / 2**s, W / 2**s) and the
    features after each stage (B * T, C_i, H / 2**(i+1), W / 2**(i+1)), s = cfg.stages."""

    def __init__(self, cfg: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DiscriminatorConfig()
        wrap = spectral_norm if cfg.spectral else (lambda m: m)
        stages, previous = [], cfg.in_channels
        for channels in cfg.channels:
            conv = wrap(nn.Conv2d(previous, channels, 4, stride=2, padding=1))
            stages.append(nn.Sequential(conv, nn.LeakyReLU(0.2)))
            previous = channels
        self.stages = nn.ModuleList(stages)
        self.head = wrap(nn.Conv2d(previous, 1, 3, padding=1))

    def forward(self, video: Tensor) -> tuple[Tensor, list[Tensor]]:
        assert video.ndim == 5 and video.shape[1] == self.cfg.in_channels, (
            f"expected (B, {self.cfg.in_channels}, T, H, W), got {tuple(video.shape)}"
        )
        b, _, t, h, w = video.shape
        step = 2**self.cfg.stages
        assert h % step == 0 and w % step == 0, f"frames {h}x{w} must be multiples of {step}"
        x = video.transpose(1, 2).flatten(0, 1)  # B*T, C, H, W
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        logits = self.head(x)  # B*T, 1, h', w'
        logits = logits.unflatten(0, (b, t)).transpose(1, 2)
        return logits, features


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters of `net`."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
