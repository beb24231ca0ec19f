"""Keep what does not move close to the reference portrait.

The renderer draws every frame anew from latents, so even the parts of the picture that
never move (the background, the hair, a still cheek) come out softer than the portrait
(the VAE keeps about 40% of an avatar's fine detail) and in colours a little off its own;
on a real face the decoder even redraws the eyes the way it learned them. The portrait
itself is the best picture of those parts that there is.

What "does not move" means: the model's own drawing of the still portrait, the decoder's
picture of the anchor latent (`still`), is what every frame would show where nothing
moved. `ReferenceKeeper` compares each rendered pixel with it: within `lo` levels (mean
over the colour channels) the frame shows the portrait's pixel, beyond `hi` levels (an
open mouth, an edge the head has moved) the rendered one, and a linear blend between, so
that no seam is drawn where the two meet. Measuring against the portrait itself would
count the decoder's own blur and colour bias as motion, and keep less (docs/EXPERIMENTS.md,
"Keeping the reference": the two compared). It is the same edge-keeping rule as the
deflicker filter's (`tmrender.render.temporal.keep_edges`).

The mouth is never pulled back: a slightly open mouth differs from a closed one by only a
few levels, and pulling it shut would cost lip sync. Around where the model's framing puts
the mouth (`tmrender.faces.align.CANONICAL`: the mouth-corner midpoint at 0.5, 0.60 of the
side; the guard's centre sits a little lower, over the lips and the jaw that opens with
them) an elliptical guard keeps the rendered pixels as they are, fading out over its
outer `GUARD_FEATHER` share.
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
    """Rendered frames (1, 3, n, H, W) in -1..1 -> the same frames, showing the reference's
    pixels where they stay within `keep` = (lo, hi) levels of `still`, outside the mouth
    guard (stateless: no frame is held back).

    reference: the portrait the render starts from, uint8 (H, W, 3); still: the model's
    drawing of it (1, 3, 1, H, W) in -1..1, or None to measure against the portrait."""

    def __init__(
        self,
        reference: np.ndarray,
        keep: Sequence[float],
        device: torch.device,
        still: Tensor | None = None,
    ) -> None:
        keep = tuple(float(v) for v in keep)
        assert keep_levels(keep), f"keep must be (lo, hi) with 0 <= lo < hi: {keep}"
        assert reference.ndim == 3 and reference.shape[2] == 3, reference.shape
        pixels = torch.from_numpy(np.array(reference, np.uint8)).to(device)  # a writable copy
        self.reference = (pixels.permute(2, 0, 1).float() / 127.5 - 1.0)[None, :, None]
        self.lo, self.hi = (2 * v / 255 for v in keep)  # levels -> the -1..1 scale
        guard = torch.from_numpy(mouth_guard(*reference.shape[:2])).to(device)
        self.guard = guard[None, None, None]  # (1, 1, 1, H, W)
        if still is not None:
            assert still.shape == self.reference.shape, (still.shape, self.reference.shape)
        self.still = self.reference if still is None else still.to(device).float()

    def __call__(self, frames: Tensor) -> Tensor:
        """frames (1, 3, n, H, W) -> (1, 3, n, H, W), float32."""
        assert frames.ndim == 5 and frames.shape[:2] == (1, 3), tuple(frames.shape)
        assert frames.shape[3:] == self.reference.shape[3:], (frames.shape, self.reference.shape)
        if frames.shape[2] == 0:
            return frames.float()
        frames = frames.float()
        moved = (frames - self.still).abs().mean(dim=1, keepdim=True)
        share = ((moved - self.lo) / (self.hi - self.lo)).clamp(0, 1)
        share = torch.maximum(share, self.guard)  # 1: the rendered pixel, 0: the portrait's
        return self.reference + share * (frames - self.reference)
