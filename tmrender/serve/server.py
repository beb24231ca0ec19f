"""The local server of `tmrender live`: the page, WebRTC signalling, one session at a time.

A small HTTP/1.1 server on asyncio streams (no web framework):

    GET  /          the page (`static/index.html`), or the busy page while a session runs
    GET  /live.js   its script
    GET  /status    {"busy": bool, "session": the running session's figures or null}
    POST /offer     {"sdp", "type"} -> the answer; 409 {"error": "busy ..."} while busy

Each offer starts a `LiveSession` and an aiortc peer connection; the session ends when the
microphone track ends or stalls for `AUDIO_TIMEOUT` seconds, or the connection fails or
closes, and the next offer is taken once it has been cleaned up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription

from tmrender.models.talking import TalkingModel
from tmrender.serve.session import LiveOptions, LiveSession
from tmrender.serve.webrtc import AUDIO_TIMEOUT, AvatarTrack, pump_microphone

MAX_BODY = 64 * 1024  # bytes of an offer
STATS_SECONDS = 0.5  # how often the page gets the session's figures
MAX_SESSION_SECONDS = 3600.0  # a session is ended after an hour
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
            figures = self.session.snapshot() if self.session else None
            status = {"busy": self.busy, "session": figures}
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
        pc = RTCPeerConnection()
        ended = asyncio.Event()
        channels: list = []
        microphones: list = []

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio" and not microphones:
                microphones.append(track)
                self._spawn(_set_when_done(pump_microphone(track, session), ended, self.on_event))

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            channels.append(channel)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                ended.set()

        pc.addTrack(AvatarTrack(session))
        try:
            await pc.setRemoteDescription(offer)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            await pc.close()
            session.close()
            self.session = None
            raise
        self._spawn(self._run_session(pc, session, ended, channels, microphones))
        self.on_event(f"session {self.sessions}: connected")
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    async def _run_session(
        self, pc, session: LiveSession, ended: asyncio.Event, channels, microphones
    ) -> None:
        """Send figures to the page until the session ends (also: no microphone track
        within AUDIO_TIMEOUT, or MAX_SESSION_SECONDS), then free it."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            while not ended.is_set() and session.running:
                elapsed = loop.time() - start
                if elapsed > MAX_SESSION_SECONDS or (not microphones and elapsed > AUDIO_TIMEOUT):
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ended.wait(), STATS_SECONDS)
                _send(channels, session.snapshot())
        finally:
            figures = session.snapshot()
            _send(channels, figures)  # the last figures: a render error reaches the page
            await pc.close()
            written = await asyncio.to_thread(session.close)
            if written is not None:
                self.recorded.append(written)
                self.on_event(f"wrote {written}")
            self.session = None
            self.on_event(
                f"session {self.sessions}: ended after {figures['seconds']} s, "
                f"{figures['frames_rendered']} frames rendered, latency {figures['latency_ms']} ms"
                + (f", error {figures['error']}" if figures["error"] else "")
            )

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _send(channels, figures: dict) -> None:
    """The session's figures to the page's open data channels."""
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
