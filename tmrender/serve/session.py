"""One live session: microphone samples in, the avatar's frames out at the video's rate.

The session runs the file renderer (`render_frames`) in a thread of its own, fed by a
`PushAudioStream`, with short feature segments (one per chunk) and one item in flight
between its stages, so a frame leaves as soon as the audio it shows (and the encoder's
look-ahead) has arrived. Two places keep latency bounded when compute falls behind: the
audio source drops its oldest unread audio past `max_backlog_seconds` (the video skips
ahead), and the frame buffer drops its oldest frames past `max_buffered_frames`. When no
new frame is ready at a tick, the last one is shown again (held). All are counted in
`snapshot()`, which the page shows. The sender is told when rendered frames arrive
(`on_frames`) and when a chunk came before the one before it was all sent (`behind`).

In `say` and `reply` modes the avatar's voice goes back with its frames: the audio each
frame was rendered from is kept as the renderer reads it (`DrivenAudio`) and handed to the
voice track when that frame is sent (`SentAudio`), so the audio of a frame leaves with the
frame whatever the renderer's latency.

Nothing here imports WebRTC: `webrtc.py` calls `push_audio` and `next_frame`.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
import time
import wave
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tmrender.data.speech import DEFAULT_VOICE
from tmrender.media.audio import SAMPLE_RATE, VOICE_RMS_DB, PushAudioStream, frame_rms_db
from tmrender.media.video import VideoWriter
from tmrender.models.talking import TalkingModel
from tmrender.render.features import Segmenting
from tmrender.render.pipeline import RenderOptions, RenderStats, render_frames
from tmrender.serve import LOOKAHEAD_FRAMES


@dataclass(frozen=True)
class LiveOptions:
    """How a live session renders and when it skips ahead."""

    mode: str = "mirror"
    seed: int = 0
    lookahead_frames: int = LOOKAHEAD_FRAMES
    deflicker: bool = True  # the model's temporal filter against latent-boundary flicker
    # which: "causal" (past frames only, holds nothing back) or "centred" (the file
    # render's zero-lag filter and re-timing: 3 frames held for the next chunk, 120 ms)
    temporal: str = "causal"
    # latency bounds: unread audio before the oldest is dropped; frames waiting to be sent
    # (None: a chunk's frames and 2 more, as a chunk's frames arrive at once)
    max_backlog_seconds: float = 0.5
    max_buffered_frames: int | None = None
    # Opus frames (20 ms) the microphone's jitter buffer waits for before decoding the
    # first (`webrtc.shorten_audio_jitter_buffer`; aiortc's own: 4). 1 is the least; it
    # reorders nothing, which suits loopback and a LAN; more rides out a jittery network
    audio_prefetch: int = 1
    record: Path | None = None  # MP4 of the frames rendered and the audio that drove them
    # say and reply modes: the avatar's voice, and the program that answers (reply)
    voice: str = DEFAULT_VOICE  # eSpeak NG voice, LANGUAGE+VARIANT
    reply: str | None = None  # a command line, or an http(s):// URL
    reply_timeout: float = 30.0  # seconds the reply program may take

    @property
    def speaks(self) -> bool:
        """Whether the avatar's voice is sent with its frames (say and reply modes)."""
        return self.mode in ("say", "reply")

    def render_options(self, model: TalkingModel) -> RenderOptions:
        """The renderer's options: one feature segment per chunk, one item in flight."""
        cfg = model.cfg
        cut = Segmenting.live(cfg.frames_per_chunk, cfg.audio_proj.window, self.lookahead_frames)
        return RenderOptions(
            seed=self.seed,
            mode="auto",
            deflicker=self.deflicker,
            temporal=self.temporal,
            segmenting=cut,
            queue_depth=1,
        )


