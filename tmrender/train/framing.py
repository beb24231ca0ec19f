"""Audio features of samples already in memory, framed exactly as the streaming renderer
frames them (`tmrender.render.features.FeatureProducer`: segments with margins, silence
beyond the audio), for the stages that train and measure on the renderer's features."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from tmrender.models.talking import TalkingModel
from tmrender.render.features import FeatureProducer


class ArrayStream:
    """Samples already in memory (N,) float32, read like a `tmrender.media.audio.AudioStream`
    (what `FeatureProducer` reads): iterating yields blocks; `samples_read` counts them. The
    block size does not change the features, only when the producer learns the length."""

    def __init__(self, wav: np.ndarray, block_samples: int = 16_000) -> None:
        self.wav = np.asarray(wav, np.float32)
        self.block_samples = block_samples
        self.samples_read = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(0, self.wav.size, self.block_samples):
            block = self.wav[i : i + self.block_samples]
            self.samples_read += block.size
            yield block


@torch.no_grad()
def renderer_features(model: TalkingModel, wav: np.ndarray) -> Tensor:
    """Features (1, T, L, D) of wav (N,) exactly as the streaming renderer computes them
    (its segments, margins and first-segment offset), T = ceil(N / samples_per_frame)."""
    cfg = model.cfg
    spf = cfg.samples_per_frame
    start = -cfg.audio_proj.window  # as in tmrender.render.pipeline
    frames = -(-wav.size // spf)
    producer = FeatureProducer(
        ArrayStream(wav),
        model.audio_encoder,
        spf,
        needed_frames=lambda total: total,
        device=next(model.audio_encoder.parameters()).device,
        start=start,
    )
    feats = torch.cat([seg.features for seg in producer.segments()], dim=1)
    return feats[:, -start : -start + frames]
