"""What keeps `tmrender live`'s latency down: the video track's tick schedule and its
wake-up on new frames, the microphone's shorter jitter buffer; and `tmrender bench --suite
live`'s report (its fields, not its timings)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

pytest.importorskip("aiortc")

from tmrender.serve import webrtc  # noqa: E402
from tmrender.serve.webrtc import AvatarTrack, TickSchedule  # noqa: E402

PERIOD = 0.04


def test_ticks_keep_their_schedule_whenever_the_ones_before_left():
    schedule = TickSchedule(PERIOD)
    assert schedule.due(100.0) == 100.0
    for n in range(1, 6):
        schedule.sent()
        # each tick is asked for 10 ms after the one before was due: no drift builds up
        asked = 100.0 + (n - 1) * PERIOD + 0.01
        assert schedule.due(asked) == pytest.approx(100.0 + n * PERIOD)
    assert schedule.reanchored == 0


def test_a_tick_far_behind_restarts_the_schedule_instead_of_a_burst():
    schedule = TickSchedule(PERIOD, reanchor_ticks=3)
    schedule.due(0.0)
    schedule.sent()
    assert schedule.due(0.04 + 3 * PERIOD) == pytest.approx(0.04)  # 3 ticks late: catch up
    assert schedule.reanchored == 0
    assert schedule.due(1.0) == 1.0  # 24 ticks late: from now on
    schedule.sent()
    assert schedule.due(1.0) == pytest.approx(1.0 + PERIOD) and schedule.reanchored == 1


def test_anchor_moves_the_ticks_after_it():
    schedule = TickSchedule(PERIOD)
    schedule.due(0.0)
    schedule.sent()
    schedule.anchor(0.013)
    schedule.sent()
    assert schedule.due(0.02) == pytest.approx(0.013 + PERIOD)


class FakeSession:
    """What the video track asks of a `LiveSession`: frames put by another thread."""

    def __init__(self, fps: float) -> None:
        self.fps, self.held, self.reanchored, self.rendering = fps, 0, 0, True
        self.frames: list[np.ndarray] = []
        self.last = np.zeros((4, 4, 3), np.uint8)
        self.callback = None

    def on_frames(self, callback) -> None:
        self.callback = callback

    def frame_ready(self) -> bool:
        return bool(self.frames)

    def next_frame(self) -> np.ndarray:
        if self.frames:
            self.last = self.frames.pop(0)
        else:
            self.held += 1
        return self.last

    def put(self, frame: np.ndarray) -> None:  # from the render thread
        self.frames.append(frame)
        self.callback()


def test_after_a_held_frame_the_track_sends_the_next_when_it_arrives(monkeypatch):
    """At 0.1 fps the next tick is 10 s away: the frame put 50 ms after a held one comes
    back well before that only because the track wakes for it."""
    monkeypatch.setattr(webrtc, "MIN_GAP", 0.0)
    session = FakeSession(fps=0.1)
    track = AvatarTrack(session)

    async def scenario() -> np.ndarray:
        await track.recv()  # nothing rendered yet: held
        assert session.held == 1
        fresh = np.full((4, 4, 3), 7, np.uint8)
        threading.Timer(0.05, session.put, (fresh,)).start()
        frame = await asyncio.wait_for(track.recv(), 5.0)
        return frame.to_ndarray(format="rgb24")

    got = asyncio.run(scenario())
    assert (got == 7).all() and session.held == 1


def test_the_microphone_jitter_buffer_hands_a_frame_on_with_the_next_packet():
    from aiortc import RTCPeerConnection
    from aiortc.rtp import RtpPacket

    from tmrender.serve.webrtc import AUDIO_PREFETCH, shorten_audio_jitter_buffer

    def packets(n: int) -> list[RtpPacket]:
        out = []
        for seq in range(n):  # one 20 ms Opus frame per packet, 960 ticks of 48 kHz apart
            packet = RtpPacket(sequence_number=seq, timestamp=960 * seq, payload=bytes([seq]))
            packet._data = packet.payload  # what the receiver's depayloader sets
            out.append(packet)
        return out

    async def scenario() -> tuple[list, list]:
        pc = RTCPeerConnection()
        try:
            short = pc.addTransceiver("audio").receiver
            default = pc.addTransceiver("audio").receiver
            assert shorten_audio_jitter_buffer(short)
            name = "_RTCRtpReceiver__jitter_buffer"
            frames = []
            for receiver in (short, default):
                buffer = getattr(receiver, name)
                frames.append([buffer.add(p)[1] for p in packets(6)])
            return frames
        finally:
            await pc.close()

    short, default = asyncio.run(scenario())
    assert AUDIO_PREFETCH == 1
    # ours: frame k comes out when packet k + 1 arrives (20 ms); aiortc's: at packet k + 4
    assert short[0] is None and [f.data for f in short[1:]] == [bytes([k]) for k in range(5)]
    assert default[:4] == [None] * 4 and [f.data for f in default[4:]] == [b"\x00", b"\x01"]
    assert not shorten_audio_jitter_buffer(object())  # no such buffer: nothing changed
