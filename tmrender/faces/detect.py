"""Face detection: boxes, largest first, with the detector's scores.

Images are read with `tmrender.media.image.open_rgb` after a size check (`MAX_PIXELS`).
Detection runs on a copy scaled to at most `DETECT_SIDE` pixels on its longer side
(upsampled 2x inside dlib when that copy is small, so that faces of `MIN_FACE_PX` are seen);
boxes come back in the original image's pixels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tmrender.errors import UserInputError
from tmrender.faces.models import detector
from tmrender.media.ffmpeg import check_readable_file
from tmrender.media.image import open_rgb

MAX_PIXELS = 50_000_000  # larger images are refused before decoding (a 50-megapixel photo)
MIN_FACE_PX = 48  # a face box narrower than this is too small to animate
DETECT_SIDE = 1024  # detection works on at most this many pixels along the longer side
UPSAMPLE_BELOW = 640  # working copies whose longer side is below this are upsampled 2x
THRESHOLD = 0.0  # dlib's HOG score threshold (real faces measured >= 0.87, docs/FACES.md)


@dataclass(frozen=True)
class Face:
    """One detected face: box (x, y, w, h) in image pixels and the detector's score."""

    x: int
    y: int
    w: int
    h: int
    score: float

    @property
    def area(self) -> int:
        return self.w * self.h

    def as_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "score": self.score}


def read_image(path: Path | str) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3); UserInputError when unreadable or too large."""
    path = check_readable_file(Path(path), "image file")
    check_file_size(path)
    return np.asarray(open_rgb(path))


def check_file_size(path: Path | str) -> None:
    """UserInputError when an image file's header gives more than `MAX_PIXELS` (nothing is
    decoded; an unreadable header passes, for `open_rgb` to give the reason)."""
    try:
        with warnings.catch_warnings():  # Pillow warns from 89 megapixels on
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:  # Pillow refuses to open it at all
        bomb = 2 * (Image.MAX_IMAGE_PIXELS or 0) // 1_000_000
        raise UserInputError(
            f"{path} is too large: more than {bomb} megapixels, the limit is "
            f"{MAX_PIXELS // 1_000_000} megapixels (scale it down first)"
        ) from None
    except Exception:  # noqa: BLE001 - open_rgb gives the one-line reason
        width = height = 0
    check_size(width, height, str(path))


def check_size(width: int, height: int, name: str = "the image") -> None:
    """UserInputError when width x height exceeds `MAX_PIXELS`."""
    if width * height > MAX_PIXELS:
        raise UserInputError(
            f"{name} is too large: {width}x{height} pixels, the limit is "
            f"{MAX_PIXELS // 1_000_000} megapixels (scale it down first)"
        )


def detect_faces(image: np.ndarray) -> list[Face]:
    """Every face in an RGB uint8 image (H, W, 3), largest box first."""
    assert image.ndim == 3 and image.shape[2] == 3, f"expected (H, W, 3), got {image.shape}"
    height, width = image.shape[:2]
    check_size(width, height)
    scale = min(1.0, DETECT_SIDE / max(height, width))
    work = image
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        work = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    upsample = 1 if max(work.shape[:2]) < UPSAMPLE_BELOW else 0
    rects, scores, _ = detector().run(np.ascontiguousarray(work), upsample, THRESHOLD)
    pairs = zip(rects, scores, strict=True)
    faces = [_face(rect, score, scale, width, height) for rect, score in pairs]
    return sorted(faces, key=lambda f: (-f.area, -f.score))


def _face(rect, score: float, scale: float, width: int, height: int) -> Face:
    """A dlib rectangle of the working copy as a Face in original pixels, clipped to the image."""
    x0, y0 = max(0.0, rect.left() / scale), max(0.0, rect.top() / scale)
    x1 = min(float(width), (rect.right() + 1) / scale)
    y1 = min(float(height), (rect.bottom() + 1) / scale)
    x, y = round(x0), round(y0)
    return Face(x, y, round(x1) - x, round(y1) - y, round(float(score), 3))


def main_face(image: np.ndarray, name: str = "the image") -> Face:
    """The largest face; UserInputError when there is none or it is under `MIN_FACE_PX`."""
    faces = detect_faces(image)
    if not faces:
        raise UserInputError(f"no face found in {name}")
    face = faces[0]
    if face.w < MIN_FACE_PX:
        raise UserInputError(
            f"the face in {name} is too small: {face.w} pixels wide, at least {MIN_FACE_PX} "
            "are needed (use a closer or larger photo)"
        )
    return face
