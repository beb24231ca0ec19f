"""Is a portrait like the avatars the shipped model learned from? A cheap texture test.

The corpus avatars (`tmrender.data.avatar`) are flat fills and smooth gradients with
anti-aliased edges: most pixels have no local contrast at all, and edges are lines, so
their share of the pixels halves each time the image doubles in size. A photograph has
texture nearly everywhere (skin, hair, fabric, sensor noise). The test measures, on the
image scaled (and cropped) to `ANALYSIS_SIZE` square as `tmrender.media.image.load_image`
scales it for a model, the share of pixels whose grey-level Laplacian
|4 p - (4 neighbours)| exceeds `TEXTURE_LEVEL`. A portrait is avatar-like when that share
is at most `PHOTO_SHARE` and its grey levels vary at all (standard deviation at least
`MIN_CONTRAST`: a flat single colour is no portrait).

Calibrated at 256 x 256 on 200 seeds of `draw_avatar` (PNG and JPEG) and on the sample
photographs of scikit-image and matplotlib; the figures are in docs/EXPERIMENTS.md ("The
portrait check's calibration").
`PHOTO_SHARE` sits between the avatars and the photographs; very soft or tiny upscaled
photographs (a 25 px face) pass unflagged. The test is a hint for a warning, not a gate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ANALYSIS_SIZE = 256  # the figures above hold at this size, whatever the model's size
TEXTURE_LEVEL = 1.0  # |Laplacian| of 0..255 grey levels counted as texture
PHOTO_SHARE = 0.66  # share of textured pixels above which a portrait is not avatar-like
MIN_CONTRAST = 4.0  # grey-level standard deviation below which an image is blank
LUMA = (0.299, 0.587, 0.114)


def grey_levels(rgb: np.ndarray) -> np.ndarray:
    """Luma of an RGB uint8 (H, W, 3) image as float32 (H, W), 0..255."""
    assert rgb.ndim == 3 and rgb.shape[2] == 3, f"expected (H, W, 3), got {rgb.shape}"
    return rgb.astype(np.float32) @ np.asarray(LUMA, np.float32)


def texture_share(rgb: np.ndarray) -> float:
    """Share of pixels (borders excluded) of an RGB uint8 (H, W, 3) image whose grey
    Laplacian exceeds TEXTURE_LEVEL; in [0, 1]."""
    grey = grey_levels(rgb)
    if min(grey.shape) < 3:
        return 0.0
    lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return float(np.mean(np.abs(lap) > TEXTURE_LEVEL))


def contrast(rgb: np.ndarray) -> float:
    """Standard deviation of the grey levels (0..255) of an RGB uint8 (H, W, 3) image."""
    return float(grey_levels(rgb).std())


def looks_like_avatar(rgb: np.ndarray) -> bool:
    """True for an RGB uint8 (H, W, 3) image, at ANALYSIS_SIZE, that is neither blank nor
    textured like a photograph (see the module docstring)."""
    return contrast(rgb) >= MIN_CONTRAST and texture_share(rgb) <= PHOTO_SHARE


def portrait_looks_like_avatar(path: Path | str, crop=None) -> bool:
    """`looks_like_avatar` of an image file as a model would see it (`crop`: a CropBox or
    None for the centre crop), at ANALYSIS_SIZE."""
    from tmrender.media.image import load_image

    return looks_like_avatar(load_image(path, (ANALYSIS_SIZE, ANALYSIS_SIZE), crop))
