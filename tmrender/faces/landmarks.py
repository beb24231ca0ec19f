"""68 facial landmarks (the iBUG 300-W layout), the few points built on them, and the mouth
measures.

Points are (x, y) in image pixels, pixel centres at integers. Indices of the 68-point layout:
jaw 0-16, brows 17-26, nose 27-35 (tip 30), eyes 36-41 (image left) and 42-47 (image right),
outer lips 48-59 (corners 48 and 54, top 51, bottom 57), inner lips 60-67 (top 62, bottom 66).

Mouth measures, for lip-sync on real video: `opening` is the gap between the inner lips
(62 to 66) and `width` the distance between the mouth corners (48 to 54), both divided by
the distance between the eye centres, which does not change as the mouth moves and scales
with the face. A closed mouth reads about 0 and a wide-open one about 0.5; width is about 0.8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tmrender.faces.detect import Face
from tmrender.faces.models import shape_predictor

N_POINTS = 68
LEFT_EYE = slice(36, 42)  # the eye on the image's left (the subject's right)
RIGHT_EYE = slice(42, 48)
NOSE_TIP = 30
MOUTH_LEFT, MOUTH_RIGHT = 48, 54
UPPER_LIP_OUTER, LOWER_LIP_OUTER = 51, 57
UPPER_LIP_INNER, LOWER_LIP_INNER = 62, 66


def landmarks(image: np.ndarray, box: Face | tuple[int, int, int, int]) -> np.ndarray:
    """The 68 points (68, 2) float32 of the face in `box` (x, y, w, h) of RGB uint8 (H, W, 3)."""
    import dlib

    assert image.ndim == 3 and image.shape[2] == 3, f"expected (H, W, 3), got {image.shape}"
    x, y, w, h = (box.x, box.y, box.w, box.h) if isinstance(box, Face) else box
    rect = dlib.rectangle(int(x), int(y), int(x + w - 1), int(y + h - 1))
    shape = shape_predictor()(np.ascontiguousarray(image), rect)
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


@dataclass(frozen=True)
class KeyPoints:
    """The points alignment and lip-sync need, each (2,) in image pixels."""

    left_eye: np.ndarray
    right_eye: np.ndarray
    nose_tip: np.ndarray
    mouth_left: np.ndarray
    mouth_right: np.ndarray
    upper_lip: np.ndarray  # inner edge of the upper lip
    lower_lip: np.ndarray  # inner edge of the lower lip

    @property
    def mouth_centre(self) -> np.ndarray:
        """Midpoint of the mouth corners: barely moves when the jaw opens."""
        return (self.mouth_left + self.mouth_right) / 2

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.right_eye - self.left_eye))


def key_points(points: np.ndarray) -> KeyPoints:
    """KeyPoints of 68 landmarks (68, 2)."""
    assert points.shape == (N_POINTS, 2), f"expected (68, 2), got {points.shape}"
    p = points.astype(np.float64)
    return KeyPoints(
        left_eye=p[LEFT_EYE].mean(axis=0),
        right_eye=p[RIGHT_EYE].mean(axis=0),
        nose_tip=p[NOSE_TIP],
        mouth_left=p[MOUTH_LEFT],
        mouth_right=p[MOUTH_RIGHT],
        upper_lip=p[UPPER_LIP_INNER],
        lower_lip=p[LOWER_LIP_INNER],
    )


def mouth_opening(points: np.ndarray) -> float:
    """Inner-lip gap / eye distance of landmarks (68, 2): ~0 closed, ~0.5 wide open."""
    k = key_points(points)
    return float(np.linalg.norm(k.lower_lip - k.upper_lip)) / max(k.eye_distance, 1e-6)


def mouth_width(points: np.ndarray) -> float:
    """Corner-to-corner width / eye distance of landmarks (68, 2): ~0.8 at rest."""
    k = key_points(points)
    return float(np.linalg.norm(k.mouth_right - k.mouth_left)) / max(k.eye_distance, 1e-6)
