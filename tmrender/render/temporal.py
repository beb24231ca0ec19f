"""A zero-lag filter over the time axis of a stream of rendered frames.

A 2-step student makes each latent frame a little apart from its neighbours, so the
decoded picture steps at every latent boundary (every 4 frames): a flicker at 6.25 Hz that
the eye sees and that the motion figure counts. A symmetric FIR over time smooths those
steps without delaying anything (a causal filter would lag the mouth behind the audio);
the price is `radius` frames held back until the frames after them arrive, and edge
frames repeated at both ends of the video. The taps (1, 2, 2, 2, 1) have zeros at periods
4 and 2, the latent boundary's pattern, and pass slow motion as it is.

A linear filter also rounds off the mouth's fast turns, which blurs its timing: the A/V
offset of a clip then drifts to +-1 frame. With `keep` = (lo, hi) the filter is edge-keeping:
a pixel whose raw value is more than hi levels from the filtered one (a moving lip edge)
keeps the raw value, one within lo levels (flicker) takes the filtered one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tmrender.config import keep_levels, symmetric_taps


class TemporalFilter:
    """Stream filter: `push` blocks of frames (1, C, n, H, W) in order, then `flush`; the
    outputs add up to exactly the frames pushed, each the taps-weighted mean of its
    neighbours (edges repeated), or with `keep` = (lo, hi) levels its edge-keeping blend
    with the raw frame (frames in -1..1). Holds at most 2 x radius frames between calls."""

    def __init__(self, taps: Sequence[float], keep: Sequence[float] = ()) -> None:
        taps = tuple(float(w) for w in taps)
        assert symmetric_taps(taps), f"taps must be symmetric, of odd length, sum > 0: {taps}"
        keep = tuple(float(v) for v in keep)
        assert not keep or keep_levels(keep), f"keep must be () or (lo, hi), 0 <= lo < hi: {keep}"
        self.weights = [w / sum(taps) for w in taps]
        self.radius = len(taps) // 2
        self.keep = tuple(2 * v / 255 for v in keep)  # levels -> the -1..1 scale
        self._buffer: Tensor | None = None  # frames not yet out, with `radius` before them

    def push(self, frames: Tensor) -> Tensor:
        """frames (1, C, n, H, W), n >= 0 -> the frames now complete (1, C, m, H, W)."""
        assert frames.ndim == 5, f"frames must be 1, C, n, H, W; got {tuple(frames.shape)}"
        if self._buffer is None:
            if frames.shape[2] == 0:
                return frames
            first = frames[:, :, :1].expand(-1, -1, self.radius, -1, -1)
            self._buffer = torch.cat((first, frames), dim=2)
        else:
            self._buffer = torch.cat((self._buffer, frames), dim=2)
        return self._drain()

    def flush(self) -> Tensor | None:
        """The held-back frames (1, C, m, H, W), the last frame repeated after them; None
        when nothing was pushed."""
        if self._buffer is None:
            return None
        last = self._buffer[:, :, -1:].expand(-1, -1, self.radius, -1, -1)
        self._buffer = torch.cat((self._buffer, last), dim=2)
        out = self._drain()
        self._buffer = None
        return out

    def _drain(self) -> Tensor:
        buffer, r = self._buffer, self.radius
        ready = buffer.shape[2] - 2 * r
        if ready <= 0:
            return buffer[:, :, :0]
        out = sum(w * buffer[:, :, k : k + ready].float() for k, w in enumerate(self.weights))
        if self.keep:
            out = keep_edges(buffer[:, :, r : r + ready].float(), out, *self.keep)
        self._buffer = buffer[:, :, ready:]
        return out.to(buffer.dtype)


def keep_edges(raw: Tensor, smooth: Tensor, lo: float, hi: float) -> Tensor:
    """raw, smooth (1, C, n, H, W) -> smooth where |raw - smooth| (mean over C) <= lo, raw
    where it is >= hi, linear between."""
    diff = raw - smooth
    share = ((diff.abs().mean(dim=1, keepdim=True) - lo) / (hi - lo)).clamp(0, 1)
    return smooth + share * diff
