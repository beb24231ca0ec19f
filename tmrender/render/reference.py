"""Draw every frame on the reference portrait: the portrait where nothing moves, the
portrait plus what the render moved where something does.

The renderer draws every frame anew from latents, so even the parts of the picture that
never move (the background, the hair, a still cheek) come out softer than the portrait
(the VAE keeps about 40% of an avatar's fine detail) and in colours a little off its own;
a real face it redraws the way it learned to draw avatars (the eyes, the skin, the lips).
The portrait itself is the best picture of those parts that there is.

What "does not move" means: the model's steady drawing of the portrait is what every
frame would show where nothing moved. It starts as the decoder's picture of the anchor
latent (`still`); with `follow` > 0 it then follows the render, per pixel, wherever the
render rests, with that time constant in frames: the model settles a few levels off its
still picture and keeps to its own drawing (on a real face, most of the gap between the
two), which would otherwise count as motion. `ReferenceKeeper` measures each rendered
pixel's departure from the steady drawing (mean over the colour channels): within `lo`
levels the frame shows the portrait's pixel, beyond `hi` levels (an open mouth, an edge
the head has moved) the portrait plus the whole departure, and a linear blend between, so
that no seam is drawn where the two meet. The same edge-keeping rule is the deflicker
filter's (`tmrender.render.temporal.keep_edges`). Showing the departure on the portrait
rather than the rendered pixel itself keeps the portrait's colours and detail even in what
moves: the render's own tint and blur cancel out. Only pixels that rest teach the steady
drawing, so a mouth held open is never learnt as the face at rest.

The mouth is never held still: a slightly open mouth differs from a closed one by only a
few levels, and pulling it shut would cost lip sync. Around where the model's framing puts
the mouth (`tmrender.faces.align.CANONICAL`: the mouth-corner midpoint at 0.5, 0.60 of the
side; the guard's centre sits a little lower, over the lips and the jaw that opens with
them) an elliptical guard shows every departure, however small, fading out over its outer
`GUARD_FEATHER` share. docs/EXPERIMENTS.md, "Drawing the render on the portrait", measures
the rule against the earlier one, which showed the rendered pixels themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from tmrender.config import keep_levels

GUARD_CENTRE = (0.5, 0.62)  # x, y as fractions of the frame's width and height
GUARD_RADII = (0.22, 0.17)  # half-axes, fractions of the width and height
GUARD_FEATHER = 0.25  # the outer share of the radius over which the guard fades to 0


def mouth_guard(height: int, width: int) -> np.ndarray:
    """The guard (height, width) float32 in [0, 1]: 1 where the render is always kept."""
    dx = ((np.arange(width) + 0.5) / width - GUARD_CENTRE[0]) / GUARD_RADII[0]
    dy = ((np.arange(height) + 0.5) / height - GUARD_CENTRE[1]) / GUARD_RADII[1]
    radius = np.sqrt(dx[None, :] ** 2 + dy[:, None] ** 2)
    return np.clip((1.0 - radius) / GUARD_FEATHER, 0.0, 1.0).astype(np.float32)


class ReferenceKeeper:
    """Rendered frames (1, 3, n, H, W) in -1..1, in time order -> the same frames drawn on
    the reference: the portrait plus what the render moved, where it moved more than `keep`
    = (lo, hi) levels from the model's steady drawing, and always under the mouth guard.

    reference: the portrait the render starts from, uint8 (H, W, 3); still: the model's
    drawing of it (1, 3, 1, H, W) in -1..1, or None to measure against the portrait;
    follow: frames over which the steady drawing follows the render where it rests (0: it
    stays `still`). Stateful: each call continues from the frames of the last one; no
    frame is held back."""

    def __init__(
        self,
        reference: np.ndarray,
        keep: Sequence[float],
        device: torch.device,
        still: Tensor | None = None,
        follow: float = 0.0,
    ) -> None:
        keep = tuple(float(v) for v in keep)
        assert keep_levels(keep), f"keep must be (lo, hi) with 0 <= lo < hi: {keep}"
        assert reference.ndim == 3 and reference.shape[2] == 3, reference.shape
        assert follow == 0 or follow >= 1, f"follow must be 0 or >= 1 frame: {follow}"
        pixels = torch.from_numpy(np.array(reference, np.uint8)).to(device)  # a writable copy
        self.reference = (pixels.permute(2, 0, 1).float() / 127.5 - 1.0)[None, :, None]
        self.lo, self.hi = (2 * v / 255 for v in keep)  # levels -> the -1..1 scale
        guard = torch.from_numpy(mouth_guard(*reference.shape[:2])).to(device)
        self.guard = guard[None, None, None]  # (1, 1, 1, H, W)
        if still is not None:
            assert still.shape == self.reference.shape, (still.shape, self.reference.shape)
        self.steady = (self.reference if still is None else still.to(device).float()).clone()
        self.rate = 1.0 / follow if follow else 0.0

    def __call__(self, frames: Tensor) -> Tensor:
        """frames (1, 3, n, H, W) -> (1, 3, n, H, W), float32."""
        assert frames.ndim == 5 and frames.shape[:2] == (1, 3), tuple(frames.shape)
        assert frames.shape[3:] == self.reference.shape[3:], (frames.shape, self.reference.shape)
        frames = frames.float()
        if frames.shape[2] == 0:
            return frames
        return torch.cat([self._frame(frames[:, :, i : i + 1]) for i in range(frames.shape[2])], 2)

    def _frame(self, frame: Tensor) -> Tensor:
        """One frame (1, 3, 1, H, W) -> its kept picture; the steady drawing learns from it."""
        moved = frame - self.steady
        distance = moved.abs().mean(dim=1, keepdim=True)
        share = ((distance - self.lo) / (self.hi - self.lo)).clamp(0, 1)
        kept = (self.reference + torch.maximum(share, self.guard) * moved).clamp(-1, 1)
        if self.rate:
            # only where the frame rests: an open mouth must not become the steady drawing
            self.steady += self.rate * (1 - share) * moved
        return kept
