"""The mouth reader: a small CNN that reads mouth parameters off a video frame.

It is the lip-sync instrument of `tmrender eval`: trained on ground-truth corpus frames
(`tmrender train mouth-reader`), it turns any frame, generated or true, into the mouth
parameters `MouthReaderConfig.outputs` (columns of the corpus `mouth.npy`, all in [0, 1]).

Input: a fixed square region of the frame (`MouthReaderConfig.crop`, in pixels of a
`frame_size` x `frame_size` frame) that contains the mouth of every corpus avatar in every
head pose; no face or mouth box is needed at inference, so generated frames read the same
way as true ones. Images here are `B, C, H, W` (a batch of single frames, no time axis).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class MouthReaderConfig:
    """Dimensions of a mouth reader; stored as JSON in its safetensors metadata."""

    # input region
    frame_size: int = 128  # frames are resized to frame_size x frame_size first
    crop: tuple[int, int, int, int] = (32, 48, 96, 112)  # x0, y0, x1, y1 (x1, y1 exclusive)
    # network
    stem: int = 16  # channels of the stem convolution
    stem_stride: int = 2
    channels: tuple[int, ...] = (32, 48, 64)  # one stride-2 stage each
    convs_per_stage: int = 1  # 3x3 convolutions per stage (the first one has stride 2)
    hidden: int = 128
    # what it predicts: corpus mouth columns
    outputs: tuple[str, ...] = ("open", "width", "round")

    @property
    def crop_size(self) -> tuple[int, int]:
        """(height, width) of the input region in pixels."""
        x0, y0, x1, y1 = self.crop
        return (y1 - y0, x1 - x0)

    @property
    def feature_size(self) -> tuple[int, int]:
        """(height, width) of the last feature map: the crop divided by the stem stride,
        then halved once per stage (rounding up, as padded 3x3 convolutions do)."""
        h, w = self.crop_size
        for stride in (self.stem_stride, *[2] * len(self.channels)):
            h, w = -(-h // stride), -(-w // stride)
        return (h, w)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MouthReaderConfig:
        raw = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class MouthReader(nn.Module):
    """CNN: mouth region `(B, 3, h, w)` normalised pixels -> `(B, len(cfg.outputs))`.

    A stem convolution, one stride-2 stage per entry of `cfg.channels` (each
    `cfg.convs_per_stage` 3x3 convolutions), then a small MLP on the flattened last
    feature map (flattened, not pooled: where the lips are in the region carries information).
    """

    def __init__(self, cfg: MouthReaderConfig | None = None):
        super().__init__()
        self.cfg = cfg or MouthReaderConfig()
        layers = [_conv_block(3, self.cfg.stem, self.cfg.stem_stride)]
        c_in = self.cfg.stem
        for c_out in self.cfg.channels:
            layers.append(_conv_block(c_in, c_out, 2))
            layers += [_conv_block(c_out, c_out, 1) for _ in range(self.cfg.convs_per_stage - 1)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        fh, fw = self.cfg.feature_size
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * fh * fw, self.cfg.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.cfg.hidden, len(self.cfg.outputs)),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, h, w) with (h, w) == cfg.crop_size, pixels as (p / 255 - 0.5) / 0.25.
        Returns (B, n_outputs), the mouth parameters (not clamped)."""
        assert x.ndim == 4 and x.shape[1] == 3, f"expected (B, 3, h, w), got {tuple(x.shape)}"
        assert tuple(x.shape[2:]) == self.cfg.crop_size, (
            f"expected a {self.cfg.crop_size} region, got {tuple(x.shape[2:])}"
        )
        return self.head(self.features(x))


def normalise(pixels: Tensor) -> Tensor:
    """uint8 or [0, 255] float pixels (any shape) -> the reader's input scale."""
    return (pixels.float() / 255.0 - 0.5) / 0.25
