"""What the avatar says in `say` and `reply` modes: utterances (16 kHz samples) wait in a
`SpeechQueue`; `feed_speech` pushes them into the live session in real time, 20 ms at a
time, and silence between them (the renderer's silence mode: the avatar listens, mouth
closed). Text from the page (`parse_say`) is spoken by eSpeak NG (`synthesize`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque

import numpy as np

from tmrender.data.speech import named_voice, speak_text
from tmrender.errors import UserInputError
from tmrender.media.audio import SAMPLE_RATE
from tmrender.serve.session import LiveSession

MAX_SAY_CHARS = 500  # characters of one text to speak
MAX_MESSAGE_BYTES = 4096  # one data channel message from the page
MAX_QUEUED_SECONDS = 60.0  # speech waiting to be spoken
FEED_BLOCK = SAMPLE_RATE // 50  # 20 ms pushed at a time
_SPEAK_LOCK = threading.Lock()  # eSpeak NG is one engine per process


class SpeechQueue:
    """Utterances (N,) float32 at 16 kHz waiting to be spoken, in order; `block(n)` gives
    the next n samples to drive the avatar with: speech, or silence when none waits."""

    def __init__(self, max_seconds: float = MAX_QUEUED_SECONDS) -> None:
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self.spoken = 0  # utterances started
        self._utterances: deque[np.ndarray] = deque()
        self._current = np.zeros(0, np.float32)
        self._lock = threading.Lock()

    @property
    def pending_samples(self) -> int:
        with self._lock:
            return self._current.size + sum(u.size for u in self._utterances)

    @property
    def busy(self) -> bool:
        """Whether speech is waiting or being pushed."""
        return self.pending_samples > 0

    def add(self, samples: np.ndarray) -> None:
        """Queue an utterance (N,) float32; raises UserInputError when the queue would hold
        more than its cap."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        if self.pending_samples + samples.size > self.max_samples:
            raise UserInputError(
                f"too much speech waiting (at most {self.max_samples // SAMPLE_RATE} s): "
                "wait until the avatar has said it"
            )
        with self._lock:
            self._utterances.append(samples)

    def block(self, n: int) -> np.ndarray:
        """The next n samples (n,) float32: queued speech, padded with silence."""
        out = np.zeros(n, np.float32)
        filled = 0
        with self._lock:
            while filled < n:
                if not self._current.size:
                    if not self._utterances:
                        break
                    self._current = self._utterances.popleft()
                    self.spoken += 1
                take = min(n - filled, self._current.size)
                out[filled : filled + take] = self._current[:take]
                self._current = self._current[take:]
                filled += take
        return out


async def feed_speech(queue: SpeechQueue, session: LiveSession) -> str:
    """Push `queue.block` into the session every 20 ms, on time, until the session stops;
    returns why it stopped."""
    start, pushed = time.perf_counter(), 0
    while session.running:
        session.push_audio(queue.block(FEED_BLOCK))
        pushed += FEED_BLOCK
        await asyncio.sleep(max(0.0, start + pushed / SAMPLE_RATE - time.perf_counter()))
    return "render ended"


def parse_say(message: str | bytes) -> str:
    """The text of a page message {"say": TEXT}; raises UserInputError for anything else,
    an empty text or one longer than MAX_SAY_CHARS."""
    if len(message) > MAX_MESSAGE_BYTES:
        raise UserInputError(f"message too long (at most {MAX_MESSAGE_BYTES} bytes)")
    try:
        payload = json.loads(message)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserInputError("expected a JSON message {say: text}") from None
    text = payload.get("say") if isinstance(payload, dict) else None
    if not isinstance(text, str):
        raise UserInputError("expected a JSON message {say: text}")
    text = " ".join(text.split())
    if not text:
        raise UserInputError("nothing to say: the text is empty")
    if len(text) > MAX_SAY_CHARS:
        raise UserInputError(f"text too long: {len(text)} characters (at most {MAX_SAY_CHARS})")
    return text


def synthesize(text: str, voice: str) -> np.ndarray:
    """`text` spoken by eSpeak NG in `voice` (LANGUAGE+VARIANT): (N,) float32 at 16 kHz.
    One synthesis at a time (one engine per process); raises UserInputError."""
    chosen = named_voice(voice)
    with _SPEAK_LOCK:
        return speak_text(text, chosen)
