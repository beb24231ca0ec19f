"""`tmrender live`: the session (audio in, frames out, skips counted, the recording), the
server on loopback with a Python WebRTC client (frames of the model's size at 25 fps, a
second client refused as busy, a disconnect frees the session), and the command's checks."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from tests.conftest import randomized_model, tiny_model_config
from tmrender.cli import main
from tmrender.media.ffmpeg import count_video_frames, probe
from tmrender.models.talking import TalkingModel
from tmrender.serve.session import FrameBuffer, LiveOptions, LiveSession


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomized_model(TalkingModel(tiny_model_config()))


@pytest.fixture(scope="module")
def reference(model):
    return np.full((model.cfg.height, model.cfg.width, 3), 120, np.uint8)


def speech_like(seconds: float, rate: int) -> np.ndarray:
    """Tone bursts (0.3 s on, 0.3 s off) at `rate`: onsets for the renderer to follow."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 200 * t) * (t % 0.6 < 0.3)).astype(np.float32)


def run(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err


def test_frame_buffer_drops_the_oldest_past_its_limit():
    buffer = FrameBuffer(limit=2)
    for i in range(5):
        buffer.put(i, np.zeros((2, 2, 3), np.uint8))
    assert buffer.dropped == 3 and buffer.take()[0] == 3 and buffer.take()[0] == 4
    assert buffer.take() is None


def test_session_shows_the_portrait_then_frames_and_records(model, reference, tmp_path):
    record = tmp_path / "session.mp4"
    options = LiveOptions(record=record, max_backlog_seconds=2.0)  # pushed faster than live
    session = LiveSession(model, reference, options).start()
    assert np.array_equal(session.next_frame(), reference)  # nothing rendered yet
    audio = speech_like(1.0, 16_000)
    for i in range(0, audio.size, 320):
        session.push_audio(audio[i : i + 320])
    deadline = time.monotonic() + 20
    while session.stats.frames < 16 and time.monotonic() < deadline:
        time.sleep(0.02)
    frame = session.next_frame()
    assert frame.shape == reference.shape and frame.dtype == np.uint8
    figures = session.snapshot()
    assert figures["mode"] == "mirror" and figures["latency_ms"] is not None
    assert 0 <= figures["buffer_wait_ms"] <= figures["latency_ms"]  # a part of it
    assert session.close() == record and not session.running
    assert count_video_frames(record) == 25  # 1 s of audio at 25 fps
    assert probe(record).audio  # the audio that drove the frames


def test_session_skips_ahead_when_the_audio_piles_up(model, reference):
    """A reader that falls behind loses the oldest audio, counted in the figures."""
    session = LiveSession(model, reference, LiveOptions(max_backlog_seconds=0.1))
    session.audio.push(np.zeros(16_000, np.float32))  # 1 s at once, nobody reading yet
    session.audio.push(np.zeros(320, np.float32))
    assert session.snapshot()["audio_dropped_ms"] == 1000
    session.close()


def test_live_refuses_unknown_modes_and_ports(capsys, tmp_path):
    code, err = run(capsys, "live", "--image", str(tmp_path / "x.png"), "--mode", "sing")
    assert code == 2 and "--mode sing: unknown" in err
    code, err = run(capsys, "live", "--image", str(tmp_path / "x.png"), "--port", "70000")
    assert code == 2 and "--port 70000" in err
    code, err = run(capsys, "live", "--image", str(tmp_path / "x.png"), "--temporal", "ahead")
    assert code == 2 and "--temporal ahead: unknown" in err
    code, err = run(capsys, "live", "--image", str(tmp_path / "missing.png"))
    assert code == 2 and "missing.png" in err


def test_live_renders_with_the_causal_filter_unless_asked(model):
    assert LiveOptions().render_options(model).temporal == "causal"
    assert LiveOptions(temporal="centred").render_options(model).temporal == "centred"


@pytest.mark.slow
def test_loopback_client_gets_frames_busy_and_reconnects(model, reference, tmp_path):
    pytest.importorskip("aiortc")
    from tmrender.serve.client import BusyError, LiveClient, get_json
    from tmrender.serve.server import LiveServer

    async def scenario() -> None:
        server = LiveServer(model, reference, LiveOptions(record=tmp_path / "s.mp4"))
        url = f"http://127.0.0.1:{await server.start('127.0.0.1', 0)}"
        try:
            # 1. A client plays speech as its microphone and gets frames at 25 fps.
            client = await LiveClient.connect(url, speech_like(3.0, 48_000))
            # 2. A second one is told the server is busy.
            with pytest.raises(BusyError, match="busy"):
                await LiveClient.connect(url, speech_like(1.0, 48_000))
            await asyncio.sleep(2.5)
            times = [t for t, _ in client.frames]
            assert {f.shape for _, f in client.frames} == {reference.shape}
            assert (len(times) - 1) / (times[-1] - times[0]) == pytest.approx(25, rel=0.2)
            assert client.figures and client.figures[-1]["frames_rendered"] > 0
            # 3. A disconnect frees the session within seconds; the next client connects.
            await client.close()
            start = time.monotonic()
            while (await asyncio.to_thread(get_json, url + "/status"))["busy"]:
                assert time.monotonic() - start < 5, "the session was not freed"
                await asyncio.sleep(0.1)
            again = await LiveClient.connect(url, speech_like(1.0, 48_000))
            await asyncio.sleep(1.0)
            assert again.frames
            await again.close()
        finally:
            await server.stop()
        assert server.recorded and server.recorded[0] == tmp_path / "s.mp4"

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mirror", "say"])
def test_a_client_without_microphone_is_let_go(model, reference, mode):
    """Mirror mode needs a microphone, say mode a data channel for its texts: an offer with
    neither is let go after AUDIO_TIMEOUT."""
    pytest.importorskip("aiortc")
    from aiortc import RTCPeerConnection

    from tmrender.serve.client import _post_json, get_json
    from tmrender.serve.server import LiveServer
    from tmrender.serve.webrtc import AUDIO_TIMEOUT

    async def scenario() -> None:
        server = LiveServer(model, reference, LiveOptions(mode=mode))
        url = f"http://127.0.0.1:{await server.start('127.0.0.1', 0)}"
        pc = RTCPeerConnection()
        try:
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
            await asyncio.to_thread(_post_json, url + "/offer", offer)
            start = time.monotonic()
            while (await asyncio.to_thread(get_json, url + "/status"))["busy"]:
                assert time.monotonic() - start < AUDIO_TIMEOUT + 3, "the session was kept"
                await asyncio.sleep(0.2)
        finally:
            await pc.close()
            await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.slow
def test_the_shipped_model_opens_its_mouth_after_speech_onsets():
    """tm-mini at 128 px on loopback: after each onset of speech the received avatar's
    mouth opens (read by the mouth reader: a rise of its opening within 1.5 s)."""
    pytest.importorskip("aiortc")
    from tmrender.eval.mouth import load_mouth_reader, read_mouth
    from tmrender.media.audio import SAMPLE_RATE, load_audio
    from tmrender.media.image import load_image
    from tmrender.models.registry import load_model
    from tmrender.serve.measure import CLIENT_RATE, EXAMPLES, half_rise, live_run, onset_signal

    model, _ = load_model(None, "cpu")
    reference = load_image(EXAMPLES / "face.png", (model.cfg.height, model.cfg.width))
    signal, onsets = onset_signal(load_audio(EXAMPLES / "speech.wav"), 3)
    client, figures = asyncio.run(live_run(model, reference, signal, LiveOptions()))
    assert figures["fps"] == pytest.approx(25, rel=0.2)
    times = np.array([t for t, _ in client.frames])
    opening = read_mouth(load_mouth_reader(), np.stack([f for _, f in client.frames]))[:, 0]
    delays = []
    for onset in onsets:
        sent = client.sent_at(onset * CLIENT_RATE // SAMPLE_RATE)
        rise = half_rise(times, opening, sent)
        delays.append(None if rise is None else rise - sent)
    read = [d for d in delays if d is not None]
    assert len(read) >= 2, delays
