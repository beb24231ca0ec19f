"""A Python WebRTC client of `tmrender live`, for tests and latency figures: it plays
samples as its microphone (in real time, 20 ms frames, then silence) and keeps every frame
and every piece of the avatar's voice it gets back with the time it arrived.

    client = await LiveClient.connect("http://127.0.0.1:8000", samples, rate=48_000)
    await asyncio.sleep(3)
    await client.close()
    client.frames  # [(perf_counter seconds, (H, W, 3) uint8), ...]
    client.voice   # [(perf_counter seconds, (N,) float32 mono, sample rate), ...]

Sample s of `samples` leaves at `client.sent_at(s)` (perf_counter seconds); with
`length`, the samples repeat up to that many. `on_frame(arrival, frame)` takes each frame
instead of `client.frames` (a long session then keeps none). Without
samples (`say` mode) it sends no microphone and only receives. `await client.say(text)`
sends a text to speak; the server's figures land in `client.figures`, its events
({"event", "text"}) in `client.events`.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from tmrender.errors import UserInputError
from tmrender.serve.webrtc import frame_to_mono

FRAME_SECONDS = 0.02  # an Opus frame


class BusyError(UserInputError):
    """The server runs another session."""


class SampleTrack(MediaStreamTrack):
    """Mono float32 samples (N,) in [-1, 1] as a real-time microphone, then silence; with
    `length`, the samples repeated up to `length` samples, then silence."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, rate: int, length: int | None = None) -> None:
        super().__init__()
        self.samples, self.rate = np.asarray(samples, np.float32), rate
        self.length = self.samples.size if length is None else length
        self.step = int(rate * FRAME_SECONDS)
        self.start: float | None = None
        self._sent = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.perf_counter()
        else:
            due = self.start + self._sent / self.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        block = np.zeros(self.step, np.float32)
        if self._sent < self.length and self.samples.size:
            at = np.arange(self._sent, min(self._sent + self.step, self.length))
            block[: at.size] = self.samples[at % self.samples.size]
        pcm = (np.clip(block, -1, 1) * 32767).round().astype("<i2")[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts = self.rate, self._sent
        frame.time_base = fractions.Fraction(1, self.rate)
        self._sent += self.step
        return frame


class LiveClient:
    """One connection to a live server (see the module docstring)."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        microphone: SampleTrack | None,
        channel,
        on_frame: Callable[[float, np.ndarray], None] | None = None,
    ) -> None:
        self.pc, self.microphone, self.channel = pc, microphone, channel
        self.frames: list[tuple[float, np.ndarray]] = []
        self.on_frame = on_frame or (lambda t, frame: self.frames.append((t, frame)))
        self.voice: list[tuple[float, np.ndarray, int]] = []
        self.figures: list[dict] = []  # the session's figures the server's data channel sent
        self.events: list[dict] = []  # and its events
        self._receivers: list[asyncio.Task] = []

    def sent_at(self, sample: int) -> float | None:
        """When sample `sample` of the played samples left (perf_counter seconds)."""
        start = None if self.microphone is None else self.microphone.start
        return None if start is None else start + sample / self.microphone.rate

    @classmethod
    async def connect(
        cls,
        url: str,
        samples: np.ndarray | None,
        rate: int = 48_000,
        length: int | None = None,
        on_frame: Callable[[float, np.ndarray], None] | None = None,
    ) -> LiveClient:
        """Offer to `url` (the server's root); raises BusyError when it is busy. The
        microphone plays `samples` (repeated up to `length` samples when given); each
        frame received goes to `on_frame(arrival, frame)` (default: `frames`)."""
        pc = RTCPeerConnection()
        microphone = None if samples is None else SampleTrack(samples, rate, length)
        if microphone is None:
            pc.addTransceiver("audio", direction="recvonly")
        else:
            pc.addTrack(microphone)
        pc.addTransceiver("video", direction="recvonly")
        channel = pc.createDataChannel("stats")
        client = cls(pc, microphone, channel, on_frame)
        channel.on("message", client._on_message)

        @pc.on("track")
        def on_track(track) -> None:
            receive = client._receive if track.kind == "video" else client._receive_voice
            client._receivers.append(asyncio.ensure_future(receive(track)))

        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        try:
            answer = await asyncio.to_thread(_post_json, url.rstrip("/") + "/offer", offer)
        except BaseException:
            await pc.close()
            raise
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return client

    async def _receive(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.on_frame(time.perf_counter(), frame.to_ndarray(format="rgb24"))

    async def _receive_voice(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.voice.append((time.perf_counter(), frame_to_mono(frame), frame.sample_rate))

    def _on_message(self, message: str) -> None:
        payload = json.loads(message)
        (self.events if "event" in payload else self.figures).append(payload)

    async def say(self, text: str, timeout: float = 10.0) -> None:
        """Send `text` for the avatar to speak (say mode), once the data channel is open."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.channel.readyState != "open":
            if loop.time() > deadline:
                raise TimeoutError("the data channel did not open")
            await asyncio.sleep(0.02)
        self.channel.send(json.dumps({"say": text}))

    async def close(self) -> None:
        await self.pc.close()
        for task in self._receivers:
            task.cancel()


def _post_json(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        body = err.read().decode("utf-8", "replace")
        try:
            message = json.loads(body).get("error", str(err))
        except (json.JSONDecodeError, AttributeError):
            message = body.strip() or str(err)
        if err.code == 409:
            raise BusyError(message) from None
        raise UserInputError(f"the live server refused the offer: {message}") from None


def get_json(url: str) -> dict:
    """GET a JSON document (the server's /status)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())
