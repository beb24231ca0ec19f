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
        self.voice_out, self.late = None, False
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

    def behind(self) -> bool:
        return self.late

    def put(self, frame: np.ndarray) -> None:  # from the render thread
        self.frames.append(frame)
        self.callback()


@pytest.mark.parametrize("held", [True, False])
def test_once_the_buffer_is_empty_the_track_sends_the_next_frame_when_it_arrives(monkeypatch, held):
    """At 0.1 fps the next tick is 10 s away: the frame put 50 ms after the buffer ran
    empty (a frame held, or the last one sent) comes back well before that only because
    the track wakes for it; the ticks after it follow from then."""
    monkeypatch.setattr(webrtc, "MIN_GAP", 0.0)
    session = FakeSession(fps=0.1)
    if not held:
        session.frames.append(np.full((4, 4, 3), 3, np.uint8))
    track = AvatarTrack(session)

    async def scenario() -> np.ndarray:
        await track.recv()  # the buffer is empty after it
        assert session.held == int(held)
        fresh = np.full((4, 4, 3), 7, np.uint8)
        threading.Timer(0.05, session.put, (fresh,)).start()
        frame = await asyncio.wait_for(track.recv(), 5.0)
        return frame.to_ndarray(format="rgb24")

    got = asyncio.run(scenario())
    assert (got == 7).all() and session.held == int(held)
    schedule = track.schedule  # anchored on the woken send: the next tick 10 s after it
    assert schedule.origin + schedule.tick * schedule.period == pytest.approx(track._last_sent + 10)


def test_the_microphone_jitter_buffer_hands_a_frame_on_with_the_next_packet():
    from aiortc import RTCPeerConnection
    from aiortc.rtp import RtpPacket

    from tmrender.serve.session import LiveOptions
    from tmrender.serve.webrtc import shorten_audio_jitter_buffer

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
            assert shorten_audio_jitter_buffer(short, LiveOptions().audio_prefetch)
            name = "_RTCRtpReceiver__jitter_buffer"
            frames = []
            for receiver in (short, default):
                buffer = getattr(receiver, name)
                frames.append([buffer.add(p)[1] for p in packets(6)])
            return frames
        finally:
            await pc.close()

    short, default = asyncio.run(scenario())
    # ours: frame k comes out when packet k + 1 arrives (20 ms); aiortc's: at packet k + 4
    assert short[0] is None and [f.data for f in short[1:]] == [bytes([k]) for k in range(5)]
    assert default[:4] == [None] * 4 and [f.data for f in default[4:]] == [b"\x00", b"\x01"]
    assert not shorten_audio_jitter_buffer(object(), 1)  # no such buffer: nothing changed


# --- tmrender bench --suite live ---------------------------------------------------------------


@pytest.mark.slow
def test_bench_live_reports_sane_figures_of_a_short_session(tiny_init):
    """A 4-s session of the tiny model against a server in its own process: the report's
    fields are there and make sense (its timings are not judged here)."""
    from tmrender.serve.measure import bench_live

    row = bench_live(4.0, str(tiny_init), say=False)
    assert row["session_s"] == 4.0 and row["settings"].startswith("look-ahead 2, causal filter")
    read, played = map(int, row["onsets_read"].split("/"))
    assert played == 1 and 0 <= read <= played  # one onset with 1.5 s after it in 4 s
    assert row["fps_received"] == pytest.approx(25, rel=0.25)
    assert row["frames_sent"] >= 50 and row["frames_held"] >= 0 and row["frames_dropped"] >= 0
    assert row["compute_ms_per_chunk"] > 0 and row["server_latency_ms"] > 0
    assert 0 <= row["of_it_waiting_to_be_sent_ms"] <= row["server_latency_ms"]
    assert row["error"] is None and row["audio_dropped_ms"] >= 0
    assert 0 < row["server_rss_end_mb"] <= row["server_peak_rss_mb"]
    assert row["server_rss_1min_mb"] is None and row["peak_over_1min_pct"] is None  # < 1 min
    assert row["server_rss_max_after_1min_mb"] is None
    assert row["server_cpu_s"] > 0


def test_memory_figures_compare_the_peak_with_the_first_minute():
    from tmrender.serve.measure import memory_figures

    readings = [(0.0, 300.0, 300.0), (30.0, 480.0, 503.0), (60.2, 500.0, 504.0)]
    readings += [(90.0, 508.0, 508.0), (120.0, 505.0, 508.0)]
    figures = memory_figures(readings, peak=510.0)
    assert figures["server_rss_1min_mb"] == 500.0 and figures["server_rss_end_mb"] == 505.0
    assert figures["server_peak_rss_by_1min_mb"] == 504.0
    assert figures["server_rss_max_after_1min_mb"] == 508.0
    assert figures["peak_over_1min_pct"] == 2.0


def test_bench_live_refuses_a_preset_and_a_missing_model(capsys, tmp_path):
    from tests.conftest import run_cli

    code, _, err = run_cli(capsys, "bench", "--suite", "live", "--preset", "tm-mini")
    assert code == 2 and "--suite live measures a model" in err
    code, _, err = run_cli(
        capsys, "bench", "--suite", "live", "--model", str(tmp_path / "x.safetensors")
    )
    assert code == 2 and "not found" in err


@pytest.mark.parametrize("voice", [False, True])
def test_a_track_behind_by_a_chunk_ticks_sooner_in_mirror_mode_only(voice):
    session = FakeSession(fps=25)
    session.frames = [np.zeros((4, 4, 3), np.uint8)] * 3
    session.late, session.voice_out = True, (object() if voice else None)
    track = AvatarTrack(session)
    asyncio.run(track.recv())
    schedule = track.schedule
    sooner = 0.0 if voice else webrtc.CATCH_UP * PERIOD  # a voice keeps the video's pace
    next_due = schedule.origin + schedule.tick * schedule.period
    assert next_due == pytest.approx(track._last_sent + PERIOD - sooner)
