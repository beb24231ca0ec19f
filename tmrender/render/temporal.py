"""Filters over the time axis of a stream of rendered frames: zero-lag for files, causal
for live use.

A 2-step student makes each latent frame a little apart from its neighbours, so the
decoded picture steps at every latent boundary (every `frames_per_latent` frames): a
flicker that the eye sees and that the motion figure counts. A symmetric FIR over time
smooths those steps without delaying anything (a causal filter would lag the mouth behind
the audio); the price is `radius` frames held back until the frames after them arrive,
and edge frames repeated at both ends of the video. The taps (1, 2, 2, 2, 1) have zeros at periods
4 and 2, the latent boundary's pattern, and pass slow motion as it is.

A linear filter also rounds off the mouth's fast turns, which blurs its timing: the A/V
offset of a clip then drifts to +-1 frame. With `keep` = (lo, hi) the filter is edge-keeping:
a pixel whose raw value is more than hi levels from the filtered one (a moving lip edge)
keeps the raw value, one within lo levels (flicker) takes the filtered one.

`Retimer` comes before the filter. The student's latent frames each cover
`frames_per_latent` video frames, and the decoder shows nearly the same mouth on all of
them: a sample-and-hold, so the first frame of a latent shows the mouth a little early
and the last a little late (docs/EXPERIMENTS.md has the measured lags). Leaning the first frame
back towards the frame before it and the last forward towards the frame after it
interpolates between the latents' centres and puts each frame back at its own time.

`CausalFilter` is the live alternative: it reads only the frame itself and the frames
before it, so it holds nothing back. For a model with a zero-lag filter, live use takes a
box of 2 x `frames_per_latent` ones (`causal_filter`): its response is zero at periods of
one and two latents, as (1, 2, 2, 2, 1)'s is at stride 2, and on the decoder's
sample-and-hold it turns the steps into ramps (it re-times as it smooths, so no `Retimer`
comes before it). A causal average lags what it smooths by (length - 1) / 2 frames; made
edge-keeping with the model's levels doubled (a lagging average stands further from a
still pixel's raw value than a centred one), the lip's big steps pass at once and only
the small ones, the flicker, are smoothed and lag.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tmrender.config import SamplerConfig, keep_levels, retime_weights, symmetric_taps


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


CAUSAL_KEEP_SCALE = 2.0  # the causal filter's edge-keeping levels, times the model's


def causal_filter(sampler: SamplerConfig, frames_per_latent: int) -> CausalFilter | None:
    """The live filter for a model: None where the model has no deflicker taps (nothing to
    smooth); else a box of 2 x `frames_per_latent` ones with the model's edge-keeping
    levels doubled (see the module docstring; the choice is measured in docs/LIVE.md)."""
    if not sampler.deflicker_taps:
        return None
    keep = tuple(CAUSAL_KEEP_SCALE * v for v in sampler.deflicker_keep)
    return CausalFilter((1.0,) * (2 * max(1, frames_per_latent)), keep)


class CausalFilter:
    """Stream filter from past frames only: `push` blocks of frames (1, C, n, H, W) in
    order; each comes back at once as sum_k w_k x[t - k] (taps w_0 for the frame itself,
    w_1 the one before, ...; the first frame repeated before it), or with `keep` = (lo, hi)
    levels its edge-keeping blend with the raw frame (frames in -1..1). Holds nothing back:
    it remembers the last len(taps) - 1 raw frames, and `flush` has nothing to give."""

    def __init__(self, taps: Sequence[float], keep: Sequence[float] = ()) -> None:
        taps = tuple(float(w) for w in taps)
        assert taps and sum(taps) > 0, f"taps must be at least one, with a positive sum: {taps}"
        keep = tuple(float(v) for v in keep)
        assert not keep or keep_levels(keep), f"keep must be () or (lo, hi), 0 <= lo < hi: {keep}"
        self.weights = [w / sum(taps) for w in taps]
        self.keep = tuple(2 * v / 255 for v in keep)  # levels -> the -1..1 scale
        self._history: Tensor | None = None  # the last len(taps) - 1 raw frames

    def push(self, frames: Tensor) -> Tensor:
        """frames (1, C, n, H, W), n >= 0 -> the same n frames filtered (1, C, n, H, W)."""
        assert frames.ndim == 5, f"frames must be 1, C, n, H, W; got {tuple(frames.shape)}"
        n, past = frames.shape[2], len(self.weights) - 1
        if n == 0:
            return frames
        if self._history is None:
            self._history = frames[:, :, :1].expand(-1, -1, past, -1, -1)
        buffer = torch.cat((self._history, frames), dim=2)
        out = sum(
            w * buffer[:, :, past - k : past - k + n].float() for k, w in enumerate(self.weights)
        )
        if self.keep:
            out = keep_edges(frames.float(), out, *self.keep)
        self._history = buffer[:, :, buffer.shape[2] - past :]
        return out.to(frames.dtype)

    def flush(self) -> None:
        """Nothing: every frame left with its own push."""
        return None


def keep_edges(raw: Tensor, smooth: Tensor, lo: float, hi: float) -> Tensor:
    """raw, smooth (1, C, n, H, W) -> smooth where |raw - smooth| (mean over C) <= lo, raw
    where it is >= hi, linear between."""
    diff = raw - smooth
    share = ((diff.abs().mean(dim=1, keepdim=True) - lo) / (hi - lo)).clamp(0, 1)
    return smooth + share * diff


class Retimer:
    """Stream re-timing of decoded frames whose latents each cover `frames_per_latent` (>= 2)
    of them: `push` blocks (1, C, n, H, W) in order, the first frame pushed being a latent's
    first, then `flush`. The first frame of each latent becomes (1 - back) x + back x_prev,
    the last (1 - forward) x + forward x_next (raw neighbours; the video's ends use their
    own frame); others pass as they are. Holds back one frame between calls."""

    def __init__(self, frames_per_latent: int, weights: Sequence[float]) -> None:
        assert frames_per_latent >= 2, f"nothing to re-time at {frames_per_latent} frame per latent"
        weights = tuple(float(v) for v in weights)
        assert retime_weights(weights), f"weights must be (back, forward) in 0..0.5: {weights}"
        self.frames_per_latent = frames_per_latent
        self.back, self.forward = weights
        self._prev: Tensor | None = None  # the raw frame before the held one
        self._held: Tensor | None = None  # raw frames not yet out (the last waits for its next)
        self._index = 0  # video frame number of the first held frame

    def push(self, frames: Tensor) -> Tensor:
        """frames (1, C, n, H, W), n >= 0 -> the frames now complete (1, C, m, H, W)."""
        assert frames.ndim == 5, f"frames must be 1, C, n, H, W; got {tuple(frames.shape)}"
        held = frames if self._held is None else torch.cat((self._held, frames), dim=2)
        if held.shape[2] <= 1:
            self._held = held if held.shape[2] else None
            return held[:, :, :0]
        out = self._retime(held, held[:, :, -1:])[:, :, :-1]
        self._prev, self._held = held[:, :, -2:-1], held[:, :, -1:]
        self._index += out.shape[2]
        return out

    def flush(self) -> Tensor | None:
        """The held-back frame (1, C, 1, H, W), its own next; None when nothing was pushed."""
        if self._held is None:
            return None
        out = self._retime(self._held, self._held[:, :, -1:])
        self._held = None
        return out

    def _retime(self, frames: Tensor, after: Tensor) -> Tensor:
        n = frames.shape[2]
        before = frames[:, :, :1] if self._prev is None else self._prev
        prev = torch.cat((before, frames[:, :, :-1]), dim=2).float()
        nxt = torch.cat((frames[:, :, 1:], after), dim=2).float()
        phase = (self._index + torch.arange(n, device=frames.device)) % self.frames_per_latent
        back = torch.where(phase == 0, self.back, 0.0).view(1, 1, n, 1, 1)
        forward = torch.where(phase == self.frames_per_latent - 1, self.forward, 0.0)
        forward = forward.view(1, 1, n, 1, 1)
        out = (1 - back - forward) * frames.float() + back * prev + forward * nxt
        return out.to(frames.dtype)
