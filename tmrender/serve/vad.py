"""Voice activity for `reply` mode: the microphone's samples cut into utterances.

Energy-based, with the renderer's own voice test (`frame_rms_db` > `VOICE_RMS_DB` per
20 ms frame): an utterance starts at `min_voiced` seconds of voiced frames in a row (with
`preroll` seconds before them, the quiet start of a word), and ends after `hangover`
seconds without voice, or when it reaches `max_seconds` (then it is cut there).
"""

from __future__ import annotations

import numpy as np

from tmrender.media.audio import SAMPLE_RATE, VOICE_RMS_DB, frame_rms_db

FRAME = SAMPLE_RATE // 50  # 20 ms


class VoiceActivity:
    """Push 16 kHz samples in any blocks; get back each utterance once it has ended."""

    def __init__(
        self,
        threshold_db: float = VOICE_RMS_DB,
        min_voiced: float = 0.1,
        hangover: float = 0.7,
        preroll: float = 0.2,
        max_seconds: float = 30.0,
    ) -> None:
        self.threshold_db = threshold_db
        self.min_voiced = round(min_voiced * SAMPLE_RATE / FRAME)  # in frames
        self.hangover = round(hangover * SAMPLE_RATE / FRAME)
        self.preroll = round(preroll * SAMPLE_RATE / FRAME)
        self.max_frames = round(max_seconds * SAMPLE_RATE / FRAME)
        self.reset()

    def reset(self) -> None:
        """Forget what was heard (an utterance under way is dropped)."""
        self._rest = np.zeros(0, np.float32)  # samples short of a frame
        self._frames: list[np.ndarray] = []  # the utterance so far, or the pre-roll
        self._voiced_run = 0  # voiced frames in a row before an utterance starts
        self._quiet = 0  # unvoiced frames in a row inside an utterance
        self.talking = False

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Samples (N,) float32 -> the utterances that ended in them, each (M,) float32."""
        data = np.concatenate([self._rest, np.asarray(samples, np.float32).reshape(-1)])
        whole = data.size // FRAME * FRAME
        self._rest = data[whole:]
        if not whole:
            return []
        frames = data[:whole].reshape(-1, FRAME)
        voiced = frame_rms_db(data[:whole], FRAME) > self.threshold_db
        done = []
        for frame, is_voiced in zip(frames, voiced, strict=True):
            utterance = self._step(frame, bool(is_voiced))
            if utterance is not None:
                done.append(utterance)
        return done

    def _step(self, frame: np.ndarray, voiced: bool) -> np.ndarray | None:
        """One 20 ms frame; returns the utterance it ends, if any."""
        self._frames.append(frame)
        if not self.talking:
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= self.min_voiced:
                self.talking, self._quiet = True, 0
            else:
                del self._frames[: max(0, len(self._frames) - self.preroll - self._voiced_run)]
            return None
        self._quiet = 0 if voiced else self._quiet + 1
        if self._quiet >= self.hangover or len(self._frames) >= self.max_frames:
            return self._finish()
        return None

    def _finish(self) -> np.ndarray:
        """The utterance so far (trailing silence beyond 0.2 s trimmed); back to waiting."""
        keep = len(self._frames) - max(0, self._quiet - self.preroll)
        utterance = np.concatenate(self._frames[:keep])
        self._frames, self.talking, self._voiced_run, self._quiet = [], False, 0, 0
        return utterance