class FrameBuffer:
    """Frames (H, W, 3) uint8 with their video index and the time they were put (perf_counter
    s), from the render thread to the sender; holds at most `limit`, dropping the oldest
    (counted in `dropped`)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.dropped = limit, 0
        self._frames: deque[tuple[int, np.ndarray, float]] = deque()
        self._lock = threading.Lock()

    def put(self, index: int, frame: np.ndarray) -> None:
        with self._lock:
            self._frames.append((index, frame, time.perf_counter()))
            while len(self._frames) > self.limit:
                self._frames.popleft()
                self.dropped += 1

    def take(self) -> tuple[int, np.ndarray, float] | None:
        """(index, frame, when it was put) of the oldest frame, or None."""
        with self._lock:
            return self._frames.popleft() if self._frames else None

    def __len__(self) -> int:
        return len(self._frames)


class DrivenAudio:
    """The samples the renderer has read (16 kHz), by their index in the read stream, for
    the last `keep` samples: sample s drove frame s // samples_per_frame."""

    def __init__(self, keep: int = 10 * SAMPLE_RATE) -> None:
        self.keep, self.end = keep, 0
        self._blocks: deque[tuple[int, np.ndarray]] = deque()  # (first sample, block)
        self._held = 0
        self._lock = threading.Lock()

    def add(self, block: np.ndarray) -> None:
        """The next block read, (N,) float32."""
        with self._lock:
            self._blocks.append((self.end, block))
            self.end += block.size
            self._held += block.size
            while self._held - self._blocks[0][1].size >= self.keep:
                self._held -= self._blocks.popleft()[1].size

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Read samples [start, stop) as (stop - start,) float32; zeros where forgotten or
        not read yet."""
        out = np.zeros(stop - start, np.float32)
        with self._lock:
            for first, block in self._blocks:
                lo, hi = max(start, first), min(stop, first + block.size)
                if hi > lo:
                    out[lo - start : hi - start] = block[lo - first : hi - first]
        return out


class SentAudio:
    """The audio of the frames sent, in order, each block with the time its frame left:
    the voice track plays block k from that time on. Holds at most `limit` blocks."""

    def __init__(self, limit: int = 25) -> None:
        self.limit, self.dropped = limit, 0
        self._blocks: deque[tuple[float, np.ndarray]] = deque()
        self._lock = threading.Lock()

    def put(self, samples: np.ndarray, sent_at: float) -> None:
        """A frame's samples (spf,) float32 and when the frame was sent (perf_counter s)."""
        with self._lock:
            self._blocks.append((sent_at, samples))
            while len(self._blocks) > self.limit:
                self._blocks.popleft()
                self.dropped += 1

    def take(self) -> tuple[float, np.ndarray] | None:
        with self._lock:
            return self._blocks.popleft() if self._blocks else None

    def __len__(self) -> int:
        return len(self._blocks)


class Recording:
    """The session's rendered frames and the audio that drove them, written as an MP4 at
    `close` (atomically: `VideoWriter`); the audio waits in a private temporary folder."""

    def __init__(self, path: Path, width: int, height: int, fps: int) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="tmrender-live-"))
        wav_path = self._folder / "audio.wav"
        self._wav = wave.open(str(wav_path), "wb")  # noqa: SIM115 - closed by close()
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)
        self._video = VideoWriter(path, width, height, fps, audio=wav_path)

    def audio(self, samples: np.ndarray) -> None:
        """Samples (N,) float32 in [-1, 1]."""
        self._wav.writeframes((np.clip(samples, -1, 1) * 32767).round().astype("<i2").tobytes())

    def frames(self, frames: np.ndarray) -> None:
        """Frames (n, H, W, 3) uint8."""
        self._video.write(frames)

    def close(self, keep: bool) -> Path | None:
        """Write the MP4 (keep) or nothing; the temporary folder goes either way."""
        try:
            self._wav.close()
            if keep and self._video.frames_written:
                return self._video.close()
            self._video.abort()
            return None
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)


