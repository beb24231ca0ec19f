"""Image input: any PNG, JPEG, WebP or BMP becomes RGB uint8 at the model's size.

Handles RGBA and palette transparency (composited on a neutral grey), grayscale, 16-bit and
CMYK images, and EXIF orientation. By default the image is scaled to cover the target and
centre-cropped; an explicit `--crop x,y,w,h` box is cut first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tmrender.errors import UserInputError
from tmrender.media.ffmpeg import check_readable_file

NEUTRAL_BACKGROUND = (128, 128, 128)


@dataclass(frozen=True)
class CropBox:
    """A crop box in source-image pixels, after EXIF orientation is applied."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str) -> CropBox:
        """Parse 'x,y,w,h' (non-negative integers, w and h positive)."""
        parts = [p.strip() for p in text.split(",")]
        try:
            x, y, w, h = (int(p) for p in parts)
        except ValueError:
            raise UserInputError(
                f"--crop must be x,y,w,h in pixels, e.g. 40,0,512,512; got {text!r}"
            ) from None
        if x < 0 or y < 0 or w <= 0 or h <= 0:
            raise UserInputError(f"--crop needs x, y >= 0 and w, h > 0; got {text!r}")
        return cls(x, y, w, h)


def load_image(path: Path | str, size: tuple[int, int], crop: CropBox | None = None) -> np.ndarray:
    """Read an image as RGB uint8 of shape (H, W, 3), where `size` = (H, W).

    The crop box (if any) is cut first, then the image is scaled to cover `size` and
    centre-cropped, so the aspect ratio is never distorted.
    """
    return fit_image(open_rgb(path), size, crop, path)


def fit_image(
    image: Image.Image, size: tuple[int, int], crop: CropBox | None = None, name: object = ""
) -> np.ndarray:
    """An RGB PIL image cut to `crop` (if any; UserInputError, naming `name`, when the box
    leaves the picture), scaled to cover `size` = (H, W) and centre-cropped (LANCZOS) ->
    RGB uint8 (H, W, 3)."""
    if crop is not None:
        if crop.x + crop.w > image.width or crop.y + crop.h > image.height:
            raise UserInputError(
                f"--crop {crop.x},{crop.y},{crop.w},{crop.h} lies outside the "
                f"{image.width}x{image.height} image {name}"
            )
        image = image.crop((crop.x, crop.y, crop.x + crop.w, crop.y + crop.h))
    height, width = size
    fitted = ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)
    return np.asarray(fitted, dtype=np.uint8).copy()


def open_rgb(path: Path | str) -> Image.Image:
    """Open an image file as an 8-bit RGB PIL image, upright; UserInputError if unreadable."""
    path = check_readable_file(Path(path), "image file")
    try:
        with Image.open(path) as image:
            image.seek(0)  # first frame of animated WebP / GIF
            image.load()
            upright = ImageOps.exif_transpose(image)
            return to_rgb8(upright)
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise UserInputError(f"not an image that can be read: {path}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise UserInputError(f"image file is damaged or unsupported: {path} ({err})") from err


def to_rgb8(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited on a neutral grey."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = Image.fromarray(_high_depth_to_uint8(np.asarray(image), image.mode))
    has_alpha = image.mode in ("PA", "LA", "La", "RGBa")
    if has_alpha or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, NEUTRAL_BACKGROUND + (255,))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float grey levels to 0..255 by the range of `mode`."""
    pixels = pixels.astype(np.float64)
    peak = pixels.max() if pixels.size else 0.0
    if mode.startswith("I;16"):
        scale = 65535.0
    elif mode == "F":
        scale = 1.0 if peak <= 1.0 else 255.0
    else:  # "I": 16-bit PNGs open in this mode; 8-bit data occasionally does too
        scale = 65535.0 if peak > 255.0 else 255.0
    return (np.clip(pixels / scale, 0.0, 1.0) * 255.0).round().astype(np.uint8)
