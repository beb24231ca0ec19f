"""MFCC as SyncNet's evaluation computes them: the defaults of `python_speech_features.mfcc`
(which joonson/syncnet_python calls on 16 kHz int16 audio), in numpy, with no extra package.

Per frame of 25 ms every 10 ms (400 / 160 samples at 16 kHz, no window function; the
signal is zero-padded at the end to fill the last frame): pre-emphasis 0.97, power spectrum
|rfft_512|^2 / 512, 26 triangular mel filters from 0 Hz to Nyquist on FFT bins
floor(513 * f / rate), log, orthonormal DCT-II, the first 13 cepstra, lifter 22, and c0
replaced by the log of the frame's total power (`appendEnergy=True`).
"""

from __future__ import annotations

import math

import numpy as np

WINDOW_SECONDS = 0.025
STEP_SECONDS = 0.010
CEPSTRA = 13
FILTERS = 26
FFT_SIZE = 512
PREEMPHASIS = 0.97
LIFTER = 22
_TINY = np.finfo(np.float64).eps  # replaces zero energies before the log


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(rate: int, filters: int = FILTERS, fft_size: int = FFT_SIZE) -> np.ndarray:
    """(filters, fft_size // 2 + 1) triangles between mel-spaced FFT bins, 0 Hz to rate / 2;
    each rises from 0 at its lower edge bin to 1 at its centre bin and falls to 0 at its
    upper edge bin (the edge bin itself excluded)."""
    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(rate / 2), filters + 2)
    edges = np.floor((fft_size + 1) * mel_to_hz(mels) / rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    k = np.arange(fft_size // 2 + 1, dtype=np.float64)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = np.where((k >= lo) & (k < mid), (k - lo) / (mid - lo), 0.0)
        falling = np.where((k >= mid) & (k < hi), (hi - k) / (hi - mid), 0.0)
    return rising + falling


def frame_signal(signal: np.ndarray, length: int, step: int) -> np.ndarray:
    """(F, length) frames every `step` samples; the end zero-padded to fill the last frame
    (F = 1 + ceil((N - length) / step), at least 1)."""
    n = signal.size
    count = 1 if n <= length else 1 + math.ceil((n - length) / step)
    padded = np.zeros((count - 1) * step + length, np.float64)
    padded[:n] = signal
    starts = np.arange(count)[:, None] * step
    return padded[starts + np.arange(length)[None, :]]


def dct_matrix(size: int, keep: int) -> np.ndarray:
    """(size, keep): x @ M is the orthonormal DCT-II of x's rows, first `keep` coefficients."""
    n = np.arange(size)[:, None]
    k = np.arange(keep)[None, :]
    m = np.cos(np.pi * k * (2 * n + 1) / (2 * size)) * np.sqrt(2.0 / size)
    m[:, 0] /= np.sqrt(2.0)
    return m


def mfcc(signal: np.ndarray, rate: int = 16_000) -> np.ndarray:
    """(F, 13) float64 MFCC of a mono signal (N,) on the int16 scale (as syncnet_python reads
    its WAV: the level matters for c0, the log energy), F = 1 + ceil((N - 400) / 160)."""
    x = np.asarray(signal, np.float64).reshape(-1)
    x = np.concatenate([x[:1], x[1:] - PREEMPHASIS * x[:-1]])
    frames = frame_signal(x, round(WINDOW_SECONDS * rate), round(STEP_SECONDS * rate))
    power = np.abs(np.fft.rfft(frames, FFT_SIZE, axis=1)) ** 2 / FFT_SIZE
    energy = power.sum(axis=1)
    bands = power @ mel_filterbank(rate).T
    bands = np.where(bands == 0, _TINY, bands)
    cepstra = np.log(bands) @ dct_matrix(FILTERS, CEPSTRA)
    cepstra *= 1.0 + (LIFTER / 2.0) * np.sin(np.pi * np.arange(CEPSTRA) / LIFTER)
    cepstra[:, 0] = np.log(np.where(energy == 0, _TINY, energy))
    return cepstra


def to_int16_scale(audio: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as the 16-bit PCM values a WAV of them holds (float64)."""
    return (np.clip(np.asarray(audio, np.float64), -1.0, 1.0) * 32767.0).round()
