"""A similarity transform (rotation, uniform scale, shift) that puts a face where the model's
portraits have theirs, its inverse, and warping an image to the aligned crop and back.

`CANONICAL` holds where the eye centres and the mouth-corner midpoint sit in a model-framed
square portrait, as fractions of its side (x right, y down). They are the mean geometry of the
drawn avatars of the training corpus (`tmrender.data.avatar`: eyes at 0.5 -+ eye_gap and
face_y - 0.04 face_h, mouth corners at face_y + 0.56 face_h - smile), measured over 2,000
appearances; `tests/test_faces_align.py` checks them against that geometry.

Coordinates: points are (x, y) with pixel centres at integers (the landmarks' convention);
a fraction u of a side of S pixels is the point u * S - 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from tmrender.faces.landmarks import KeyPoints, key_points

# left eye, right eye (image left and right), mouth-corner midpoint; fractions of the side
CANONICAL = np.array([[0.409, 0.4335], [0.591, 0.4335], [0.5, 0.601]])
MODEL_SIZE = 128  # the model's portraits are 128 x 128
EDGE = 2  # pixels of edge padding around a crop warped back


@dataclass(frozen=True)
class Alignment:
    """A similarity map from image pixels to a `size` x `size` crop: matrix (2, 3)."""

    matrix: np.ndarray
    size: int

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return float(np.hypot(*self.matrix[:, 0]))

    def inverse_matrix(self) -> np.ndarray:
        """The (2, 3) map from crop pixels back to image pixels."""
        return invert(self.matrix)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Image points (N, 2) -> crop points (N, 2)."""
        return apply(self.matrix, points)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Crop points (N, 2) -> image points (N, 2)."""
        return apply(self.inverse_matrix(), points)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (N, 2) through an affine (2, 3) matrix."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    """The inverse of an affine (2, 3) matrix."""
    linear = np.linalg.inv(matrix[:, :2])
    return np.concatenate([linear, -(linear @ matrix[:, 2])[:, None]], axis=1)


def fit_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (2, 3) mapping points source (N, 2) onto target (N, 2), N >= 2.

    Solves x' = a x - b y + tx, y' = b x + a y + ty for (a, b, tx, ty); no reflection.
    """
    assert source.shape == target.shape and source.shape[0] >= 2, (source.shape, target.shape)
    x, y = source[:, 0], source[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    rows = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
    rhs = np.concatenate([target[:, 0], target[:, 1]])
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, rhs, rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def anchor_points(face: KeyPoints | np.ndarray) -> np.ndarray:
    """The three alignment anchors (3, 2) of KeyPoints or 68 landmarks: eyes, mouth centre."""
    k = face if isinstance(face, KeyPoints) else key_points(face)
    return np.stack([k.left_eye, k.right_eye, k.mouth_centre])


def canonical_points(size: int = MODEL_SIZE) -> np.ndarray:
    """`CANONICAL` in the pixels of a `size` x `size` crop (3, 2)."""
    return CANONICAL * size - 0.5


def align(face: KeyPoints | np.ndarray, size: int = MODEL_SIZE) -> Alignment:
    """The Alignment that puts a face (KeyPoints or 68 landmarks) at the canonical framing."""
    return Alignment(fit_similarity(anchor_points(face), canonical_points(size)), size)


def _pillow_data(matrix: np.ndarray) -> tuple[float, ...]:
    """Pillow's AFFINE data for an output->input map given in pixel-centre coordinates.

    Pillow maps continuous coordinates (pixel i spans [i, i + 1)), so shift by half a pixel
    on both sides.
    """
    linear, shift = matrix[:, :2], matrix[:, 2]
    offset = shift + 0.5 - linear @ np.array([0.5, 0.5])
    return (*linear[0], offset[0], *linear[1], offset[1])


def warp_to_crop(image: np.ndarray, alignment: Alignment) -> np.ndarray:
    """The aligned crop (size, size, 3) uint8 of an RGB uint8 image (H, W, 3), bicubic;
    parts outside the image are edge-replicated."""
    assert image.ndim == 3 and image.shape[2] == 3, f"expected (H, W, 3), got {image.shape}"
    padded, pad = _edge_pad(image, alignment)
    matrix = alignment.inverse_matrix()
    matrix[:, 2] += pad
    out = Image.fromarray(padded).transform(
        (alignment.size, alignment.size),
        Image.Transform.AFFINE,
        _pillow_data(matrix),
        resample=Image.Resampling.BICUBIC,
    )
    return np.asarray(out)


def _edge_pad(image: np.ndarray, alignment: Alignment) -> tuple[np.ndarray, int]:
    """The image edge-padded enough to hold the whole crop, and the pad in pixels."""
    corners = alignment.to_image(np.array([[0, 0], [1, 0], [0, 1], [1, 1]]) * alignment.size)
    h, w = image.shape[:2]
    need = max(0.0, -corners.min(), corners[:, 0].max() - w, corners[:, 1].max() - h)
    pad = int(np.ceil(need)) + 2
    return np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge"), pad


def warp_from_crop(
    crop: np.ndarray, alignment: Alignment, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A crop (size, size, 3) uint8 warped back into an image of `shape` (H, W).

    Returns (pixels (H, W, 3) uint8, coverage (H, W) float32 in [0, 1]: 1 where the crop
    lands, soft at its edge, 0 outside), for pasting: image * (1 - c) + pixels * c.
    """
    assert crop.shape == (alignment.size, alignment.size, 3), crop.shape
    height, width = shape
    # the crop's edge pixels repeated twice, so bicubic sampling at its border stays unmixed
    padded = np.pad(crop, ((EDGE, EDGE), (EDGE, EDGE), (0, 0)), mode="edge")
    to_padded = alignment.matrix + np.array([[0, 0, EDGE], [0, 0, EDGE]])
    warp = dict(resample=Image.Resampling.BICUBIC)
    pixels = Image.fromarray(padded).transform(
        (width, height), Image.Transform.AFFINE, _pillow_data(to_padded), **warp
    )
    data = _pillow_data(alignment.matrix)
    inside = Image.new("L", crop.shape[1::-1], 255).transform(
        (width, height), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(pixels), np.asarray(inside, np.float32) / 255.0
