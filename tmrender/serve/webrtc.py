"""aiortc tracks of a live session: the microphone's frames into it, its frames out.

Incoming audio is Opus decoded by aiortc (48 kHz, 16-bit, usually stereo), mixed to mono
and resampled to 16 kHz in numpy (`Downsampler`); the receiver's jitter buffer is cut from
aiortc's 4 Opus frames to 1 (`shorten_audio_jitter_buffer`). The video track sends at the
model's frame rate on a fixed schedule, asks the session for the frame of each tick, and
once the session's frame buffer has run empty, wakes for the renderer's next frames.
The voice track (say and reply modes) sends each sent frame's audio in two 20 ms halves,
the first when its frame leaves and the second 20 ms later, so sound and picture leave
together; the browser keeps them together (both tracks are one stream, RTCP timestamps).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections.abc import Callable

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError

from tmrender.media.audio import SAMPLE_RATE, Downsampler
from tmrender.serve.session import LiveSession

VIDEO_CLOCK = 90_000  # RTP video clock rate (Hz)
AUDIO_TIMEOUT = 3.0  # seconds without microphone frames before the session is ended
VOICE_FRAME = SAMPLE_RATE // 50  # 20 ms of the avatar's voice per audio frame
VOICE_RATE = 48_000  # sent at Opus's own rate: aiortc's encoder holds back a frame otherwise
VOICE_WAIT = 0.06  # seconds the voice track waits for a frame's audio before sending silence
REANCHOR_TICKS = 3  # a video tick more than this many ticks late restarts the schedule
# once the frame buffer has run empty: a new frame leaves no sooner than MIN_GAP ticks
# after the frame before, and the last one is shown again only when none has come within
# HOLD_GRACE ticks after the tick was due
MIN_GAP = 0.5
HOLD_GRACE = 0.5
# mirror mode: while a chunk's worth of frames or more is still waiting after a send (a
# chunk came before the one before it was all sent), the next tick comes this share of a
# tick sooner, so the extra wait is worked off instead of kept
CATCH_UP = 0.25
AUDIO_JITTER_CAPACITY = 16  # packets in the microphone's jitter buffer, as aiortc's


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


def shorten_audio_jitter_buffer(receiver: RTCRtpReceiver, prefetch: int) -> bool:
    """Give an audio receiver a jitter buffer that hands each Opus frame (20 ms) to the
    decoder once `prefetch` complete frames have come instead of aiortc's 4 (80 ms); a frame
    is complete only when the next packet shows where it ends, so 1 (20 ms) is the least.
    Call it before the first packet. aiortc has no setting for it: the buffer is the
    receiver's private attribute, replaced here; False (nothing changed) where this aiortc
    keeps it elsewhere."""
    name = "_RTCRtpReceiver__jitter_buffer"
    if not isinstance(getattr(receiver, name, None), JitterBuffer):
        return False
    setattr(receiver, name, JitterBuffer(AUDIO_JITTER_CAPACITY, prefetch=prefetch))
    return True


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


class TickSchedule:
    """When each video tick is due: tick n at t0 + n x `period`, whatever time the ticks
    before it really left (late wake-ups do not add up). t0 is the first tick's time; it
    moves when a tick is asked for more than `reanchor_ticks` after it was due (the
    schedule restarts from then instead of catching up in a burst) and on `anchor`."""

    def __init__(self, period: float, reanchor_ticks: float = REANCHOR_TICKS) -> None:
        self.period, self.reanchor_ticks = period, reanchor_ticks
        self.origin: float | None = None
        self.tick = 0  # the next tick's number
        self.reanchored = 0  # restarts for being late

    def due(self, now: float) -> float:
        """When the next tick should leave, asked at `now` (perf_counter seconds)."""
        if self.origin is None:
            self.origin = now
        due = self.origin + self.tick * self.period
        if now - due > self.reanchor_ticks * self.period:
            self.anchor(now)
            self.reanchored += 1
            return now
        return due

    def anchor(self, now: float) -> None:
        """The next tick leaves at `now`, and the ticks after it follow from there."""
        self.origin = now - self.tick * self.period

    def sent(self) -> None:
        """The next tick has left."""
        self.tick += 1


class AvatarTrack(MediaStreamTrack):
    """The session's frames as a video track at its frame rate, on a `TickSchedule`: each
    tick sends the frame ready then, or the last one again (held).

    Once the frame buffer has run empty (the renderer's chunk is all sent, or a frame was
    held), the track instead waits for the renderer's next frames (`LiveSession.on_frames`
    wakes it) and sends the first at once, at least MIN_GAP ticks after the frame before
    and at most HOLD_GRACE ticks after its tick was due (the last frame is held then), and
    the schedule is anchored on that send. The ticks then follow the renderer's chunks: a
    chunk's first frame does not wait up to a tick for its turn, and a chunk a little late
    does not cost a frame shown again. When a chunk comes early instead, frames of the one
    before still waiting, every frame would keep that extra wait: in mirror mode (no voice
    to keep in step) the ticks come CATCH_UP sooner until it is worked off (`LiveSession.
    behind`). Timestamps (pts, 90 kHz clock) are the frames' true send times."""

    kind = "video"

    def __init__(self, session: LiveSession) -> None:
        super().__init__()
        self.session = session
        self.schedule = TickSchedule(1.0 / session.fps)
        self._first: float | None = None  # when the first frame left (pts 0)
        self._last_sent = 0.0
        self._pts = -1
        self._drained = False  # the buffer was empty after the last send
        self._arrived: asyncio.Event | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._arrived is None:
            self._listen_for_frames()
        due = self.schedule.due(time.perf_counter())
        self.session.reanchored = self.schedule.reanchored
        if self._drained:
            await self._frames_or(due + HOLD_GRACE * self.schedule.period)
        else:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        now = time.perf_counter()
        if self._drained and self.session.frame_ready():
            self.schedule.anchor(now)  # the ticks follow the renderer's frames
        frame = av.VideoFrame.from_ndarray(self.session.next_frame(), format="rgb24")
        self._drained = not self.session.frame_ready()
        if self.session.voice_out is None and self.session.behind():
            self.schedule.anchor(now - CATCH_UP * self.schedule.period)
        self._first = now if self._first is None else self._first
        self._pts = max(self._pts + 1, round((now - self._first) * VIDEO_CLOCK))
        frame.pts, frame.time_base = self._pts, fractions.Fraction(1, VIDEO_CLOCK)
        self.schedule.sent()
        self._last_sent = now
        return frame

    def _listen_for_frames(self) -> None:
        """Have the session's render thread wake this track's event loop on new frames."""
        loop, arrived = asyncio.get_running_loop(), asyncio.Event()
        self._arrived = arrived

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(arrived.set)

        self.session.on_frames(wake)

    async def _frames_or(self, latest: float) -> None:
        """Until new frames are ready (but not within MIN_GAP ticks of the last send), or
        until `latest` if that comes first."""
        earliest = self._last_sent + MIN_GAP * self.schedule.period
        await asyncio.sleep(max(0.0, min(earliest, latest) - time.perf_counter()))
        self._arrived.clear()
        if self.session.frame_ready():
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), max(0.0, latest - time.perf_counter()))


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
