"""Is a portrait like the avatars the shipped model learned from? A cheap texture test.

The corpus avatars (`tmrender.data.avatar`) are flat fills and smooth gradients with
anti-aliased edges: at the model's size most pixels have almost no local contrast. A
photograph has texture nearly everywhere (skin, hair, fabric, sensor noise). The test
measures the share of pixels whose grey-level Laplacian |4 p - (4 neighbours)| exceeds
`TEXTURE_LEVEL`, with the image scaled (and cropped) to `ANALYSIS_SIZE` square as
`tmrender.render.image.load_image` does for a model of that size.

Measured here at 128 x 128 (`load_image` of the file): 300 avatars from `draw_avatar`
(sizes 128 to 1024 px, saved as JPEG at quality 60 to 95) have a share of at most 0.58
(99th percentile 0.47); a photographic portrait (matplotlib's grace_hopper.jpg) 0.77,
0.72 after a 1-px Gaussian blur, 0.61 after 2 px. `PHOTO_SHARE` sits between: it flags
ordinary photographs and never an avatar; a very soft photograph may pass unflagged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ANALYSIS_SIZE = 128  # the figures below hold at this size, whatever the model's size
TEXTURE_LEVEL = 3.0  # |Laplacian| of 0..255 grey levels counted as texture
PHOTO_SHARE = 0.65  # share of textured pixels above which a portrait is not avatar-like
LUMA = (0.299, 0.587, 0.114)


def texture_share(rgb: np.ndarray) -> float:
    """Share of pixels (borders excluded) of an RGB uint8 (H, W, 3) image whose grey
    Laplacian exceeds TEXTURE_LEVEL; in [0, 1]."""
    assert rgb.ndim == 3 and rgb.shape[2] == 3, f"expected (H, W, 3), got {rgb.shape}"
    if min(rgb.shape[:2]) < 3:
        return 0.0
    grey = rgb.astype(np.float32) @ np.asarray(LUMA, np.float32)
    lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return float(np.mean(np.abs(lap) > TEXTURE_LEVEL))


def looks_like_avatar(rgb: np.ndarray) -> bool:
    """False for images textured like photographs (see the module docstring)."""
    return texture_share(rgb) <= PHOTO_SHARE


def portrait_looks_like_avatar(path: Path | str, crop=None) -> bool:
    """`looks_like_avatar` of an image file as a model would see it (`crop`: a CropBox or
    None for the centre crop), at ANALYSIS_SIZE."""
    from tmrender.render.image import load_image

    return looks_like_avatar(load_image(path, (ANALYSIS_SIZE, ANALYSIS_SIZE), crop))
