"""Audio augmentations of the audio stage: what real recordings do to clean speech.

Every tensor function takes waveforms `wav (B, N)` float32 at `sample_rate` on any device,
draws its randomness from a `torch.Generator` on that device (or takes per-sample
parameters as `(B,)` tensors) and returns `(B, N)`. Lengths never change, so the frame
targets of the corpus stay aligned sample for sample.

- noise at a given SNR (white, pink, babble), reverberation (synthetic exponentially
  decaying room impulse responses), band-limiting (the telephone band), gain with clipping,
  FFT resampling (the speed/pitch perturbation of `tmrender.train.audio`);
- lossy codec round trips (MP3, Opus, AAC) through the bundled ffmpeg binary: slow, so the
  audio stage computes them once per training clip (a cached pool), not per step.

SNR convention: the ratio of the clean clip's mean power (pauses included) to the noise's.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tmrender.errors import MediaError
from tmrender.media.ffmpeg import ffmpeg_command, last_error_line

MAX_REVERB_S = 0.6  # impulse responses are cut here (-45 dB at rt60 0.8 s)

# -- noise ---------------------------------------------------------------------------------


def unit_power(noise: Tensor) -> Tensor:
    """Scale each row of noise (B, N) to mean power 1."""
    return noise / noise.square().mean(1, keepdim=True).clamp_min(1e-12).sqrt()


def white_noise(batch: int, samples: int, gen: torch.Generator) -> Tensor:
    """Gaussian white noise (batch, samples) of unit power, on gen's device."""
    return torch.randn(batch, samples, generator=gen, device=gen.device)


def pink_noise(batch: int, samples: int, gen: torch.Generator) -> Tensor:
    """Noise (batch, samples) with a 1/f power spectrum (-3 dB per octave), unit power."""
    spectrum = torch.fft.rfft(white_noise(batch, samples, gen))
    freqs = torch.arange(spectrum.shape[1], device=spectrum.device).clamp_min(1)
    return unit_power(torch.fft.irfft(spectrum / freqs.sqrt(), n=samples))


def babble(voices: Tensor, active: Tensor) -> Tensor:
    """Babble from other speech: voices (B, K, N), active (B, K) bool -> (B, N) unit power
    (each active voice at unit power first, so no voice dominates by its loudness)."""
    assert voices.ndim == 3 and active.shape == voices.shape[:2], "voices (B, K, N), active (B, K)"
    levelled = unit_power(voices.flatten(0, 1)).view_as(voices)
    return unit_power((levelled * active[..., None]).sum(1))


def add_noise(wav: Tensor, noise: Tensor, snr_db: Tensor, signal_power: Tensor) -> Tensor:
    """wav (B, N) + unit-power noise (B, N) scaled to `snr_db` (B,) below `signal_power` (B,)."""
    scale = (signal_power / 10.0 ** (snr_db / 10.0)).sqrt()
    return wav + scale[:, None] * noise


# -- room, channel, level ------------------------------------------------------------------


def room_impulse_responses(
    rt60: Tensor, drr_db: Tensor, length: int, sample_rate: int, gen: torch.Generator
) -> Tensor:
    """Synthetic room impulse responses (B, length): a unit direct path at t = 0 followed,
    after 2 ms, by Gaussian noise whose energy decays by 60 dB in `rt60` (B,) seconds; the
    tail's energy sits `drr_db` (B,) below the direct path (direct-to-reverberant ratio)."""
    t = torch.arange(length, device=rt60.device) / sample_rate
    envelope = torch.exp(-3.0 * math.log(10.0) * t[None] / rt60[:, None])  # amplitude: -60 dB
    tail = white_noise(rt60.shape[0], length, gen) * envelope
    tail[:, : max(1, int(0.002 * sample_rate))] = 0.0
    tail_energy = tail.square().sum(1, keepdim=True).clamp_min(1e-12)
    tail = tail * (10.0 ** (-drr_db[:, None] / 10.0) / tail_energy).sqrt()
    tail[:, 0] = 1.0
    return tail


def convolve(wav: Tensor, impulse: Tensor) -> Tensor:
    """Causal convolution of wav (B, N) with impulse responses (B, L), truncated to N."""
    n = 1 << (wav.shape[1] + impulse.shape[1] - 2).bit_length()  # >= N + L - 1, FFT-friendly
    spectrum = torch.fft.rfft(wav, n=n) * torch.fft.rfft(impulse, n=n)
    return torch.fft.irfft(spectrum, n=n)[:, : wav.shape[1]]


def reverberate(
    wav: Tensor, rt60: Tensor, drr_db: Tensor, sample_rate: int, gen: torch.Generator
) -> Tensor:
    """wav (B, N) in a synthetic room (`room_impulse_responses`), at its original RMS level.
    The direct path is at lag 0, so the speech keeps its timing."""
    length = int(min(MAX_REVERB_S, float(rt60.max())) * sample_rate)
    wet = convolve(wav, room_impulse_responses(rt60, drr_db, length, sample_rate, gen))
    gain = wav.square().mean(1, keepdim=True).sqrt() / wet.square().mean(1, keepdim=True).sqrt()
    return wet * torch.nan_to_num(gain, nan=1.0, posinf=1.0)


