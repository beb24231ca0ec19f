"""aiortc tracks of a live session: the microphone's frames into it, its frames out.

Incoming audio is Opus decoded by aiortc (48 kHz, 16-bit, usually stereo), mixed to mono
and resampled to 16 kHz in numpy (`Downsampler`). The video track paces itself at the
model's frame rate on the 90 kHz RTP clock and asks the session for the frame of each tick.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from tmrender.media.audio import Downsampler
from tmrender.serve.session import LiveSession

VIDEO_CLOCK = 90_000  # RTP video clock rate (Hz)
AUDIO_TIMEOUT = 3.0  # seconds without microphone frames before the session is ended


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


async def pump_microphone(track: MediaStreamTrack, session: LiveSession) -> str:
    """Feed the track's audio into the session until it ends, stalls for AUDIO_TIMEOUT
    seconds or the session stops; returns why it stopped."""
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
        session.push_audio(resample(frame_to_mono(frame)))
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
