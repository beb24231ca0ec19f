"""Audio input: any file the bundled ffmpeg decodes becomes 16 kHz mono float32.

Long files are streamed: ffmpeg writes raw float32 to a pipe and we read it in blocks, so a
60-minute file is never held whole. This module imports numpy only (no torch), which keeps
the decode path light.
"""

from __future__ import annotations

import bisect
import subprocess
import tempfile
import threading
import time
import wave
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tmrender.errors import MediaError, UserInputError
from tmrender.media.ffmpeg import ffmpeg_command, last_error_line, probe

SAMPLE_RATE = 16_000
BYTES_PER_SAMPLE = 4  # float32
VOICE_RMS_DB = -45.0  # frames louder than this (dBFS RMS) count as voice


@dataclass(frozen=True)
class AudioInfo:
    """An audio source checked to be decodable; `duration_hint` is the header's (may be None)."""

    path: Path
    codec: str
    source_rate: int | None
    duration_hint: float | None


def open_audio(path: Path | str) -> AudioInfo:
    """Check that `path` exists and has an audio stream; raise one clear UserInputError if not."""
    path = Path(path)
    info = probe(path, what="audio file")
    if not info.audio:
        raise MediaError(f"{path} has no audio stream")
    stream = info.audio[0]
    return AudioInfo(path, stream.codec, stream.sample_rate, info.duration)


