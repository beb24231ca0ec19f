"""Mouth measures on model-framed frames (the aligned crops `prepare` stores and the frames a
model renders), without the detector.

dlib's HOG detector misses small and drawn faces, and a 128 px crop is both. In a
model-framed frame the face sits at `align.CANONICAL`, so its detector box is known:
`CANONICAL_BOX`, the detector's box mapped into the aligned crop, as the median over the 19
portraits of `shared/realworld/faces/` and the first frames of the 5 clips of
`shared/realworld/video/` (x 0.302, y 0.312, w 0.402, h 0.409 of the side; spread 0.025-0.042
between faces). The frame is scaled up to `MEASURE_SIDE` first (the landmark model samples
single pixels: on a 128 px crop the inner lips are 1-2 px apart), the 68 points are fitted in
that box, and fitted again in the box carried by their own alignment (as `FaceTracker` does),
so a face a little off the canonical framing is still followed. The points are then the mean
of fits in `JITTER`ed copies of that box: a single fit moves by a pixel with a pixel's worth
of change in the picture (H.264 at crf 10 changes a 128 px crop by about 2 grey levels on
average), and on the five real clips the single-fit opening of stored frames correlated
0.93-0.99 with that of the exact frames, the 9-box mean 0.98-0.998.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from tmrender.faces.align import align
from tmrender.faces.detect import Face
from tmrender.faces.landmarks import landmarks, mouth_opening, mouth_width

CANONICAL_BOX = (0.302, 0.312, 0.402, 0.402)  # x, y, w, h fractions of the side (square)
MEASURE_SIDE = 512  # frames are scaled to this before the landmarks are fitted
REFINE_PASSES = 2  # canonical box, then the box carried by the first fit's alignment
# box shifts dx, dy and growth (pixels at MEASURE_SIDE: 6 px = 1.5 px of a 128 px frame)
JITTER = (
    (0, 0, 0), (6, 0, 0), (-6, 0, 0), (0, 6, 0), (0, -6, 0),
    (-6, -6, 12), (6, 6, -12), (0, 0, 12), (0, 0, -12),
)  # fmt: skip


def canonical_box(side: int) -> Face:
    """The detector's box of a model-framed face in a `side` x `side` frame."""
    x, y, w, _ = (round(v * side) for v in CANONICAL_BOX)
    return Face(x, y, w, w, score=float("nan"))


def framed_landmarks(frame: np.ndarray) -> np.ndarray:
    """The 68 points (68, 2) float32 of the face in a model-framed RGB uint8 frame (S, S, 3),
    in the frame's pixels (pixel centres at integers)."""
    side = frame.shape[0]
    assert frame.shape == (side, side, 3), f"expected a square (S, S, 3) frame, got {frame.shape}"
    scale = MEASURE_SIDE / side
    big = np.asarray(
        Image.fromarray(frame).resize((MEASURE_SIDE, MEASURE_SIDE), Image.Resampling.BICUBIC)
    )
    points = landmarks(big, canonical_box(MEASURE_SIDE))
    for _ in range(REFINE_PASSES - 1):
        points = landmarks(big, _carried_box(points))
    box = _carried_box(points)
    fits = [
        landmarks(big, (box.x + dx, box.y + dy, box.w + ds, box.h + ds)) for dx, dy, ds in JITTER
    ]
    points = np.mean(fits, axis=0)
    return ((points + 0.5) / scale - 0.5).astype(np.float32)


def _carried_box(points: np.ndarray) -> Face:
    """The canonical box carried into the frame by the alignment of `points` (68, 2)."""
    alignment = align(points, MEASURE_SIDE)
    x, y, w, _ = CANONICAL_BOX
    centre_in_crop = np.array([[x + w / 2, y + w / 2]]) * MEASURE_SIDE - 0.5
    centre = alignment.to_image(centre_in_crop)[0]
    side = w * MEASURE_SIDE / alignment.scale
    x0, y0 = round(centre[0] - side / 2), round(centre[1] - side / 2)
    return Face(x0, y0, round(side), round(side), score=float("nan"))


def framed_mouth(frames: np.ndarray) -> np.ndarray:
    """Mouth opening and width (`landmarks.mouth_opening`, `mouth_width`: eye distances) of
    model-framed frames uint8 (T, S, S, 3): float32 (T, 2)."""
    out = np.empty((len(frames), 2), np.float32)
    for i, frame in enumerate(frames):
        points = framed_landmarks(np.ascontiguousarray(frame))
        out[i] = mouth_opening(points), mouth_width(points)
    return out
