"""Metric functions of `tmrender eval`: pure numpy/torch on arrays, no files.

Frames are numpy uint8 `(T, H, W, 3)`, masks bool `(T, H, W)` (True = counted), curves
float `(T,)` per video frame (25 fps).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

PSNR_CAP_DB = 100.0  # PSNR of identical frames (instead of infinity)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


# -- curves ----------------------------------------------------------------------------------


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two (T,) curves; 0.0 when either is constant (a still mouth
    carries no linear relation to anything), nan when T < 2."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    assert a.shape == b.shape, f"curves differ in length: {a.shape} vs {b.shape}"
    if a.size < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    if denom < 1e-12 * a.size:
        return 0.0
    return float(a @ b) / denom


def lagged_pearson(generated: np.ndarray, truth: np.ndarray, max_lag: int = 5) -> np.ndarray:
    """r between generated[t + lag] and truth[t] over the overlap, for lag in
    -max_lag..max_lag; shape (2 max_lag + 1,). A positive lag means the video is late."""
    n = len(truth)
    out = np.zeros(2 * max_lag + 1)
    for i, lag in enumerate(range(-max_lag, max_lag + 1)):
        lo, hi = max(0, -lag), min(n, n - lag)
        out[i] = pearson(generated[lo + lag : hi + lag], truth[lo:hi]) if hi - lo > 1 else 0.0
    return out


def av_offset(generated: np.ndarray, truth: np.ndarray, max_lag: int = 5) -> int | None:
    """The lag in frames (-max_lag..max_lag) that best aligns generated with truth by
    cross-correlation (`lagged_pearson`); positive = the video lags behind the audio.
    Ties go to the smallest |lag|; None when no lag correlates at all (a flat curve: a
    mouth that never moves has no offset, rather than a perfect one)."""
    curve = lagged_pearson(generated, truth, max_lag)
    if not np.any(curve != 0.0):
        return None
    lags = np.arange(-max_lag, max_lag + 1)
    best = curve.max()
    candidates = lags[np.isclose(curve, best, rtol=0, atol=1e-9)]
    return int(candidates[np.argmin(np.abs(candidates))])


# -- appearance ------------------------------------------------------------------------------


def box_mask(
    boxes: np.ndarray, height: int, width: int, dilate: int, down_to: np.ndarray | None = None
) -> np.ndarray:
    """Bool (T, H, W) True outside the boxes (T, 4) x0, y0, x1, y1 grown by `dilate` px.

    `down_to` (T,) optionally extends each box down to that row (the chin moves with the
    jaw, so it belongs to the mouth region too)."""
    t = len(boxes)
    x0 = np.clip(boxes[:, 0] - dilate, 0, width)
    y0 = np.clip(boxes[:, 1] - dilate, 0, height)
    x1 = np.clip(boxes[:, 2] + dilate, 0, width)
    bottom = boxes[:, 3] if down_to is None else np.maximum(boxes[:, 3], down_to)
    y1 = np.clip(bottom + dilate, 0, height)
    ys, xs = np.arange(height)[None, :, None], np.arange(width)[None, None, :]
    inside = (
        (ys >= y0.reshape(t, 1, 1))
        & (ys < y1.reshape(t, 1, 1))
        & (xs >= x0.reshape(t, 1, 1))
        & (xs < x1.reshape(t, 1, 1))
    )
    return ~inside


def masked_mse(
    generated: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Per-frame mean squared error (T,) over the masked pixels (all channels), 0..255 units."""
    assert generated.shape == truth.shape, f"{generated.shape} vs {truth.shape}"
    diff = (generated.astype(np.float32) - truth.astype(np.float32)) ** 2  # (T, H, W, 3)
    if mask is None:
        return diff.reshape(len(diff), -1).mean(1)
    weight = mask[..., None].astype(np.float32)
    total = weight.reshape(len(diff), -1).sum(1) * 3
    return (diff * weight).reshape(len(diff), -1).sum(1) / np.maximum(total, 1)


def psnr_from_mse(mse: np.ndarray | float) -> np.ndarray:
    """PSNR in dB of 8-bit images from their MSE, capped at `PSNR_CAP_DB` (MSE 0)."""
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(255.0**2 / np.asarray(mse, np.float64)), PSNR_CAP_DB)


