"""Face tracking through video: detect once, then place each frame's landmark box from the
previous frame's landmarks, refined by a second pass from this frame's own (detection again
only when the track is lost).

The landmark model was trained on the detector's boxes, so the tracker keeps the first
detection's box in aligned-crop coordinates and maps it back through each frame's alignment:
the box follows the face's position and scale exactly as a fresh detection would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tmrender.faces.align import Alignment, align
from tmrender.faces.detect import Face, detect_faces
from tmrender.faces.landmarks import key_points, landmarks

MAX_SCALE_JUMP = 0.3  # eye distance changing more than this fraction in one frame = lost
REFINE_PASSES = 2  # landmark passes per frame: box from the last frame, then from this one


@dataclass(frozen=True)
class TrackedFrame:
    """One frame's face: landmarks (68, 2), the box they were found in, and the alignment."""

    points: np.ndarray
    box: Face
    alignment: Alignment
    detected: bool  # True when this frame ran the detector


class FaceTracker:
    """Landmarks frame after frame: `reset()`, then `update(frame)` per RGB uint8 (H, W, 3)."""

    def __init__(self, crop_size: int = 128):
        self.crop_size = crop_size
        self.reset()

    def reset(self) -> None:
        """Forget the face: the next update detects again."""
        self._box_in_crop: np.ndarray | None = None  # (x, y, w, h) in crop pixels
        self._last: TrackedFrame | None = None

    def update(self, frame: np.ndarray) -> TrackedFrame | None:
        """The face in `frame`, or None when no face is found there."""
        if self._last is not None:
            tracked = self._follow(frame)
            if tracked is not None:
                self._last = tracked
                return tracked
        self._last = self._detect(frame)
        return self._last

    def _detect(self, frame: np.ndarray) -> TrackedFrame | None:
        faces = detect_faces(frame)
        if not faces:
            self._box_in_crop = None
            return None
        box = faces[0]
        points = landmarks(frame, box)
        alignment = align(points, self.crop_size)
        corners = alignment.to_crop(np.array([[box.x, box.y], [box.x + box.w, box.y + box.h]]))
        self._box_in_crop = np.concatenate([corners[0], corners[1] - corners[0]])
        return TrackedFrame(points, box, alignment, detected=True)

    def _follow(self, frame: np.ndarray) -> TrackedFrame | None:
        """Landmarks inside the box predicted from the last frame; None when the track is lost."""
        assert self._last is not None and self._box_in_crop is not None
        alignment = self._last.alignment
        for _ in range(REFINE_PASSES):  # the box re-centres on this frame's face
            box = self._predicted_box(alignment, frame.shape[:2])
            if box is None:
                return None
            points = landmarks(frame, box)
            alignment = align(points, self.crop_size)
        before = key_points(self._last.points).eye_distance
        now = key_points(points).eye_distance
        if abs(now - before) > MAX_SCALE_JUMP * before:
            return None
        return TrackedFrame(points, box, alignment, detected=False)

    def _predicted_box(self, alignment: Alignment, shape: tuple[int, int]) -> Face | None:
        """The first detection's box, carried by `alignment` into this frame's pixels."""
        x, y, w, h = self._box_in_crop
        centre = alignment.to_image(np.array([[x + w / 2, y + h / 2]]))[0]
        side = w / alignment.scale
        x0, y0 = round(centre[0] - side / 2), round(centre[1] - side / 2)
        size = round(side)
        height, width = shape
        if size < 8 or x0 + size <= 0 or y0 + size <= 0 or x0 >= width or y0 >= height:
            return None
        return Face(x0, y0, size, size, score=float("nan"))
