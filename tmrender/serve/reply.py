"""`reply` mode: each utterance heard goes to a program the user names, and its answer is
spoken by the avatar.

The program is either a command line or an http(s) URL (`--reply`):

- command: run as argv (never through a shell) with two more arguments, the path of the
  utterance (16 kHz mono 16-bit WAV) and the path to write the answer to (a WAV or any
  audio ffmpeg reads, any sample rate); exit status 0 means an answer was written. It is
  killed (its whole process group) after `timeout` seconds.
- URL: the utterance's WAV bytes are POSTed (Content-Type: audio/wav); the response body
  is the answer (status 200), read within `timeout` seconds.

Answers are decoded to 16 kHz mono, capped at MAX_ANSWER_BYTES and MAX_ANSWER_SECONDS.
The WAVs live in a private temporary folder (mode 0700) removed when the session ends.
A failure (exit status, timeout, not audio) raises `ReplyError` with one line for the page.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tmrender.errors import UserInputError
from tmrender.media.audio import SAMPLE_RATE, load_audio, write_wav
from tmrender.serve.say import SpeechQueue
from tmrender.serve.vad import VoiceActivity

MAX_ANSWER_BYTES = 32 * 1024 * 1024  # an answer file or response body
MAX_ANSWER_SECONDS = 60.0  # of the answer spoken; the rest is cut
MAX_UTTERANCE_SECONDS = 30.0  # of the user's speech sent to the program


class ReplyError(Exception):
    """The reply program failed; the message is one line for the page."""


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def check_reply_target(target: str) -> None:
    """Raise UserInputError unless `target` is an http(s) URL or a command that exists."""
    if is_url(target):
        return
    try:
        argv = shlex.split(target)
    except ValueError as err:
        raise UserInputError(f"--reply {target!r}: {err}") from None
    if not argv:
        raise UserInputError("--reply: give a command or an http:// URL")
    if shutil.which(argv[0]) is None:
        raise UserInputError(f"--reply: {argv[0]} is not an executable program")


class ReplyProgram:
    """One session's reply program (a command line or URL) and its private folder."""

    def __init__(self, target: str, timeout: float) -> None:
        self.target, self.timeout = target, timeout
        self.folder = Path(tempfile.mkdtemp(prefix="tmrender-reply-"))  # mode 0700
        self.calls = 0
        self._process: subprocess.Popen | None = None
        self._closed = False

    def answer(self, utterance: np.ndarray) -> np.ndarray:
        """The program's answer to `utterance` (N,) float32 16 kHz, as (M,) float32 16 kHz;
        raises ReplyError."""
        self.calls += 1
        heard = self.folder / f"heard-{self.calls}.wav"
        answer = self.folder / f"answer-{self.calls}.wav"
        try:
            write_wav(heard, utterance[: int(MAX_UTTERANCE_SECONDS * SAMPLE_RATE)])
            if is_url(self.target):
                self._post(heard, answer)
            else:
                self._run(heard, answer)
            return decode_answer(answer)
        finally:
            heard.unlink(missing_ok=True)
            answer.unlink(missing_ok=True)

    def _run(self, heard: Path, answer: Path) -> None:
        argv = [*shlex.split(self.target), str(heard), str(answer)]
        if self._closed:
            raise ReplyError("the session has ended")
        process = self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills its children too
        )
        try:
            _, stderr = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise ReplyError(
                f"the reply program took longer than {self.timeout:g} s and was stopped"
            ) from None
        finally:
            self._process = None
        if process.returncode != 0:
            detail = _last_line(stderr)
            raise ReplyError(
                f"the reply program failed (exit status {process.returncode})"
                + (f": {detail}" if detail else "")
            )

    def _post(self, heard: Path, answer: Path) -> None:
        request = urllib.request.Request(
            self.target, heard.read_bytes(), {"Content-Type": "audio/wav"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as err:
            raise ReplyError(f"the reply URL answered HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ReplyError(f"the reply URL failed: {reason}") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise ReplyError(f"the reply is larger than {MAX_ANSWER_BYTES // 2**20} MiB")
        answer.write_bytes(body)

    def close(self) -> None:
        """Stop a running program and remove the folder; safe to call twice."""
        self._closed = True
        process = self._process
        if process is not None and process.poll() is None:
            _kill_group(process)
        shutil.rmtree(self.folder, ignore_errors=True)


def decode_answer(path: Path) -> np.ndarray:
    """An answer file -> (M,) float32 at 16 kHz, at most MAX_ANSWER_SECONDS; raises
    ReplyError when it is missing, too large, or not audio."""
    if not path.is_file():
        raise ReplyError("the reply program wrote no answer")
    if path.stat().st_size > MAX_ANSWER_BYTES:
        raise ReplyError(f"the answer is larger than {MAX_ANSWER_BYTES // 2**20} MiB")
    try:
        samples = load_audio(path)
    except UserInputError:
        raise ReplyError("the reply program's answer is not audio") from None
    samples = samples[: int(MAX_ANSWER_SECONDS * SAMPLE_RATE)]
    if not samples.size or not np.isfinite(samples).all():
        raise ReplyError("the reply program's answer is not audio")
    return np.clip(samples, -1, 1)


class Conversation:
    """Reply mode's loop: the microphone (`hear`) -> voice activity -> each utterance to
    the program in a worker thread -> its answer into the speech queue. One answer is
    worked on at a time; an utterance that ends meanwhile is left out (and said so). While
    `speaking()` is true (the avatar's voice plays) the microphone is not listened to.
    `report(event)` gets {"event": "error"|"info", "text": ...} from any thread."""

    def __init__(
        self,
        program: ReplyProgram,
        speech: SpeechQueue,
        report: Callable[[dict], None],
        vad: VoiceActivity | None = None,
        speaking: Callable[[], bool] | None = None,
    ) -> None:
        self.program, self.speech, self.report = program, speech, report
        self.vad = vad or VoiceActivity(max_seconds=MAX_UTTERANCE_SECONDS)
        self.speaking = speaking or (lambda: False)
        self.heard = self.answered = self.failed = 0
        self._worker: threading.Thread | None = None

    @property
    def thinking(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def state(self, speaking: bool) -> str:
        """listening, thinking or speaking (`speaking`: the avatar's voice is playing)."""
        if self.thinking:
            return "thinking"
        return "speaking" if speaking or self.speech.busy else "listening"

    def hear(self, samples: np.ndarray) -> None:
        """Microphone samples (N,) float32 16 kHz."""
        if self.speaking():
            self.vad.reset()  # the avatar's own voice may come back through the microphone
            return
        for utterance in self.vad.push(samples):
            self.heard += 1
            if self.thinking:
                self.report({"event": "info", "text": "still thinking: that was not heard"})
                continue
            self._worker = threading.Thread(
                target=self._answer, args=(utterance,), name="tmrender-reply", daemon=True
            )
            self._worker.start()

    def _answer(self, utterance: np.ndarray) -> None:
        seconds = utterance.size / SAMPLE_RATE
        self.report({"event": "info", "text": f"heard {seconds:.1f} s: thinking"})
        try:
            self.speech.add(self.program.answer(utterance))
        except (ReplyError, UserInputError) as err:
            self.failed += 1
            self.report({"event": "error", "text": str(err)})
            return
        self.answered += 1

    def close(self, timeout: float = 5.0) -> None:
        """Stop the program (if running), wait for the worker, remove the folder."""
        self.program.close()
        if self._worker is not None:
            self._worker.join(timeout)


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.communicate(timeout=2)


def _last_line(stderr: bytes | None) -> str:
    lines = (stderr or b"").decode("utf-8", "replace").strip().splitlines()
    return lines[-1][:200] if lines else ""