class AudioStream:
    """Decode an audio file to 16 kHz mono float32, block by block.

    `path` may be an AudioInfo from `open_audio`, which skips probing the file again.
    Iterating yields 1-D float32 arrays of `block_samples` samples (the last may be shorter).
    `samples_read` counts what has been yielded, so the exact duration is known at the end.
    Raises MediaError if ffmpeg fails midway and UserInputError if the file holds no samples.
    """

    def __init__(self, path: Path | str | AudioInfo, block_samples: int = SAMPLE_RATE * 10):
        if block_samples <= 0:
            raise ValueError("block_samples must be positive")
        self.info = path if isinstance(path, AudioInfo) else open_audio(path)
        self.block_samples = block_samples
        self.samples_read = 0
        self._proc: subprocess.Popen | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()

    @property
    def seconds_read(self) -> float:
        return self.samples_read / SAMPLE_RATE

    def __iter__(self) -> Iterator[np.ndarray]:
        self._proc = subprocess.Popen(
            decode_command(self.info.path), stdout=subprocess.PIPE, stderr=self._stderr
        )
        block_bytes = self.block_samples * BYTES_PER_SAMPLE
        try:
            while True:
                data = _read_exactly(self._proc.stdout, block_bytes)
                if not data:
                    break
                usable = len(data) - len(data) % BYTES_PER_SAMPLE
                block = np.frombuffer(data[:usable], dtype="<f4").copy()
                self.samples_read += block.size
                yield block
            self._finish()
        finally:
            self.close()

    def _finish(self) -> None:
        returncode = self._proc.wait()
        if returncode != 0:
            self._stderr.seek(0)
            reason = last_error_line(self._stderr.read().decode("utf-8", "replace"))
            raise MediaError(f"cannot decode the audio of {self.info.path}: {reason}")
        if self.samples_read == 0:
            raise UserInputError(f"audio file has zero length: {self.info.path}")

    def close(self) -> None:
        """Stop ffmpeg (if still running) and release the pipe; safe to call twice."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc is not None and self._proc.stdout:
            self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PushAudioStream:
    """A live source of 16 kHz mono float32 with AudioStream's small interface (iterate for
    blocks, `samples_read`, `seconds_read`, `close`): `push` adds blocks from any thread;
    iterating yields them in order, waits for the next one, and ends only after `close`.

    Latency stays bounded: when more than `max_backlog` samples wait unread (the reader
    fell behind), the oldest blocks are dropped and counted in `dropped_samples`, so the
    reader skips ahead. The arrival time of the last `history` blocks read is kept for
    `arrival_of` (how long a sample waited before its frame was shown); `on_read(block)`
    sees every block read (what drove the frames, for a recording).
    """

    def __init__(
        self,
        max_backlog: int = SAMPLE_RATE,
        history: int = 1000,
        on_read: Callable[[np.ndarray], None] | None = None,
    ):
        if max_backlog <= 0:
            raise ValueError("max_backlog must be positive")
        self.max_backlog = max_backlog
        self.on_read = on_read  # sees each block as it is read (a recording of the session)
        self.samples_read = self.samples_pushed = self.dropped_samples = 0
        self._blocks: deque[tuple[np.ndarray, float]] = deque()
        self._pending = 0
        self._closed = False
        self._ready = threading.Condition()
        self._ends: deque[int] = deque(maxlen=history)  # samples_read after each block
        self._times: deque[float] = deque(maxlen=history)  # and its arrival time
        self._sizes: deque[int] = deque(maxlen=history)  # and its size

    @property
    def seconds_read(self) -> float:
        return self.samples_read / SAMPLE_RATE

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, samples: np.ndarray, arrival: float | None = None) -> None:
        """Add samples (N,) float32 that arrived at `arrival` (perf_counter; default now);
        ignored once closed."""
        block = np.asarray(samples, np.float32).reshape(-1)
        arrival = time.perf_counter() if arrival is None else arrival
        with self._ready:
            if self._closed or not block.size:
                return
            self._blocks.append((block, arrival))
            self._pending += block.size
            self.samples_pushed += block.size
            while self._pending > self.max_backlog and len(self._blocks) > 1:
                dropped, _ = self._blocks.popleft()
                self._pending -= dropped.size
                self.dropped_samples += dropped.size
            self._ready.notify_all()

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._blocks or self._closed)
                if not self._blocks:
                    return
                block, arrival = self._blocks.popleft()
                self._pending -= block.size
                self.samples_read += block.size
                self._ends.append(self.samples_read)
                self._times.append(arrival)
                self._sizes.append(block.size)
            if self.on_read is not None:
                self.on_read(block)
            yield block

    def arrival_of(self, sample: int) -> float | None:
        """When the block holding read sample `sample` (0-based) arrived; None if it is
        not read yet or too old to be remembered."""
        with self._ready:
            ends, times = list(self._ends), list(self._times)
            oldest = self._oldest_start
        i = bisect.bisect_right(ends, sample)
        if i == len(ends) or sample < oldest(ends):
            return None
        return times[i]

    def _oldest_start(self, ends: list[int]) -> int:
        """The first sample of the oldest remembered block."""
        return ends[0] - self._sizes[0] if self._sizes else 0

    def close(self) -> None:
        """End the stream: the reader gets what was pushed, then the end; safe to call twice."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def __enter__(self) -> PushAudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Downsampler:
    """Stream resampling by an integer factor to 16 kHz (48 kHz WebRTC Opus -> 16 kHz):
    a windowed-sinc low-pass FIR (cut at 0.45 x the output rate, Hann window, 24 taps per
    output sample on each side) then decimation, with the filter's history carried from
    block to block, so block boundaries leave no trace. Delay: (taps - 1) / 2 input samples.
    """

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE, half_width: int = 12):
        if rate_in % rate_out:
            raise MediaError(f"cannot resample {rate_in} Hz audio to {rate_out} Hz")
        self.factor = q = rate_in // rate_out
        n = 2 * half_width * q + 1
        t = np.arange(n) - (n - 1) / 2
        cutoff = 0.45 / q  # cycles per input sample
        taps = 2 * cutoff * np.sinc(2 * cutoff * t) * np.hanning(n + 2)[1:-1]
        self.taps = (taps / taps.sum()).astype(np.float32)
        self._history = np.zeros(n - 1, np.float32)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Input samples (N,) float -> output samples (M,) float32, M about N / factor."""
        if self.factor == 1:
            return np.asarray(samples, np.float32).reshape(-1)
        buf = np.concatenate([self._history, np.asarray(samples, np.float32).reshape(-1)])
        n, q = self.taps.size, self.factor
        windows = np.lib.stride_tricks.sliding_window_view(buf, n)[::q]
        out = windows @ self.taps[::-1]
        self._history = buf[len(windows) * q :]
        return out.astype(np.float32)


def decode_command(path: Path) -> list[str]:
    """ffmpeg arguments that write the first audio stream as 16 kHz mono f32le to stdout."""
    return ffmpeg_command(
        "-i", str(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "-acodec", "pcm_f32le", "-",
    )  # fmt: skip


def _read_exactly(pipe, size: int) -> bytes:
    """Read `size` bytes unless the pipe ends first (then what there was)."""
    chunks, remaining = [], size
    while remaining:
        data = pipe.read(remaining)
        if not data:
            break
        chunks.append(data)
        remaining -= len(data)
    return b"".join(chunks)


def load_audio(path: Path | str) -> np.ndarray:
    """Decode a whole (short) file: float32 samples, shape (N,), 16 kHz mono."""
    return np.concatenate(list(AudioStream(path)))


def audio_samples(path: Path | str) -> int:
    """Exact number of 16 kHz samples in a file, counted by decoding it in blocks."""
    stream = AudioStream(path)
    for _ in stream:
        pass
    return stream.samples_read


def frames_for_samples(samples: int, fps: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames that cover `samples` audio samples: ceil(samples * fps / sample_rate)."""
    return -(-samples * fps // sample_rate)


def frame_rms_db(samples: np.ndarray, samples_per_frame: int) -> np.ndarray:
    """Per-frame RMS level in dBFS: samples (F * spf,) -> (F,)."""
    frames = samples.reshape(-1, samples_per_frame).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


def write_wav(path: Path | str, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float samples in [-1, 1], shape (N,), as a 16-bit PCM WAV file."""
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"write_wav expects mono samples of shape (N,), got {samples.shape}")
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    path = Path(path)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
