"""Audio features for the streaming renderer, computed ahead of the DiT in fixed segments.

The audio is treated as the decoded samples extended with silence on both sides. A segment
holds the features of video frames `[first, first + n)`; it is encoded from the samples of
frames `[first - M, first + n + M)` (margin M each side) and only its central n frames are
kept, so every frame's features see at least M frames of context whatever the segment
boundaries. The first segment starts at `start` (negative: the audio window of the first
latent frames reaches before frame 0) and is short, so that the first chunk need not wait
for a whole segment; the others hold S frames. `Segmenting` holds these lengths and the
margins (before and after a segment apart); a live source (`tmrender.serve`) uses one
segment per chunk and a short margin after it, which is what its latency waits for.

Nothing here grows with the length of the audio: the sample buffer holds one encoding
window and the consumer keeps only the segments its next window still needs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tmrender.media.audio import VOICE_RMS_DB, AudioStream, frame_rms_db

SEGMENT_FRAMES = 50  # S: 2 s at 25 fps per encoder call
FIRST_SEGMENT_FRAMES = 16  # the first, short segment: enough for the first chunk
MARGIN_FRAMES = 10  # M: context on each side of a segment, 0.4 s


@dataclass(frozen=True)
class Segmenting:
    """How the audio is cut into segments (frames at the video's rate): the first segment's
    length, the others', and the context each is encoded with before (`before`, free for
    latency: the past) and after it (`after`: the look-ahead a segment waits for). The
    defaults are the file renderer's; a live source uses short segments and look-ahead."""

    first: int = FIRST_SEGMENT_FRAMES
    frames: int = SEGMENT_FRAMES
    before: int = MARGIN_FRAMES
    after: int = MARGIN_FRAMES

    @classmethod
    def live(cls, frames_per_chunk: int, window: int, after: int) -> Segmenting:
        """One segment per chunk, ending where the chunk's audio window ends: the first
        covers frames [-window, frames_per_chunk + window), the others one chunk each."""
        return cls(frames_per_chunk + 2 * window, frames_per_chunk, MARGIN_FRAMES, after)


@dataclass(frozen=True)
class FeatureSegment:
    """Features (1, S, L, D) and voice activity (S,) of frames [first, first + S).

    `total_frames` is None until the audio has ended; from then on every segment carries
    the exact number of video frames, ceil(samples * fps / sample_rate)."""

    first: int
    features: Tensor
    voiced: np.ndarray
    total_frames: int | None


class SampleWindow:
    """Pull-based view of an AudioStream as an infinite, zero-extended sample sequence."""

    def __init__(self, stream: AudioStream):
        self._blocks: Iterator[np.ndarray] = iter(stream)
        self._stream = stream
        self._buffer = np.zeros(0, np.float32)
        self._start = 0  # absolute index of _buffer[0]
        self.ended = False

    @property
    def total_samples(self) -> int | None:
        return self._stream.samples_read if self.ended else None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) (absolute, may be negative or past the end: zeros)."""
        while not self.ended and self._start + self._buffer.size < stop:
            block = next(self._blocks, None)
            if block is None:
                self.ended = True
            else:
                self._buffer = np.concatenate([self._buffer, block])
        out = np.zeros(stop - start, np.float32)
        lo, hi = max(start, self._start), min(stop, self._start + self._buffer.size)
        if hi > lo:
            out[lo - start : hi - start] = self._buffer[lo - self._start : hi - self._start]
        return out

    def forget_before(self, position: int) -> None:
        """Drop buffered samples before absolute index `position`."""
        drop = min(max(0, position - self._start), self._buffer.size)
        self._buffer = self._buffer[drop:]
        self._start += drop


class FeatureProducer:
    """Encodes segments from frame `start` on until the frames the renderer can ask for are
    covered.

    `encode` maps samples (1, n) to features (1, n / spf, L, D); `needed_frames(total)`
    gives the end frame (exclusive) the consumer will read once the total is known."""

    def __init__(
        self,
        stream,
        encode,
        samples_per_frame,
        needed_frames,
        device,
        start=0,
        segmenting: Segmenting | None = None,
    ):
        self.start = start
        self.cut = segmenting or Segmenting()
        self.window = SampleWindow(stream)
        self.encode = encode
        self.spf = samples_per_frame
        self.needed_frames = needed_frames
        self.device = device
        self.seconds = 0.0  # time spent in the audio encoder

    def segments(self) -> Iterator[FeatureSegment]:
        """Yield segments in order; stops once the needed frames are covered."""
        cut = self.cut
        first, count = self.start, cut.first
        while True:
            lo = (first - cut.before) * self.spf
            hi = (first + count + cut.after) * self.spf
            samples = self.window.read(lo, hi)
            centre = samples[cut.before * self.spf : (cut.before + count) * self.spf]
            tick = time.perf_counter()
            wav = torch.from_numpy(samples)[None].to(self.device)
            feats = self.encode(wav)[:, cut.before : cut.before + count]
            self.seconds += time.perf_counter() - tick
            total = self._total_frames()
            yield FeatureSegment(first, feats, frame_rms_db(centre, self.spf) > VOICE_RMS_DB, total)
            self.window.forget_before(hi - (cut.before + cut.after) * self.spf)
            first, count = first + count, cut.frames
            if total is not None and first >= self.needed_frames(total):
                return

    def _total_frames(self) -> int | None:
        samples = self.window.total_samples
        return None if samples is None else -(-samples // self.spf)


class FeatureTimeline:
    """Consumer side: frame windows [f0, f1) over segments that arrive through a queue."""

    def __init__(self, source: queue.Queue, stop: threading.Event):
        self.source = source
        self.stop = stop
        self.segments: list[FeatureSegment] = []
        self.total_frames: int | None = None

    def _pull(self) -> None:
        while True:
            if self.stop.is_set():
                raise InterruptedError("render stopped")
            try:
                item = self.source.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise item
            self.segments.append(item)
            self.total_frames = item.total_frames
            return

    def _end(self) -> int:
        last = self.segments[-1] if self.segments else None
        return last.first + last.features.shape[1] if last else -(2**62)

    def window(self, f0: int, f1: int) -> tuple[Tensor, np.ndarray]:
        """Features (1, f1 - f0, L, D) and voice activity (f1 - f0,) of frames [f0, f1).

        Requests must not move backwards: segments wholly before f0 are dropped."""
        while self._end() < f1:
            self._pull()
        self.segments = [s for s in self.segments if s.first + s.features.shape[1] > f0]
        feats = torch.cat([s.features for s in self.segments], dim=1)
        voiced = np.concatenate([s.voiced for s in self.segments])
        offset = f0 - self.segments[0].first
        return feats[:, offset : offset + f1 - f0], voiced[offset : offset + f1 - f0]

    def covers(self, frame: int) -> bool:
        """Whether the audio reaches video frame `frame`; pulls segments until it knows.

        While the total is unknown, a segment ending after `frame` proves it: the producer
        read samples past that segment's end (its margin) before encoding it."""
        while self.total_frames is None and self._end() <= frame:
            self._pull()
        return self.total_frames is None or frame < self.total_frames
