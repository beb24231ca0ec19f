"""A Python WebRTC client of `tmrender live`, for tests and latency figures: it plays
samples as its microphone (in real time, 20 ms frames, then silence) and keeps every frame
it gets back with the time it arrived.

    client = await LiveClient.connect("http://127.0.0.1:8000", samples, rate=48_000)
    await asyncio.sleep(3)
    await client.close()
    client.frames  # [(perf_counter seconds, (H, W, 3) uint8), ...]

Sample s of `samples` leaves at `client.sent_at(s)` (perf_counter seconds).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
import urllib.error
import urllib.request

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from tmrender.errors import UserInputError

FRAME_SECONDS = 0.02  # an Opus frame


class BusyError(UserInputError):
    """The server runs another session."""


class SampleTrack(MediaStreamTrack):
    """Mono float32 samples (N,) in [-1, 1] as a real-time microphone, then silence."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, rate: int) -> None:
        super().__init__()
        self.samples, self.rate = np.asarray(samples, np.float32), rate
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
        part = self.samples[self._sent : self._sent + self.step]
        block[: part.size] = part
        pcm = (np.clip(block, -1, 1) * 32767).round().astype("<i2")[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts = self.rate, self._sent
        frame.time_base = fractions.Fraction(1, self.rate)
        self._sent += self.step
        return frame


class LiveClient:
    """One connection to a live server (see the module docstring)."""

    def __init__(self, pc: RTCPeerConnection, microphone: SampleTrack) -> None:
        self.pc, self.microphone = pc, microphone
        self.frames: list[tuple[float, np.ndarray]] = []
        self.figures: list[dict] = []  # what the server's data channel sent
        self._receivers: list[asyncio.Task] = []

    def sent_at(self, sample: int) -> float | None:
        """When sample `sample` of the played samples left (perf_counter seconds)."""
        start = self.microphone.start
        return None if start is None else start + sample / self.microphone.rate

    @classmethod
    async def connect(cls, url: str, samples: np.ndarray, rate: int = 48_000) -> LiveClient:
        """Offer to `url` (the server's root); raises BusyError when it is busy."""
        pc = RTCPeerConnection()
        client = cls(pc, SampleTrack(samples, rate))
        pc.addTrack(client.microphone)
        pc.addTransceiver("video", direction="recvonly")
        channel = pc.createDataChannel("stats")
        channel.on("message", lambda message: client.figures.append(json.loads(message)))

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "video":
                client._receivers.append(asyncio.ensure_future(client._receive(track)))

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
            self.frames.append((time.perf_counter(), frame.to_ndarray(format="rgb24")))

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
        message = json.loads(err.read() or b"{}").get("error", str(err))
        if err.code == 409:
            raise BusyError(message) from None
        raise UserInputError(f"the live server refused the offer: {message}") from None


def get_json(url: str) -> dict:
    """GET a JSON document (the server's /status)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())