def psnr(generated: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-frame PSNR in dB (T,) over the masked pixels, capped for identical frames."""
    return psnr_from_mse(masked_mse(generated, truth, mask))


@functools.lru_cache(maxsize=8)
def _blur_matrix(n: int) -> torch.Tensor:
    """(n, n) matrix M such that M @ z blurs z along its rows' axis with the SSIM Gaussian
    window, mirror-reflected at the edges (as `F.pad(mode="reflect")`); a dense matmul is
    much faster on CPUs than a depthwise convolution."""
    half = SSIM_WINDOW // 2
    offsets = np.arange(-half, half + 1)
    g = np.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    g /= g.sum()
    m = np.zeros((n, n), np.float64)
    for i in range(n):
        j = np.abs(i + offsets)  # reflect at 0
        j = np.where(j > n - 1, 2 * (n - 1) - j, j)  # reflect at n - 1
        np.add.at(m[i], j, g)
    return torch.from_numpy(m.astype(np.float32))


def ssim_map(generated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """SSIM (Wang et al. 2004, eq. 13; Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) per
    pixel, averaged over the 3 channels: float32 (T, H, W) (reflect-padded at the edges)."""
    assert generated.shape == truth.shape, f"{generated.shape} vs {truth.shape}"
    assert min(generated.shape[1:3]) > SSIM_WINDOW // 2, "frames too small for SSIM"
    x = torch.tensor(generated).permute(0, 3, 1, 2).float()  # (T, 3, H, W), a copy
    y = torch.tensor(truth).permute(0, 3, 1, 2).float()
    mh, mw = _blur_matrix(x.shape[2]), _blur_matrix(x.shape[3])

    def blur(z: torch.Tensor) -> torch.Tensor:
        return mh @ z @ mw.T

    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(1).numpy()


def ssim(
    generated: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, batch: int = 128
) -> np.ndarray:
    """Per-frame SSIM (T,): the SSIM map averaged over the masked pixels."""
    out = []
    for i in range(0, len(truth), batch):
        s = ssim_map(generated[i : i + batch], truth[i : i + batch])
        if mask is None:
            out.append(s.reshape(len(s), -1).mean(1))
        else:
            m = mask[i : i + batch].astype(np.float32)
            out.append(
                (s * m).reshape(len(s), -1).sum(1) / np.maximum(m.reshape(len(s), -1).sum(1), 1)
            )
    return np.concatenate(out) if out else np.zeros(0, np.float32)


# -- motion ----------------------------------------------------------------------------------


def laplacian_energy(frames: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey frames (T, H, W, 3) uint8 (borders
    left out), pooled over frames: the high-frequency energy of a picture."""
    grey = frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    lap = (
        grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:]
        - 4 * grey[:, 1:-1, 1:-1]
    )  # fmt: skip
    return float(lap.var(axis=(1, 2)).mean())


def frame_motion(frames: np.ndarray, batch: int = 128) -> np.ndarray:
    """Mean absolute difference between consecutive frames, (T - 1,), in 0..255 units."""
    out = []
    for i in range(0, max(len(frames) - 1, 0), batch):
        a = frames[i : i + batch + 1].astype(np.int16)
        out.append(np.abs(np.diff(a, axis=0)).reshape(len(a) - 1, -1).mean(1))
    return np.concatenate(out) if out else np.zeros(0)


def motion_ratio(generated: np.ndarray, truth: np.ndarray) -> float:
    """Frame-to-frame change of generated relative to the truth's (1 = as lively as the
    truth, 0 = frozen, > 1 = flicker); nan when the truth does not move."""
    true_motion = float(frame_motion(truth).mean()) if len(truth) > 1 else 0.0
    if true_motion <= 1e-9:
        return float("nan")
    return float(frame_motion(generated).mean()) / true_motion


# -- silence ---------------------------------------------------------------------------------


def pause_frames(
    phonemes: list, n_frames: int, samples_per_frame: int, trim: int = 3
) -> np.ndarray:
    """Bool (T,) frames whose centre lies inside a pause phoneme ("_..."), at least `trim`
    frames away from its ends (coarticulation opens the mouth ahead of speech)."""
    out = np.zeros(n_frames, bool)
    centres = (np.arange(n_frames) + 0.5) * samples_per_frame
    for name, start, end, *_ in phonemes:
        if str(name).startswith("_"):
            inside = np.flatnonzero((centres >= start) & (centres < end))
            if len(inside) > 2 * trim:
                out[inside[trim : len(inside) - trim]] = True
    return out
