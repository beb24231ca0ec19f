"""Rational-ratio audio resampling in plain numpy (no scipy): a polyphase windowed-sinc filter.

eSpeak NG speaks at 22050 Hz and the project runs at 16 kHz, a ratio of 320/441. Each output
sample `n` sits at input position `n * down / up`; it is the dot product of the input around
that position with one of `up` precomputed filter phases (Kaiser-windowed sinc, cut off just
below the lower of the two Nyquist frequencies).
"""

from __future__ import annotations

import functools
from math import gcd

import numpy as np

HALF_TAPS = 16  # filter half-length in input samples (32 taps per output sample)
KAISER_BETA = 8.0
CUTOFF = 0.94  # fraction of the lower Nyquist frequency kept


@functools.cache
def _phase_table(up: int, down: int, half_taps: int) -> np.ndarray:
    """Filter taps per phase, shape (up, 2 * half_taps), float32; rows sum to 1."""
    scale = min(1.0, up / down) * CUTOFF  # cut-off in cycles per input sample, times 2
    offsets = np.arange(-half_taps + 1, half_taps + 1)  # input index minus floor(position)
    fractions = np.arange(up)[:, None] / up  # position minus floor(position), per phase
    distance = offsets[None, :] - fractions  # input index minus exact position
    window = np.kaiser(2 * half_taps * 64 + 1, KAISER_BETA)
    window_at = np.interp(distance, np.linspace(-half_taps, half_taps, window.size), window)
    taps = scale * np.sinc(scale * distance) * window_at
    taps /= taps.sum(axis=1, keepdims=True)
    return taps.astype(np.float32)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample mono audio, shape (N,) -> (ceil(N * rate_out / rate_in),), float32."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"resample expects mono samples of shape (N,), got {samples.shape}")
    if rate_in == rate_out:
        return samples.copy()
    common = gcd(rate_in, rate_out)
    up, down = rate_out // common, rate_in // common
    n_out = -(-samples.size * up // down)
    table = _phase_table(up, down, HALF_TAPS)
    position = np.arange(n_out, dtype=np.int64) * down  # in units of 1/up input samples
    base, phase = np.divmod(position, up)
    padded = np.pad(samples, (HALF_TAPS, HALF_TAPS + 1))
    offsets = np.arange(-HALF_TAPS + 1, HALF_TAPS + 1)
    out = np.empty(n_out, dtype=np.float32)
    block = 16_384  # bound the (block, taps) gather to a few MB
    for start in range(0, n_out, block):
        stop = min(start + block, n_out)
        index = base[start:stop, None] + offsets[None, :] + HALF_TAPS
        out[start:stop] = np.einsum("nk,nk->n", padded[index], table[phase[start:stop]])
    return out