class LiveSession:
    """A live render: `start`, then `push_audio` (16 kHz mono float32) as it comes and
    `next_frame` once per video tick; `close` ends it (the renderer flushes and stops)."""

    def __init__(
        self, model: TalkingModel, reference: np.ndarray, options: LiveOptions | None = None
    ) -> None:
        self.model, self.reference = model, reference
        self.options = options = options or LiveOptions()
        cfg = model.cfg
        self.fps, self.spf = cfg.fps, cfg.samples_per_frame
        self.recording = (
            Recording(options.record, cfg.width, cfg.height, cfg.fps) if options.record else None
        )
        self.driven = DrivenAudio() if options.speaks else None
        self.voice_out = SentAudio() if options.speaks else None
        self.audio = PushAudioStream(
            max_backlog=int(options.max_backlog_seconds * SAMPLE_RATE), on_read=self._on_read
        )
        self.buffer = FrameBuffer(options.max_buffered_frames or cfg.frames_per_chunk + 2)
        self.stats = RenderStats()
        self.error: BaseException | None = None
        self.started = time.perf_counter()
        self.sent = self.held = 0
        self.reanchored = 0  # times the sender fell far behind its schedule and restarted it
        self._on_frames: Callable[[], None] | None = None
        self.voiced_until = 0.0  # perf_counter time the last voiced frame was sent
        self._last: np.ndarray = reference
        self._latencies: deque[float] = deque(maxlen=50)  # seconds, the last 2 s of frames
        self._waits: deque[float] = deque(maxlen=50)  # and of them, in the frame buffer
        self._sent_times: deque[float] = deque(maxlen=50)
        self._thread = threading.Thread(target=self._render, name="tmrender-live", daemon=True)

    def start(self) -> LiveSession:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def frame_ready(self) -> bool:
        """Whether a rendered frame waits to be sent."""
        return len(self.buffer) > 0

    def behind(self) -> bool:
        """Whether a chunk's worth of frames or more waits to be sent: a chunk came before
        the frames of the one before it were all sent."""
        return len(self.buffer) >= self.model.cfg.frames_per_chunk

    @property
    def rendering(self) -> bool:
        """Whether frames have come from the renderer (before them, the portrait is shown
        and not counted as held)."""
        return self.stats.frames > 0

    def on_frames(self, callback: Callable[[], None] | None) -> None:
        """Call `callback()` (from the render thread) each time rendered frames are put in
        the buffer: the sender wakes for them instead of polling."""
        self._on_frames = callback

    def push_audio(self, samples: np.ndarray) -> None:
        """Microphone samples (N,) float32 at 16 kHz, in order."""
        self.audio.push(samples)

    def next_frame(self) -> np.ndarray:
        """The frame (H, W, 3) uint8 to show now: the next rendered one, or the last one
        again when none is ready (the portrait until the first). With a voice, the frame's
        audio (or silence for a frame shown again) goes to `voice_out`."""
        now = time.perf_counter()
        item = self.buffer.take()
        if item is None:
            self.held += int(self.rendering)
            self._send_voice(None, now)
        else:
            index, self._last, put_at = item
            arrival = self.audio.arrival_of((index + 1) * self.spf - 1)
            if arrival is not None:
                self._latencies.append(now - arrival)
            self._waits.append(now - put_at)
            self._send_voice(index, now)
        self.sent += 1
        self._sent_times.append(now)
        return self._last

    def _send_voice(self, index: int | None, now: float) -> None:
        """Frame `index`'s samples (silence for None) to the voice track, sent at `now`."""
        if self.voice_out is None or self.driven is None:
            return
        if index is None:
            samples = np.zeros(self.spf, np.float32)
        else:
            samples = self.driven.samples(index * self.spf, (index + 1) * self.spf)
        if frame_rms_db(samples, self.spf)[0] > VOICE_RMS_DB:
            self.voiced_until = now
        self.voice_out.put(samples, now)

    def _on_read(self, block: np.ndarray) -> None:
        """Each block the renderer reads: what drove its frames (recording, voice)."""
        if self.recording is not None:
            self.recording.audio(block)
        if self.driven is not None:
            self.driven.add(block)

    def snapshot(self) -> dict:
        """Figures for the page: latency from the audio's arrival to its frame leaving and,
        of it, the time the frame waited to be sent (medians of the last 50 frames, ms),
        frame rate sent (last 50 ticks), and counts."""
        times = list(self._sent_times)
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        fps = (len(times) - 1) / span if span > 0 else 0.0
        return {
            "mode": self.options.mode,
            "latency_ms": _median_ms(self._latencies),
            "buffer_wait_ms": _median_ms(self._waits),
            "fps": round(fps, 1),
            "frames_rendered": self.stats.frames,
            "frames_sent": self.sent,
            "frames_held": self.held,
            "frames_dropped": self.buffer.dropped,
            "sender_reanchored": self.reanchored,
            "audio_dropped_ms": round(1000 * self.audio.dropped_samples / SAMPLE_RATE),
            "compute_ms_per_chunk": self._compute_ms(),
            "speaking_chunks": self.stats.speaking_chunks,
            "chunks": self.stats.chunks,
            "seconds": round(time.perf_counter() - self.started, 1),
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
        }

    def _compute_ms(self) -> int | None:
        """Mean time per chunk in the DiT (audio tokens, steps, cache update) and decoder."""
        if not self.stats.chunks:
            return None
        stages = self.stats.stage_seconds
        busy = stages["dit"] + stages["cache_update"] + stages["vae_decode"]
        return round(1000 * busy / self.stats.chunks)

    def close(self, timeout: float = 10.0) -> Path | None:
        """End the audio, let the renderer finish, write the recording; returns its path."""
        self.audio.close()
        if self._thread.is_alive() or self._thread.ident is not None:
            self._thread.join(timeout)
        if self.recording is None:
            return None
        return self.recording.close(keep=self.error is None and not self._thread.is_alive())

    def _render(self) -> None:
        """The renderer's frames into the buffer (and the recording), in order."""
        index = 0
        options = self.options.render_options(self.model)
        try:
            for block in render_frames(self.model, self.reference, self.audio, options, self.stats):
                if self.recording is not None:
                    self.recording.frames(block)
                for frame in block:
                    self.buffer.put(index, frame)
                    index += 1
                if self._on_frames is not None:
                    self._on_frames()
        except BaseException as err:  # noqa: BLE001 - shown in the page, the server goes on
            self.error = err
            self.audio.close()


def _median_ms(seconds: deque[float]) -> int | None:
    """The median of the values (seconds) in ms, None without any."""
    values = list(seconds)
    return round(1000 * statistics.median(values)) if values else None
