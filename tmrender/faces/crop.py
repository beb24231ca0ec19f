"""One call from a picture to the model's aligned portrait: the largest face, its landmarks,
the alignment and the crop (and, with `align.warp_from_crop`, the way back)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tmrender.faces.align import MODEL_SIZE, Alignment, align, warp_to_crop
from tmrender.faces.detect import Face, main_face
from tmrender.faces.landmarks import landmarks


@dataclass(frozen=True)
class FaceCrop:
    """The aligned crop (S, S, 3) uint8 of a picture's largest face, with how it was found."""

    pixels: np.ndarray
    alignment: Alignment
    points: np.ndarray  # the 68 landmarks (68, 2) in the picture's pixels
    box: Face


def face_crop(image: np.ndarray, size: int = MODEL_SIZE, name: str = "the image") -> FaceCrop:
    """The largest face of an RGB uint8 picture (H, W, 3) aligned to a `size` x `size` crop.

    UserInputError (naming `name`) when there is no face or it is too small.
    """
    box = main_face(image, name)
    points = landmarks(image, box)
    alignment = align(points, size)
    return FaceCrop(warp_to_crop(image, alignment), alignment, points, box)
