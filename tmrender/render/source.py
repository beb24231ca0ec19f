"""The picture to render: decoded once, then framed for the model, and the way back.

`load_picture(path, face, crop)` decodes and checks it (before a model is loaded);
`Picture.for_model(size, paste_back)` frames it for a model of that size:

- `crop` (x,y,w,h): that box, scaled to cover the model's size and centre-cropped, as
  always; no face search, no paste-back.
- `face="auto"` on a model-framed portrait (square, like the drawn avatars the model
  learned from (`tmrender.render.portrait`), and either no face found, as with many
  drawn avatars, or its box where the model's framing has faces, or a face too small for
  the face path, as in a 64 px avatar): scaled and
  centre-cropped as before (the same pixels, so the same video, as before faces existed).
- otherwise (any other picture, or `face=N`): the N-th face (largest first, as `tmrender
  faces IMAGE` lists them; auto = the largest) is found, aligned to the model's framing
  (`tmrender.faces`) and rendered; with `paste_back` each rendered frame goes back into the
  picture at its own size, even-rounded (`tmrender.render.paste`).

Bad input is one UserInputError line: no face, a face number past the faces found, a
face too small, an image too large.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tmrender.errors import UserInputError
from tmrender.media.image import CropBox, fit_image
from tmrender.render.paste import PasteBack
from tmrender.render.portrait import ANALYSIS_SIZE, looks_like_avatar

AUTO = "auto"
# a face box whose centre (x, y) and width, as shares of the picture's sides, lie in these
# ranges is model-framed: the drawn avatars' boxes measured 0.475-0.521, 0.496-0.551 and
# 0.414-0.492 (the 84 found of 40 appearances x 128, 256, 512 px); no real portrait of
# shared/realworld/faces falls inside (docs/FACES.md, "Paste-back")
FRAMED_BOX = ((0.45, 0.55), (0.475, 0.575), (0.36, 0.56))


@dataclass(frozen=True)
class Source:
    """What the model is given (S, S, 3) uint8, and what happens to its frames."""

    reference: np.ndarray
    paste: PasteBack | None  # None: the frames are the video
    avatar_like: bool  # the reference looks like the drawn avatars (else: a warning)
    face: int | None = None  # the face rendered (1 = largest), None without a face search

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(width, height) of the video when it differs from the model's frames."""
        return None if self.paste is None else self.paste.size


def parse_face(text: str | int | None) -> str | int:
    """'auto' (or blank) or a face number N >= 1; UserInputError otherwise."""
    if text is None or str(text).strip().lower() in ("", AUTO):
        return AUTO
    try:
        number = int(str(text).strip())
    except ValueError:
        number = 0
    if number < 1:
        raise UserInputError(f"--face must be auto or a face number 1, 2, ...; got {text!r}")
    return number


@dataclass(frozen=True)
class Picture:
    """A decoded picture (H, W, 3) uint8 and how it will be framed: cut to `crop`, fitted
    whole (model-framed), or around face `face` whose 68 landmarks are `points` (68, 2)."""

    rgb: np.ndarray
    name: str
    crop: CropBox | None = None
    face: int | None = None
    points: np.ndarray | None = None

    def for_model(self, size: int, paste_back: bool = True) -> Source:
        """The Source for a model of `size` x `size`."""
        from tmrender.faces import align, warp_to_crop

        if self.points is None:
            return Source(fit(self.rgb, size, self.crop, self.name), None, self.avatar_like())
        alignment = align(self.points, size)
        reference = warp_to_crop(self.rgb, alignment)
        paste = PasteBack(self.rgb, alignment, reference) if paste_back else None
        return Source(reference, paste, self.avatar_like(), self.face)

    def avatar_like(self) -> bool:
        """Whether the picture, as it will be rendered (the aligned face on the face path,
        else the scaled and cropped picture), looks like the drawn avatars the model
        learned from (`tmrender.render.portrait`; else generate and batch warn)."""
        from tmrender.faces import align, warp_to_crop

        if self.points is None:
            return looks_like_avatar(fit(self.rgb, ANALYSIS_SIZE, self.crop, self.name))
        return looks_like_avatar(warp_to_crop(self.rgb, align(self.points, ANALYSIS_SIZE)))


def load_picture(path: Path | str, face: str | int = AUTO, crop: CropBox | None = None) -> Picture:
    """Decode the picture once, check it (one-line UserInputError) and find its face when
    it needs one (module doc)."""
    from tmrender.faces import detect, landmarks, read_image

    rgb, name = read_image(path), str(path)
    if crop is not None:
        fit(rgb, 2, crop, name)  # the box lies inside the picture
        return Picture(rgb, name, crop=crop)
    faces = None
    if face == AUTO and square_avatar(rgb):
        faces = detect.detect_faces(rgb)
        if not faces or framed(faces[0], rgb.shape[:2]) or faces[0].w < detect.MIN_FACE_PX:
            return Picture(rgb, name)  # a drawn avatar: missed, model-framed, or tiny
    number = 1 if face == AUTO else int(face)
    box = pick_face(rgb, number, name, faces)
    return Picture(rgb, name, face=number, points=landmarks(rgb, box))


def load_source(
    path: Path | str,
    size: int,
    face: str | int = AUTO,
    crop: CropBox | None = None,
    paste_back: bool = True,
) -> Source:
    """`load_picture(...).for_model(size, paste_back)`."""
    return load_picture(path, face, crop).for_model(size, paste_back)


def square_avatar(rgb: np.ndarray) -> bool:
    """A square picture like the drawn avatars (`tmrender.render.portrait`)."""
    height, width = rgb.shape[:2]
    return height == width and looks_like_avatar(fit(rgb, ANALYSIS_SIZE))


def framed(box, shape: tuple[int, int]) -> bool:
    """Whether a detected face box (`tmrender.faces.Face`) in a picture of `shape` (H, W)
    sits where the model's framing has faces: centre and width, as shares of the sides,
    within `FRAMED_BOX`."""
    height, width = shape
    centre_x, centre_y = (box.x + box.w / 2) / width, (box.y + box.h / 2) / height
    share = box.w / width
    (x0, x1), (y0, y1), (w0, w1) = FRAMED_BOX
    return x0 <= centre_x <= x1 and y0 <= centre_y <= y1 and w0 <= share <= w1


def pick_face(rgb: np.ndarray, number: int, name: str, faces: list | None = None):
    """The `number`-th face box (1 = largest) of a picture; one-line UserInputError when
    there is none, too few, or it is too small."""
    from tmrender.faces import detect

    faces = detect.detect_faces(rgb) if faces is None else faces
    if not faces:
        raise UserInputError(f"no face found in {name}; pass --crop x,y,w,h to choose a region")
    if number > len(faces):
        found = f"{len(faces)} face" + ("s" if len(faces) > 1 else "")
        raise UserInputError(
            f"face {number} asked for, but only {found} found in {name} "
            f"(tmrender faces {name} lists them)"
        )
    box = faces[number - 1]
    if box.w < detect.MIN_FACE_PX:
        raise UserInputError(
            f"face {number} in {name} is too small: {box.w} pixels wide, at least "
            f"{detect.MIN_FACE_PX} are needed (use a closer or larger photo)"
        )
    return box


def fit(rgb: np.ndarray, size: int, crop: CropBox | None = None, name: object = "") -> np.ndarray:
    """An RGB uint8 picture cut to `crop` (if any), scaled to cover size x size and
    centre-cropped, with `load_image`'s pixels -> (S, S, 3)."""
    return fit_image(Image.fromarray(rgb), (size, size), crop, name)
