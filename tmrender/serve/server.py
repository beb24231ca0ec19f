"""The local server of `tmrender live`: the page, WebRTC signalling, one session at a time.

A small HTTP/1.1 server on asyncio streams (no web framework):

    GET  /          the page (`static/index.html`), or the busy page while a session runs
    GET  /live.js   its script
    GET  /status    {"busy": bool, "mode": str, "session": the running session's figures or null}
    POST /offer     {"sdp", "type"} -> the answer; 409 {"error": "busy ..."} while busy

Each offer starts a `LiveSession` and an aiortc peer connection; the session ends when the
microphone track ends or stalls for `AUDIO_TIMEOUT` seconds (mirror and reply modes; in
say mode: no data channel within that time), the page's data channel closes, or the
connection fails or closes, and the next offer is taken once it has been cleaned up.

The data channel carries the session's figures to the page every STATS_SECONDS, events
({"event": "info" | "error", "text"}: a reply program's failure, a text refused), and in
`say` mode the page's texts to speak ({"say": TEXT}). In `say` and `reply` modes a
`SpeechQueue` drives the renderer (speech or silence, in real time) and a `VoiceTrack`
sends the avatar's voice with its frames; in `reply` mode the microphone goes to a
`Conversation` (voice activity, the reply program) instead of the renderer, and is not
listened to while the avatar speaks (its own voice from the speakers would be answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription

from tmrender.errors import UserInputError
from tmrender.media.audio import SAMPLE_RATE
from tmrender.models.talking import TalkingModel
from tmrender.serve.reply import Conversation, ReplyProgram
from tmrender.serve.say import SpeechQueue, feed_speech, parse_say, synthesize
from tmrender.serve.session import LiveOptions, LiveSession
from tmrender.serve.webrtc import (
    AUDIO_TIMEOUT,
    AvatarTrack,
    VoiceTrack,
    pump_microphone,
    shorten_audio_jitter_buffer,
)

MAX_BODY = 64 * 1024  # bytes of an offer
STATS_SECONDS = 0.5  # how often the page gets the session's figures
MAX_SESSION_SECONDS = 3600.0  # a session is ended after an hour
MAX_SYNTHESES = 4  # texts waiting for eSpeak NG at once (say mode); more are refused
ECHO_SECONDS = 0.6  # after the avatar's voice was sent, the reply microphone stays shut
SPEAKING_HANGOVER = 0.3  # seconds after the last voiced frame sent that the page says "speaking"
PAGES = {"/": ("index.html", "text/html"), "/live.js": ("live.js", "text/javascript")}
BUSY_PAGE = (
    "<!doctype html><meta charset=utf-8><title>tmrender live: busy</title>"
    "<body style='font-family:sans-serif'><h1>Busy</h1><p>Someone is talking with the "
    "avatar now; tmrender live serves one session at a time. Reload in a moment.</p>"
)
BAD_REQUEST = (
    ValueError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    asyncio.TimeoutError,
    ConnectionError,
)
log = logging.getLogger("tmrender.live")


class LiveServer:
    """Serves one live session at a time for a loaded model and portrait."""

    def __init__(
        self,
        model: TalkingModel,
        reference: np.ndarray,
        options: LiveOptions | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.model, self.reference = model, reference
        self.options = options or LiveOptions()
        self.on_event = on_event or log.info
        self.session: LiveSession | None = None
        self.talk: _Talk | None = None  # the running session's speech (say and reply modes)
        self.sessions = 0  # sessions started so far (a recording per session: see `record_path`)
        self.recorded: list[Path] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def busy(self) -> bool:
        return self.session is not None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); returns the port."""
        self._server = await asyncio.start_server(self._handle, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and end the running session (its recording is written)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- HTTP -----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, body = await _read_request(reader)
            status, kind, payload = await self._route(method, path, body)
        except BAD_REQUEST as err:
            status, kind, payload = 400, "text/plain", f"bad request: {err}".encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {kind}; "
            f"charset=utf-8\r\nContent-Length: {len(payload)}\r\nCache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + payload)
            await writer.drain()
            writer.close()

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0]
        if method == "GET" and path in PAGES:
            if path == "/" and self.busy:
                return 503, "text/html", BUSY_PAGE.encode()
            name, kind = PAGES[path]
            return 200, kind, resources.files(__package__).joinpath("static", name).read_bytes()
        if method == "GET" and path == "/status":
            figures = self._figures() if self.session else None
            status = {"busy": self.busy, "mode": self.options.mode, "session": figures}
            return 200, "application/json", json.dumps(status).encode()
        if method == "POST" and path == "/offer":
            if self.busy:
                message = "busy: someone is talking with the avatar now; try again in a moment"
                return 409, "application/json", json.dumps({"error": message}).encode()
            offer = json.loads(body)
            if not isinstance(offer, dict) or offer.get("type") != "offer" or "sdp" not in offer:
                raise ValueError("expected a JSON offer {sdp, type: offer}")
            answer = await self._open_session(RTCSessionDescription(offer["sdp"], "offer"))
            return 200, "application/json", json.dumps(answer).encode()
        return 404, "text/plain", b"not found"

    # --- sessions -------------------------------------------------------------------------

    async def _open_session(self, offer: RTCSessionDescription) -> dict:
        """Start a session for an offer; returns the answer {sdp, type}."""
        self.sessions += 1
        options = self.options
        if options.record is not None:
            options = _replace_record(options, record_path(options.record, self.sessions))
        session = self.session = LiveSession(self.model, self.reference, options).start()
        loop = asyncio.get_running_loop()
        pc = RTCPeerConnection()
        ended = asyncio.Event()
        channels: list = []
        microphones: list = []
        talk = self.talk = _Talk(options, session, channels, loop, self.on_event)

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio" and not microphones:
                microphones.append(track)
                sink = talk.microphone_sink(session)
                self._spawn(
                    _set_when_done(pump_microphone(track, session, sink), ended, self.on_event)
                )

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            channels.append(channel)
            channel.on("message", lambda message: talk.on_message(message, self._spawn))
            channel.on("close", ended.set)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                ended.set()

        pc.addTrack(AvatarTrack(session))
        if options.speaks:
            self._spawn(feed_speech(talk.speech, session))
        try:
            await pc.setRemoteDescription(offer)
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "audio":  # the microphone: decoded 60 ms sooner
                    shorten_audio_jitter_buffer(transceiver.receiver, options.audio_prefetch)
            if options.speaks and any(t.kind == "audio" for t in pc.getTransceivers()):
                pc.addTrack(VoiceTrack(session))  # the voice, where the offer takes audio
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            await pc.close()
            session.close()
            talk.close()
            self.session = self.talk = None
            raise
        self._spawn(self._run_session(pc, session, ended, channels, microphones))
        self.on_event(f"session {self.sessions}: connected ({options.mode})")
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    def _figures(self) -> dict:
        """The running session's figures, with the avatar's state in say and reply modes."""
        figures = self.session.snapshot()
        if self.talk is not None and self.talk.speech is not None:
            speaking = time.perf_counter() - self.session.voiced_until < SPEAKING_HANGOVER
            figures["state"] = self.talk.state(speaking)
        return figures

    async def _run_session(
        self, pc, session: LiveSession, ended: asyncio.Event, channels, microphones
    ) -> None:
        """Send figures to the page until the session ends (also: no microphone track
        within AUDIO_TIMEOUT where one is needed, no data channel then in say mode, or
        MAX_SESSION_SECONDS), then free it."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        needed = channels if self.options.mode == "say" else microphones  # what drives it
        try:
            while not ended.is_set() and session.running:
                elapsed = loop.time() - start
                if elapsed > MAX_SESSION_SECONDS or (not needed and elapsed > AUDIO_TIMEOUT):
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ended.wait(), STATS_SECONDS)
                _send(channels, self._figures())
        finally:
            figures = self._figures()
            _send(channels, figures)  # the last figures: a render error reaches the page
            await pc.close()
            written = await asyncio.to_thread(session.close)
            if self.talk is not None:
                await asyncio.to_thread(self.talk.close)
            if written is not None:
                self.recorded.append(written)
                self.on_event(f"wrote {written}")
            self.session = self.talk = None
            self.on_event(
                f"session {self.sessions}: ended after {figures['seconds']} s, "
                f"{figures['frames_rendered']} frames rendered, latency {figures['latency_ms']} ms"
                + (f", error {figures['error']}" if figures["error"] else "")
            )

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Talk:
    """A session's speech in say and reply modes: the queue that drives the renderer, the
    page's texts (say), the microphone's utterances and the reply program (reply); events
    for the page go to its data channels from any thread."""

    def __init__(
        self,
        options: LiveOptions,
        session: LiveSession,
        channels: list,
        loop,
        log: Callable[[str], None],
    ) -> None:
        self.options, self.session, self.channels = options, session, channels
        self.loop, self.log = loop, log
        self.speech = SpeechQueue() if options.speaks else None
        self.synthesizing = 0  # texts being spoken by eSpeak NG now
        self.conversation = None
        if options.mode == "reply" and options.reply:
            program = ReplyProgram(options.reply, options.reply_timeout)
            self.conversation = Conversation(
                program, self.speech, self.report, speaking=self.avatar_speaks
            )

    def avatar_speaks(self) -> bool:
        """Whether the avatar's voice is queued, or was sent less than ECHO_SECONDS ago: the
        microphone may hear it then, and reply mode does not answer itself."""
        recent = time.perf_counter() - self.session.voiced_until < ECHO_SECONDS
        return self.speech is not None and (self.speech.busy or recent)

    def microphone_sink(self, session: LiveSession) -> Callable[[np.ndarray], None]:
        """Where the microphone goes: the renderer (mirror), the conversation (reply), or
        nowhere (say: the page's texts drive the avatar)."""
        if self.conversation is not None:
            return self.conversation.hear
        return session.push_audio if self.speech is None else _discard

    def state(self, speaking: bool) -> str:
        """listening / thinking / speaking, for the page."""
        if self.conversation is not None:
            return self.conversation.state(speaking)
        return "speaking" if speaking or self.speech.busy else "listening"

    def report(self, event: dict) -> None:
        """An event for the page ({"event": "info" | "error", "text"}), from any thread."""
        self.log(f"{event['event']}: {event['text']}")
        self.loop.call_soon_threadsafe(_send, self.channels, event)

    def on_message(self, message, spawn: Callable) -> None:
        """A data channel message from the page: in say mode a text to speak."""
        if self.options.mode != "say":
            self.report(
                {"event": "error", "text": f"texts are spoken in say mode, not {self.options.mode}"}
            )
            return
        try:
            text = parse_say(message)
            if self.synthesizing >= MAX_SYNTHESES:
                raise UserInputError("still speaking the texts before: send it again in a moment")
        except UserInputError as err:
            self.report({"event": "error", "text": str(err)})
            return
        self.synthesizing += 1
        spawn(self._say(text))

    async def _say(self, text: str) -> None:
        try:
            samples = await asyncio.to_thread(synthesize, text, self.options.voice)
            self.speech.add(samples)
        except UserInputError as err:
            self.report({"event": "error", "text": str(err)})
            return
        finally:
            self.synthesizing -= 1
        self.report(
            {
                "event": "info",
                "text": f"saying {len(text)} characters, {samples.size / SAMPLE_RATE:.1f} s",
            }
        )

    def close(self) -> None:
        if self.conversation is not None:
            self.conversation.close()


def _discard(samples: np.ndarray) -> None:
    """A microphone sink that drops the samples."""


def _send(channels, figures: dict) -> None:
    """A message (the session's figures, an event) to the page's open data channels."""
    message = json.dumps(figures)
    for channel in channels:
        if channel.readyState == "open":
            channel.send(message)


def record_path(path: Path, session: int) -> Path:
    """The recording of session n: `path` for the first, `stem-n.mp4` after it."""
    return path if session == 1 else path.with_name(f"{path.stem}-{session}{path.suffix}")


def _replace_record(options: LiveOptions, path: Path) -> LiveOptions:
    import dataclasses

    return dataclasses.replace(options, record=path)


async def _set_when_done(coroutine, event: asyncio.Event, report: Callable[[str], None]) -> None:
    try:
        report(f"microphone: {await coroutine}")
    finally:
        event.set()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    """(method, path, body) of one HTTP/1.1 request; the body is capped at MAX_BODY."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
    size = int(headers.get("content-length", "0"))
    if not 0 <= size <= MAX_BODY:
        raise ValueError(f"body of {size} bytes (at most {MAX_BODY})")
    body = await asyncio.wait_for(reader.readexactly(size), 10.0) if size else b""
    return method, path, body


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 409: "Conflict", 503: "Busy"}
