"""Keep what does not move close to the reference portrait.

The renderer draws every frame anew from latents, so even the parts of the picture that
never move (the background, the hair, a still cheek) come out a little softer than the
portrait and vary a little from frame to frame. The portrait itself is the best picture
of those parts that there is. `ReferenceKeeper` compares each rendered pixel with the
portrait's: within `lo` levels (mean over the colour channels) it shows the portrait's
pixel, beyond `hi` levels (an open mouth, an edge the head has moved) the rendered one,
and a linear blend between, so no seam is drawn where the two meet. It is the same
edge-keeping rule as the deflicker filter's (`tmrender.render.temporal.keep_edges`), with
the portrait in the filtered frame's place. Figures: docs/EXPERIMENTS.md, "Keeping the
reference".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from tmrender.config import keep_levels
from tmrender.render.temporal import keep_edges


class ReferenceKeeper:
    """Rendered frames (1, 3, n, H, W) in -1..1 -> the same frames with the pixels that
    stay within `keep` = (lo, hi) levels of the reference drawn from it (stateless: no frame
    is held back).

    reference: the portrait the render starts from, uint8 (H, W, 3)."""

    def __init__(self, reference: np.ndarray, keep: Sequence[float], device: torch.device) -> None:
        keep = tuple(float(v) for v in keep)
        assert keep_levels(keep), f"keep must be (lo, hi) with 0 <= lo < hi: {keep}"
        assert reference.ndim == 3 and reference.shape[2] == 3, reference.shape
        pixels = torch.from_numpy(np.ascontiguousarray(reference)).to(device)
        self.reference = (pixels.permute(2, 0, 1).float() / 127.5 - 1.0)[None, :, None]
        self.lo, self.hi = (2 * v / 255 for v in keep)  # levels -> the -1..1 scale

    def __call__(self, frames: Tensor) -> Tensor:
        """frames (1, 3, n, H, W) -> (1, 3, n, H, W), float32."""
        assert frames.ndim == 5 and frames.shape[:2] == (1, 3), tuple(frames.shape)
        assert frames.shape[3:] == self.reference.shape[3:], (frames.shape, self.reference.shape)
        if frames.shape[2] == 0:
            return frames.float()
        reference = self.reference.expand(-1, -1, frames.shape[2], -1, -1)
        return keep_edges(frames.float(), reference, self.lo, self.hi)