def band_limit(
    wav: Tensor, low_hz: Tensor, high_hz: Tensor, sample_rate: int, edge_hz: float = 100.0
) -> Tensor:
    """Keep the band [low_hz, high_hz] (B,) of wav (B, N), with raised-cosine edges of
    `edge_hz` (zero phase: no delay). 300-3400 Hz is the telephone band."""
    spectrum = torch.fft.rfft(wav)
    freqs = torch.fft.rfftfreq(wav.shape[1], 1.0 / sample_rate).to(wav.device)[None]

    def ramp(x: Tensor) -> Tensor:  # 0 below -edge/2, 1 above +edge/2
        return 0.5 - 0.5 * torch.cos(math.pi * ((x / edge_hz) + 0.5).clamp(0.0, 1.0))

    mask = ramp(freqs - low_hz[:, None]) * ramp(high_hz[:, None] - freqs)
    return torch.fft.irfft(spectrum * mask, n=wav.shape[1])


def apply_gain(wav: Tensor, gain_db: Tensor) -> Tensor:
    """wav (B, N) times 10^(gain_db / 20) (B,), clipped to [-1, 1] like a real converter."""
    return (wav * 10.0 ** (gain_db[:, None] / 20.0)).clamp(-1.0, 1.0)


def resample_fft(wav: Tensor, samples: int) -> Tensor:
    """Band-limited resampling of wav (B, M) to (B, samples) over the same time span
    (spectrum truncated or zero-padded). Treats the rows as periodic: give margins."""
    m = wav.shape[1]
    spectrum = torch.fft.rfft(wav)
    bins = samples // 2 + 1
    if spectrum.shape[1] >= bins:
        spectrum = spectrum[:, :bins]
    else:
        spectrum = torch.nn.functional.pad(spectrum, (0, bins - spectrum.shape[1]))
    return torch.fft.irfft(spectrum, n=samples) * (samples / m)


# -- codec round trips (ffmpeg) ------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """One lossy encoding: ffmpeg encoder arguments and container format."""

    name: str
    encoder: tuple[str, ...]
    container: str


CODECS: tuple[Codec, ...] = (
    Codec("mp3-24k", ("-c:a", "libmp3lame", "-b:a", "24k"), "mp3"),
    Codec("mp3-48k", ("-c:a", "libmp3lame", "-b:a", "48k"), "mp3"),
    Codec("opus-12k", ("-c:a", "libopus", "-b:a", "12k"), "ogg"),
    Codec("opus-24k", ("-c:a", "libopus", "-b:a", "24k"), "ogg"),
    Codec("aac-32k", ("-c:a", "aac", "-b:a", "32k"), "adts"),
)
MAX_CODEC_DELAY = 4096  # samples an encoder may shift the audio by (MP3: ~1105 at 16 kHz)


def codec_round_trip(wav: np.ndarray, codec: Codec, sample_rate: int) -> np.ndarray:
    """Encode wav (N,) float32 with `codec` and decode it back: (N,) float32, realigned to
    the input (encoder delays removed by cross-correlation, length restored)."""
    raw = ("-f", "f32le", "-ar", str(sample_rate), "-ac", "1")
    encoded = _ffmpeg_pipe(
        [*raw, "-i", "pipe:0", *codec.encoder, "-f", codec.container, "pipe:1"],
        wav.astype("<f4").tobytes(),
        f"cannot encode audio as {codec.name}",
    )
    decoded = _ffmpeg_pipe(
        ["-i", "pipe:0", "-ar", str(sample_rate), "-ac", "1", "-f", "f32le", "pipe:1"],
        encoded,
        f"cannot decode {codec.name} audio",
    )
    return align_to(np.frombuffer(decoded, "<f4"), wav, MAX_CODEC_DELAY)


def _ffmpeg_pipe(args: list[str], data: bytes, what: str) -> bytes:
    proc = subprocess.run(ffmpeg_command(*args), input=data, capture_output=True)
    if proc.returncode != 0:
        raise MediaError(f"{what}: {last_error_line(proc.stderr.decode(errors='replace'))}")
    return proc.stdout


def align_to(signal: np.ndarray, reference: np.ndarray, max_lag: int) -> np.ndarray:
    """`signal` shifted by the lag (|lag| <= max_lag) that best matches `reference` (N,)
    and cut or zero-padded to N samples: signal'[i] = signal[i + lag]."""
    n = reference.size
    size = 1 << int(math.ceil(math.log2(signal.size + n + 1)))
    corr = np.fft.irfft(np.fft.rfft(signal, size) * np.conj(np.fft.rfft(reference, size)), size)
    lags = np.arange(-max_lag, max_lag + 1)
    lag = int(lags[np.argmax(corr[lags % size])])
    out = np.zeros(n, np.float32)
    lo, hi = max(0, -lag), min(n, signal.size - lag)
    if hi > lo:
        out[lo:hi] = signal[lo + lag : hi + lag]
    return out
