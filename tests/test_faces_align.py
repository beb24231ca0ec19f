"""Alignment to the model's framing: the canonical points match the drawn avatars, transforms
invert, warps put a point where the matrix says, and an avatar pasted into a larger picture
at a known offset and scale comes back to the same aligned crop.

The detector finds only some drawn avatars (11 of 20 at 256 px, docs/FACES.md), so the
pasted-avatar test aligns with the avatar's known geometry rather than detected landmarks.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tmrender.data.avatar import AvatarRenderer, neutral_mouth, neutral_pose, sample_appearance
from tmrender.faces.align import (
    CANONICAL,
    Alignment,
    align,
    apply,
    canonical_points,
    fit_similarity,
    invert,
    warp_from_crop,
    warp_to_crop,
)
from tmrender.faces.landmarks import KeyPoints


def avatar_anchors(seed: int) -> np.ndarray:
    """Eye centres and mouth-corner midpoint (3, 2) of avatar `seed`, as fractions of its side."""
    a = sample_appearance(np.random.default_rng(seed))
    eye_y = a.face_y - a.face_h * 0.04
    mouth_y = a.face_y + a.face_h * 0.56 - a.smile
    return np.array([[0.5 - a.eye_gap, eye_y], [0.5 + a.eye_gap, eye_y], [0.5, mouth_y]])


def as_key_points(anchors: np.ndarray) -> KeyPoints:
    """KeyPoints whose eyes and mouth centre are `anchors` (3, 2); the rest is unused here."""
    left, right, mouth = anchors
    half = np.array([10.0, 0.0])
    return KeyPoints(left, right, mouth, mouth - half, mouth + half, mouth, mouth)


def dot_centroid(image: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre (x, y) of a soft bright dot on black, image (H, W, 3)."""
    weight = image[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: weight.shape[0], : weight.shape[1]]
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


def test_canonical_points_are_the_avatars_mean_geometry():
    mean = np.mean([avatar_anchors(seed) for seed in range(500)], axis=0)
    assert np.abs(mean - CANONICAL).max() < 0.002


def test_similarity_fit_recovers_a_known_transform():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -40.0])
    c, s = np.cos(angle), np.sin(angle)
    truth = np.array([[c * scale, -s * scale, shift[0]], [s * scale, c * scale, shift[1]]])
    source = np.array([[10.0, 20.0], [80.0, 25.0], [45.0, 90.0], [30.0, 60.0]])
    assert np.allclose(fit_similarity(source, apply(truth, source)), truth)


def test_align_then_inverse_returns_the_points():
    rng = np.random.default_rng(0)
    tilted = np.array([[4.0, -0.6, 90.0], [0.6, 4.0, 120.0]])  # a face 4x larger, rolled 8.5 deg
    anchors = apply(tilted, canonical_points(128))
    alignment = align(as_key_points(anchors), 128)
    assert np.abs(alignment.to_crop(anchors) - canonical_points(128)).max() < 1e-6
    points = rng.uniform(0, 1000, (50, 2))
    assert np.abs(alignment.to_image(alignment.to_crop(points)) - points).max() < 1e-6
    assert np.allclose(invert(invert(alignment.matrix)), alignment.matrix)


@pytest.mark.parametrize("size", [128, 256])
def test_warps_put_a_dot_where_the_matrix_says(size):
    centre = np.array([301.3, 201.7])
    ys, xs = np.mgrid[:480, :640]
    blob = 255 * np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * 8.0**2))
    image = np.repeat(blob[..., None], 3, axis=2).round().astype(np.uint8)  # a soft dot
    anchors = np.array([[250.0, 180.0], [345.0, 170.0], [305.0, 260.0]])
    alignment = align(as_key_points(anchors), size)
    crop = warp_to_crop(image, alignment)
    expected = alignment.to_crop(centre[None])[0]
    assert np.abs(dot_centroid(crop) - expected).max() < 0.1
    back, coverage = warp_from_crop(crop, alignment, image.shape[:2])
    assert np.abs(dot_centroid(back) - centre).max() < 0.1
    assert coverage[201, 301] == pytest.approx(1.0) and coverage[0, 0] == 0.0


def test_a_pasted_avatar_comes_back_to_the_same_crop():
    seed, side, scale, offset = 7, 256, 1.5, np.array([317, 141])
    look = sample_appearance(np.random.default_rng(seed))
    avatar = AvatarRenderer(look, side).draw(neutral_mouth(), neutral_pose()).pixels
    # 1. the avatar enlarged 1.5x and pasted into a larger textured picture
    pasted_side = round(side * scale)
    big = np.random.default_rng(1).integers(0, 255, (900, 1100, 3)).astype(np.uint8)
    enlarged = Image.fromarray(avatar).resize((pasted_side, pasted_side), Image.Resampling.BICUBIC)
    big[offset[1] : offset[1] + pasted_side, offset[0] : offset[0] + pasted_side] = enlarged
    # 2. its anchors in both pictures (pixel centres at integers)
    anchors = avatar_anchors(seed) * side - 0.5
    pasted = (anchors + 0.5) * scale - 0.5 + offset
    own, found = align(as_key_points(anchors)), align(as_key_points(pasted))
    # 3. the anchors land on the canonical points, and the two crops agree
    assert np.abs(found.to_crop(pasted) - canonical_points()).max() < 1.0
    crop_own, crop_found = warp_to_crop(avatar, own), warp_to_crop(big, found)
    inner = (slice(16, -16), slice(16, -16))  # the avatar, away from the paste's border
    shift = phase_shift(crop_own[inner].mean(axis=2), crop_found[inner].mean(axis=2))
    assert np.abs(shift).max() < 1.0, shift
    assert np.abs(crop_own[inner].astype(int) - crop_found[inner]).mean() < 6


def phase_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The translation (dx, dy) that moves grey image b (H, W) onto a, to a tenth of a pixel:
    the peak of their cross-correlation, interpolated through the Fourier shift theorem."""
    cross = np.fft.fft2(a - a.mean()) * np.conj(np.fft.fft2(b - b.mean()))
    h, w = cross.shape
    ky, kx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    steps = np.arange(-20, 21) / 10  # shifts up to 2 px either way
    grid = [(dx, dy) for dy in steps for dx in steps]
    values = [(cross * np.exp(2j * np.pi * (kx * dx + ky * dy))).sum().real for dx, dy in grid]
    return np.array(grid[int(np.argmax(values))])


def test_alignment_scale_is_crop_pixels_per_image_pixel():
    alignment = Alignment(np.array([[0.0, -2.0, 5.0], [2.0, 0.0, 1.0]]), 128)
    assert alignment.scale == pytest.approx(2.0)
