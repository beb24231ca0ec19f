"""Metric functions of the evaluation suite on synthetic arrays with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tmrender.eval import metrics
from tmrender.eval.suite import drift, trend


def smooth_curve(n: int, seed: int = 0) -> np.ndarray:
    """A random curve that looks like a mouth opening track: smoothed noise, (n,)."""
    rng = np.random.default_rng(seed)
    raw = rng.random(n + 8)
    return np.convolve(raw, np.ones(5) / 5, mode="valid")[:n]


# -- Pearson and offset ----------------------------------------------------------------------


def test_pearson_known_answers():
    a = smooth_curve(200)
    assert metrics.pearson(a, a) == pytest.approx(1.0)
    assert metrics.pearson(a, -a) == pytest.approx(-1.0)
    assert metrics.pearson(a, 3 * a + 2) == pytest.approx(1.0)
    b = smooth_curve(200, seed=1)
    assert metrics.pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)


def test_pearson_of_a_constant_curve_is_zero_and_of_one_frame_nan():
    assert metrics.pearson(np.full(50, 0.3), smooth_curve(50)) == 0.0
    assert math.isnan(metrics.pearson(np.ones(1), np.ones(1)))


@pytest.mark.parametrize("shift", [-4, -1, 0, 2, 5])
def test_av_offset_recovers_a_shift(shift):
    truth = smooth_curve(300, seed=3)
    generated = np.roll(truth, shift)  # generated[t] = truth[t - shift]: video late by `shift`
    assert metrics.av_offset(generated, truth, max_lag=5) == shift
    curve = metrics.lagged_pearson(generated, truth, max_lag=5)
    assert curve.shape == (11,) and curve[shift + 5] == pytest.approx(1.0, abs=0.05)


def test_av_offset_of_a_flat_curve_is_undefined():
    assert metrics.av_offset(np.zeros(100), smooth_curve(100)) is None


# -- PSNR, SSIM and masks --------------------------------------------------------------------


def frames(seed: int = 0, t: int = 3, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 230, (t, size, size, 3), dtype=np.uint8)


def test_psnr_known_answers():
    a = frames()
    assert np.all(metrics.psnr(a, a) == metrics.PSNR_CAP_DB)
    b = a + np.uint8(5)  # every pixel off by 5: mse 25
    expected = 10 * math.log10(255**2 / 25)
    assert metrics.psnr(b, a) == pytest.approx(np.full(3, expected), abs=1e-4)


def test_psnr_ignores_masked_pixels():
    a = frames()
    b = a.copy()
    b[:, :8, :8] = 0  # a damaged corner...
    mask = np.ones(a.shape[:3], bool)
    mask[:, :8, :8] = False  # ...masked out
    assert np.all(metrics.psnr(b, a, mask) == metrics.PSNR_CAP_DB)
    assert np.all(metrics.psnr(b, a) < 30)


def test_ssim_known_answers():
    a = frames()
    assert metrics.ssim(a, a) == pytest.approx(np.ones(3), abs=1e-5)
    # two flat images: only the luminance term remains, (2 xy + c1) / (x^2 + y^2 + c1)
    x, y = np.full((1, 24, 24, 3), 100, np.uint8), np.full((1, 24, 24, 3), 150, np.uint8)
    c1 = (metrics.SSIM_K1 * 255) ** 2
    expected = (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)
    assert metrics.ssim(x, y)[0] == pytest.approx(expected, rel=1e-4)
    noise = np.random.default_rng(1).normal(0, 1, a.shape)
    light, heavy = (np.clip(a + k * noise, 0, 255).astype(np.uint8) for k in (5, 80))
    assert np.all(metrics.ssim(heavy, a) < metrics.ssim(light, a))
    assert np.all(metrics.ssim(heavy, a) < 0.7)


def reference_ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM written out in float64 numpy: a full 11x11 Gaussian window slid over the
    mirror-padded image of each channel; (H, W), the channel mean."""
    from numpy.lib.stride_tricks import sliding_window_view

    size, sigma = metrics.SSIM_WINDOW, metrics.SSIM_SIGMA
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def blur(z):
        padded = np.pad(z, size // 2, mode="reflect")
        return np.einsum("ijkl,kl->ij", sliding_window_view(padded, (size, size)), window)

    c1, c2 = (metrics.SSIM_K1 * 255) ** 2, (metrics.SSIM_K2 * 255) ** 2
    maps = []
    for c in range(3):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        ma, mb = blur(a), blur(b)
        va, vb, cab = blur(a * a) - ma**2, blur(b * b) - mb**2, blur(a * b) - ma * mb
        maps.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return np.mean(maps, axis=0)


def test_ssim_matches_an_independent_implementation():
    a = frames(seed=4, t=2)
    b = np.clip(a + np.random.default_rng(5).normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    ours = metrics.ssim_map(b, a)
    for i in range(2):
        assert ours[i] == pytest.approx(reference_ssim(b[i], a[i]), abs=1e-3)


def test_ssim_respects_the_mask():
    a = frames(t=2, size=48)
    b = a.copy()
    b[:, 30:, 30:] = 255 - b[:, 30:, 30:]
    mask = np.ones(a.shape[:3], bool)
    mask[:, 20:, 20:] = False  # the damage plus the SSIM window's reach
    assert metrics.ssim(b, a, mask) == pytest.approx(np.ones(2), abs=1e-5)
    assert np.all(metrics.ssim(b, a) < 0.9)


def test_box_mask_excludes_the_grown_box_and_extends_down():
    boxes = np.array([[10, 10, 20, 14], [0, 0, 4, 4]])
    mask = metrics.box_mask(boxes, 32, 32, dilate=2, down_to=np.array([18, 0]))
    assert mask.shape == (2, 32, 32) and mask.dtype == bool
    assert (~mask[0]).sum() == (22 - 8) * (20 - 8)  # x 8..22, y 8..20 (chin at 18, +2)
    assert (~mask[1]).sum() == 6 * 6  # clipped at the frame edge


# -- motion, pauses, drift -------------------------------------------------------------------


def test_motion_ratio():
    truth = frames(t=6)
    assert metrics.motion_ratio(truth, truth) == pytest.approx(1.0)
    still = np.broadcast_to(truth[:1], truth.shape)
    assert metrics.motion_ratio(still, truth) == 0.0
    assert math.isnan(metrics.motion_ratio(truth, still))
    assert metrics.frame_motion(truth).shape == (5,)


def test_pause_frames_trims_the_ends():
    # 640 samples per frame; a pause over frames 0..9 and one over 20..29, speech between
    phonemes = [["_", 0, 6400, 0], ["a", 6400, 12800, 2], ["_:", 12800, 19200, 0]]
    quiet = metrics.pause_frames(phonemes, 30, 640, trim=2)
    assert np.flatnonzero(quiet).tolist() == [*range(2, 8), *range(22, 28)]


def test_drift_is_relative_change_but_absolute_for_the_pause_opening():
    first = {"sync_r": 0.9, "psnr": 30.0, "silence_open": 0.01, "ssim": 0.0}
    last = {"sync_r": 0.81, "psnr": 30.3, "silence_open": 0.03, "ssim": 0.5}
    out = drift(first, last)
    assert out["sync_r"] == pytest.approx(-0.1) and out["psnr"] == pytest.approx(0.01)
    assert out["silence_open"] == pytest.approx(0.02)
    assert out["ssim"] is None  # relative to zero: undefined
    assert out["motion_ratio"] is None  # not measured


def test_trend_fits_a_line_through_all_windows():
    line = [{"psnr": 30.0 - 0.5 * i, "silence_open": 0.01 * i, "sync_r": 0.9} for i in range(5)]
    out = trend(line)
    assert out["psnr"] == pytest.approx(-2.0 / 30.0, abs=1e-5)  # relative: 30 -> 28
    assert out["silence_open"] == pytest.approx(0.04, abs=1e-5)  # absolute: 0 -> 0.04
    assert out["sync_r"] == 0.0 and out["motion_ratio"] is None  # flat; never measured
    # content noise about a gentle slope: the two ends alone say -20%, the line -8%
    noisy = [{"motion_ratio": v} for v in (1.0, 0.9, 1.1, 1.1, 0.9, 1.1, 1.2, 0.9, 1.0, 0.8)]
    assert drift(noisy[0], noisy[-1])["motion_ratio"] == pytest.approx(-0.2)
    assert trend(noisy)["motion_ratio"] == pytest.approx(-0.084, abs=1e-3)
    assert trend(line[:2])["psnr"] is None  # fewer than 3 windows


def test_laplacian_energy_sees_blur():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    blurred = ((sharp[:, :-1].astype(int) + sharp[:, 1:]) // 2).astype(np.uint8)
    assert metrics.laplacian_energy(np.full((1, 8, 8, 3), 9, np.uint8)) == 0
    assert metrics.laplacian_energy(blurred) < 0.6 * metrics.laplacian_energy(sharp)
