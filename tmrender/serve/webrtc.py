"""aiortc tracks of a live session: the microphone's frames into it, its frames out.

Incoming audio is Opus decoded by aiortc (48 kHz, 16-bit, usually stereo), mixed to mono
and resampled to 16 kHz in numpy (`Downsampler`). The video track paces itself at the
model's frame rate on the 90 kHz RTP clock and asks the session for the frame of each tick.
The voice track (say and reply modes) sends each sent frame's audio in two 20 ms halves,
the first when its frame leaves and the second 20 ms later, so sound and picture leave
together; the browser keeps them together (both tracks are one stream, RTCP timestamps).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from tmrender.media.audio import SAMPLE_RATE, Downsampler
from tmrender.serve.session import LiveSession

VIDEO_CLOCK = 90_000  # RTP video clock rate (Hz)
AUDIO_TIMEOUT = 3.0  # seconds without microphone frames before the session is ended
VOICE_FRAME = SAMPLE_RATE // 50  # 20 ms of the avatar's voice per audio frame
VOICE_RATE = 48_000  # sent at Opus's own rate: aiortc's encoder holds back a frame otherwise
VOICE_WAIT = 0.06  # seconds the voice track waits for a frame's audio before sending silence


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """An audio frame (packed or planar, s16/s32/flt/dbl, any channels) -> (N,) float32 in
    [-1, 1], the channels' mean."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    # planar: (channels, N); packed: (1, N * channels), interleaved
    planar = frame.format.is_planar
    data = data.reshape(channels, -1).T if planar else data.reshape(-1, channels)
    scale = {"s16": 32768.0, "s32": 2147483648.0}.get(frame.format.name.rstrip("p"), 1.0)
    return (data.astype(np.float32) / scale).mean(axis=1)


async def pump_microphone(
    track: MediaStreamTrack, session: LiveSession, sink: Callable[[np.ndarray], None] | None = None
) -> str:
    """Feed the track's audio (16 kHz (N,) float32) into `sink` (default: the session, as
    its driving audio) until it ends, stalls for AUDIO_TIMEOUT seconds or the session
    stops; returns why it stopped."""
    sink = sink or session.push_audio
    resample: Downsampler | None = None
    while session.running:
        try:
            frame = await asyncio.wait_for(track.recv(), AUDIO_TIMEOUT)
        except asyncio.TimeoutError:
            return "no audio"
        except MediaStreamError:
            return "microphone ended"
        if resample is None:
            resample = Downsampler(frame.sample_rate)
        sink(resample(frame_to_mono(frame)))
    return "render ended"


class AvatarTrack(MediaStreamTrack):
    """The session's frames as a video track at its frame rate (one `next_frame` a tick)."""

    kind = "video"

    def __init__(self, session: LiveSession) -> None:
        super().__init__()
        self.session = session
        self.step = VIDEO_CLOCK // session.fps
        self._start: float | None = None
        self._count = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.perf_counter()
        else:
            due = self._start + self._count / self.session.fps
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        frame = av.VideoFrame.from_ndarray(self.session.next_frame(), format="rgb24")
        frame.pts, frame.time_base = self._count * self.step, fractions.Fraction(1, VIDEO_CLOCK)
        self._count += 1
        return frame


class VoiceTrack(MediaStreamTrack):
    """The avatar's voice: the audio of each frame the video track sends (`session.voice_out`),
    as 20 ms frames of 48 kHz mono s16 (linear interpolation from 16 kHz: at any other rate
    aiortc's Opus encoder resamples and holds each frame back until the next, 20 ms late).

    A frame's two halves leave when it was sent and 20 ms later. When no audio has come
    within VOICE_WAIT, silence goes out and as much audio is skipped later (`debt`), so
    sound never falls behind the picture."""

    kind = "audio"

    def __init__(self, session: LiveSession) -> None:
        super().__init__()
        self.session = session
        self.sent = self.silent = 0  # audio frames sent, of them silence for lack of audio
        self._pending: list[tuple[float, np.ndarray]] = []  # (due time, 20 ms of samples)
        self._debt = 0  # audio frames to skip: silence was sent in their place
        self._last = 0.0  # the previous 16 kHz sample, for the interpolation across frames

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        samples = self._upsample(await self._next_samples())
        pcm = (np.clip(samples, -1, 1) * 32767).round().astype("<i2")[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts = VOICE_RATE, self.sent * samples.size
        frame.time_base = fractions.Fraction(1, VOICE_RATE)
        self.sent += 1
        return frame

    def _upsample(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz (n,) -> 48 kHz (3n,) float32, continuing from the previous frame."""
        factor = VOICE_RATE // SAMPLE_RATE
        points = np.concatenate([[self._last], samples])
        self._last = float(samples[-1])
        at = np.arange(1, samples.size * factor + 1) / factor
        return np.interp(at, np.arange(points.size), points).astype(np.float32)

    async def _next_samples(self) -> np.ndarray:
        """The next 20 ms (VOICE_FRAME,) float32, at its due time."""
        waited = time.perf_counter()
        while True:
            self._refill()
            if self._pending:
                due, samples = self._pending.pop(0)
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                return samples
            if time.perf_counter() - waited > VOICE_WAIT:
                self._debt += 1
                self.silent += 1
                return np.zeros(VOICE_FRAME, np.float32)
            await asyncio.sleep(0.005)

    def _refill(self) -> None:
        """Split the sent frames' audio into 20 ms halves, skipping what is owed."""
        voice_out = self.session.voice_out
        while voice_out is not None and not self._pending:
            item = voice_out.take()
            if item is None:
                return
            sent_at, samples = item
            for start in range(0, samples.size, VOICE_FRAME):
                if self._debt:
                    self._debt -= 1
                    continue
                due = sent_at + start / SAMPLE_RATE
                self._pending.append((due, samples[start : start + VOICE_FRAME]))
