"""`tmrender live --mode say | reply` without WebRTC: the speech queue, the page's text
messages, voice activity, the reply program (a command that answers, fails, hangs or writes
garbage; a URL), the conversation loop, each frame's audio handed to the voice track, the
command's checks and the example reply program."""

from __future__ import annotations

import asyncio
import http.server
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import randomized_model, run_cli, tiny_model_config
from tmrender.errors import UserInputError
from tmrender.media.audio import SAMPLE_RATE, frame_rms_db, load_audio, write_wav
from tmrender.models.talking import TalkingModel
from tmrender.serve.reply import Conversation, ReplyError, ReplyProgram, check_reply_target
from tmrender.serve.say import MAX_SAY_CHARS, SpeechQueue, parse_say
from tmrender.serve.session import DrivenAudio, LiveOptions, LiveSession
from tmrender.serve.vad import VoiceActivity

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def bursts(on: float, off: float, count: int, level: float = 0.3) -> np.ndarray:
    """`count` bursts of a 200 Hz tone, `on` seconds each, after `off` seconds of silence."""
    t = np.arange(int(on * SAMPLE_RATE)) / SAMPLE_RATE
    tone = (level * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    gap = np.zeros(int(off * SAMPLE_RATE), np.float32)
    return np.concatenate([part for _ in range(count) for part in (gap, tone)] + [gap])


def script(folder: Path, name: str, body: str) -> str:
    """A reply program: a Python script run with this interpreter; its command line."""
    path = folder / f"{name}.py"
    path.write_text("import sys, time, wave\nheard, answer = sys.argv[1], sys.argv[2]\n" + body)
    return f"{sys.executable} {path}"


TONE_22K = """
import math, struct
with wave.open(heard) as w:
    assert w.getframerate() == 16000 and w.getnchannels() == 1
n = 22050 // 2
with wave.open(answer, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050)
    w.writeframes(b"".join(struct.pack("<h", int(9000 * math.sin(i / 10))) for i in range(n)))
"""


# --- speech queue and the page's messages ---


def test_speech_queue_gives_speech_then_silence_and_caps_what_waits():
    queue = SpeechQueue(max_seconds=1.0)
    queue.add(np.ones(500, np.float32))
    queue.add(np.full(300, 2.0, np.float32))
    block = queue.block(1000)
    assert block[:500].tolist() == [1.0] * 500 and block[500:800].tolist() == [2.0] * 300
    assert not block[800:].any() and not queue.busy and queue.spoken == 2
    assert not queue.block(320).any()  # nothing waits: silence
    with pytest.raises(UserInputError, match="too much speech"):
        queue.add(np.zeros(SAMPLE_RATE + 1, np.float32))


def test_parse_say_takes_a_text_and_refuses_the_rest():
    assert parse_say('{"say": "  hello \\n there "}') == "hello there"
    for message, error in [
        ("hello", "JSON"),
        ('{"text": "hi"}', "JSON"),
        ('{"say": 3}', "JSON"),
        ('{"say": "   "}', "empty"),
        ('{"say": "%s"}' % ("a" * (MAX_SAY_CHARS + 1)), "too long"),
        ("x" * 5000, "too long"),
    ]:
        with pytest.raises(UserInputError, match=error):
            parse_say(message)


# --- voice activity ---


def test_voice_activity_cuts_utterances_at_pauses():
    vad = VoiceActivity(hangover=0.5, preroll=0.2)
    signal = bursts(on=0.6, off=1.0, count=2)
    utterances = []
    for i in range(0, signal.size, 333):  # odd block sizes
        utterances += vad.push(signal[i : i + 333])
    assert len(utterances) == 2
    for utterance in utterances:
        # the burst, the 0.2 s pre-roll before it and at most 0.2 s of the pause after it
        assert 0.6 + 0.2 <= utterance.size / SAMPLE_RATE <= 0.6 + 0.4 + 0.02
    assert not vad.push(np.zeros(SAMPLE_RATE, np.float32)) and not vad.talking


def test_voice_activity_cuts_long_speech_and_ignores_clicks():
    vad = VoiceActivity(max_seconds=1.0)
    cut = vad.push(bursts(on=2.5, off=0.0, count=1))
    assert [u.size for u in cut] == [SAMPLE_RATE, SAMPLE_RATE]
    click = np.zeros(SAMPLE_RATE, np.float32)
    click[5000:5100] = 0.5  # 6 ms: shorter than min_voiced
    assert not VoiceActivity().push(click)


# --- the reply program ---


@pytest.fixture
def utterance():
    return bursts(on=0.5, off=0.1, count=1)


def test_reply_command_answer_is_resampled_and_its_folder_is_private(tmp_path, utterance):
    program = ReplyProgram(script(tmp_path, "tone", TONE_22K), timeout=20)
    assert stat.S_IMODE(program.folder.stat().st_mode) == 0o700
    answer = program.answer(utterance)
    assert answer.dtype == np.float32 and abs(answer.size - SAMPLE_RATE // 2) <= 16
    assert np.abs(answer).max() > 0.2
    assert not list(program.folder.iterdir())  # the WAVs go once answered
    program.close()
    assert not program.folder.exists()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("sys.stderr.write('no model here\\n'); sys.exit(1)", r"exit status 1\): no model here"),
        ("open(answer, 'wb').write(b'RIFF garbage, not a wave file' * 10)", "not audio"),
        ("pass", "wrote no answer"),
    ],
)
def test_reply_command_failures_raise_one_line(tmp_path, utterance, body, error):
    program = ReplyProgram(script(tmp_path, "bad", body), timeout=20)
    with pytest.raises(ReplyError, match=error):
        program.answer(utterance)
    program.close()


def test_a_hanging_reply_command_is_killed_with_its_children(tmp_path, utterance):
    marker = tmp_path / "child.pid"
    body = (
        "import subprocess\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    program = ReplyProgram(script(tmp_path, "hang", body), timeout=1.0)
    start = time.monotonic()
    with pytest.raises(ReplyError, match="longer than 1 s"):
        program.answer(utterance)
    assert time.monotonic() - start < 5
    child = int(marker.read_text())
    time.sleep(0.2)
    assert not _alive(child), "the reply program's child was left running"
    program.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead but not yet reaped by its (dead) parent's reaper
    status = (
        Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}").exists() else "Z"
    )
    return status != "Z"


class _Answering(http.server.BaseHTTPRequestHandler):
    """POST: answer with the request's WAV (an echo) or, for /fail, HTTP 500."""

    def do_POST(self) -> None:  # noqa: N802 - the http.server interface
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = self.path != "/fail" and self.headers["Content-Type"] == "audio/wav"
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", str(len(body) if ok else 0))
        self.end_headers()
        if ok:
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_reply_url_gets_the_wav_posted_and_answers_with_audio(utterance):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        program = ReplyProgram(url + "/echo", timeout=5)
        echo = program.answer(utterance)
        np.testing.assert_allclose(echo, utterance, atol=1e-3)
        with pytest.raises(ReplyError, match="HTTP 500"):
            ReplyProgram(url + "/fail", timeout=5).answer(utterance)
        program.close()
    finally:
        server.shutdown()


def test_check_reply_target_wants_a_program_or_url(tmp_path):
    check_reply_target("http://127.0.0.1:9/answer")
    check_reply_target(f"{sys.executable} -u")
    for target, error in [("", "give a command"), ("no-such-program-x", "not an executable")]:
        with pytest.raises(UserInputError, match=error):
            check_reply_target(target)


def test_conversation_answers_reports_failures_and_goes_on(tmp_path):
    counter = tmp_path / "calls"
    body = (  # the first call fails, the next ones answer
        f"import os\ncalls = {str(counter)!r}\n"
        "first = not os.path.exists(calls)\nopen(calls, 'a').write('x')\n"
        "if first:\n    sys.exit(3)\n" + TONE_22K
    )
    events: list[dict] = []
    speech = SpeechQueue()
    program = ReplyProgram(script(tmp_path, "once_failing", body), timeout=20)
    talk = Conversation(program, speech, events.append, VoiceActivity(hangover=0.3))
    assert talk.state(speaking=False) == "listening"
    for _ in range(2):  # two utterances, each answered before the next
        talk.hear(bursts(on=0.4, off=0.4, count=1))
        assert talk.state(speaking=False) == "thinking"
        talk._worker.join(20)
    assert [e["event"] for e in events] == ["info", "error", "info"]
    assert "exit status 3" in events[1]["text"]
    assert talk.answered == 1 and talk.failed == 1 and speech.busy
    assert talk.state(speaking=False) == "speaking"
    talk.close()
    assert not program.folder.exists()


def test_conversation_does_not_listen_while_the_avatar_speaks(tmp_path):
    events: list[dict] = []
    speaking = [True]
    program = ReplyProgram(script(tmp_path, "tone", TONE_22K), timeout=20)
    talk = Conversation(program, SpeechQueue(), events.append, VoiceActivity(hangover=0.3))
    talk.speaking = lambda: speaking[0]
    talk.hear(bursts(on=0.4, off=0.4, count=2))  # the avatar's own voice, heard back
    assert talk.heard == 0 and not talk.thinking and not events
    speaking[0] = False
    talk.hear(bursts(on=0.4, off=0.4, count=1))
    assert talk.heard == 1
    talk.close()


# --- the session: each sent frame's audio goes to the voice track ---


def test_driven_audio_keeps_the_last_samples_by_index():
    driven = DrivenAudio(keep=10)
    for i in range(4):
        driven.add(np.full(4, i, np.float32))
    assert driven.end == 16
    assert driven.samples(6, 10).tolist() == [1, 1, 2, 2]
    assert driven.samples(0, 4).tolist() == [0, 0, 0, 0]  # forgotten
    assert driven.samples(14, 18).tolist() == [3, 3, 0, 0]  # not read yet


def test_say_session_sends_each_frame_with_the_audio_that_drove_it():
    torch.manual_seed(0)
    model = randomized_model(TalkingModel(tiny_model_config()))
    reference = np.zeros((model.cfg.height, model.cfg.width, 3), np.uint8)
    session = LiveSession(
        model, reference, LiveOptions(mode="say", max_backlog_seconds=5.0, max_buffered_frames=50)
    )
    session.start()
    spf = model.cfg.samples_per_frame
    audio = np.arange(SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE  # each sample its own
    session.push_audio(audio)
    deadline = time.monotonic() + 20
    while session.stats.frames < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    for _ in range(10):
        session.next_frame()
    sent = [session.voice_out.take() for _ in range(10)]
    assert all(block.size == spf for _, block in sent)
    played = np.concatenate([block for _, block in sent])
    np.testing.assert_array_equal(played, audio[: 10 * spf])
    session.close()


# --- the command and the example ---


def test_live_checks_modes_voice_and_reply_before_loading(capsys, tmp_path):
    image = str(EXAMPLES / "face.png")
    for args, error in [
        (["--mode", "sing"], "--mode sing: unknown"),
        (["--mode", "reply"], "--reply CMD|URL is needed"),
        (["--reply", "x"], "--reply is for --mode reply"),
        (["--mode", "say", "--voice", "xx+q"], "unknown voice"),
        (["--mode", "reply", "--reply", "no-such-program-x"], "not an executable"),
        (["--mode", "reply", "--reply", sys.executable, "--reply-timeout", "0"], "timeout"),
    ]:
        code, _, err = run_cli(capsys, "live", "--image", image, *args)
        assert code == 2 and error in err, (args, err)


def test_example_reply_program_answers_with_speech(tmp_path):
    heard, answer = tmp_path / "heard.wav", tmp_path / "answer.wav"
    write_wav(heard, np.zeros(SAMPLE_RATE * 3 // 2, np.float32))
    example = EXAMPLES / "reply_time.py"
    assert os.access(example, os.X_OK) and example.read_text().startswith("#!/usr/bin/env python3")
    done = subprocess.run(
        [sys.executable, str(example), str(heard), str(answer)], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    spoken = load_audio(answer)
    assert spoken.size > SAMPLE_RATE and np.abs(spoken).max() > 0.5


# --- on loopback, with a Python WebRTC client ---


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = randomized_model(TalkingModel(tiny_model_config()))
    return model, np.full((model.cfg.height, model.cfg.width, 3), 120, np.uint8)


def voiced_seconds(client) -> float:
    """Seconds of the avatar's voice the client received that are louder than -30 dBFS."""
    from tmrender.serve.measure_say import received_voice

    samples, _ = received_voice(client)
    usable = samples[: samples.size // 320 * 320]
    return float((frame_rms_db(usable, 320) > -30).sum() * 0.02)


async def _serve(model, reference, options):
    from tmrender.serve.server import LiveServer

    server = LiveServer(model, reference, options, on_event=lambda _: None)
    return server, f"http://127.0.0.1:{await server.start('127.0.0.1', 0)}"


@pytest.mark.slow
def test_say_mode_speaks_texts_with_the_frames_and_refuses_bad_ones(tiny):
    pytest.importorskip("aiortc")
    from tmrender.serve.client import LiveClient

    async def scenario() -> None:
        server, url = await _serve(*tiny, LiveOptions(mode="say"))
        try:
            client = await LiveClient.connect(url, None)  # no microphone
            await asyncio.sleep(1.0)
            assert voiced_seconds(client) == 0  # nothing said yet: silence
            await client.say("x" * 600)
            await client.say("Hello, how are you today?")
            await asyncio.sleep(4.0)
            texts = [e["text"] for e in client.events]
            assert any("too long" in t for t in texts) and any("saying" in t for t in texts)
            assert voiced_seconds(client) > 0.8  # the sentence, about 1.5 s
            figures = client.figures[-1]
            assert figures["mode"] == "say" and figures["speaking_chunks"] > 0
            assert figures["state"] in ("listening", "speaking")
            times = [t for t, _ in client.frames]
            assert (len(times) - 1) / (times[-1] - times[0]) == pytest.approx(25, rel=0.2)
            await client.close()  # a disconnect frees the session within seconds
            start = time.monotonic()
            while server.busy:
                assert time.monotonic() - start < 5, "the session was not freed"
                await asyncio.sleep(0.1)
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.slow
def test_reply_mode_reports_failures_and_goes_on_to_answer(tiny, tmp_path):
    """A reply program that fails (exit 1), then writes garbage, then answers with a tone:
    the page hears of both failures and then the avatar speaks the answer."""
    pytest.importorskip("aiortc")
    from tmrender.serve.client import LiveClient

    calls = tmp_path / "calls"
    body = (
        f"import os\ncalls = {str(calls)!r}\n"
        "n = os.path.getsize(calls) if os.path.exists(calls) else 0\n"
        "open(calls, 'a').write('x')\n"
        "if n == 0:\n    sys.exit(1)\n"
        "if n == 1:\n    open(answer, 'wb').write(b'not audio at all' * 100)\n    sys.exit(0)\n"
        + TONE_22K
    )
    options = LiveOptions(mode="reply", reply=script(tmp_path, "answers", body), reply_timeout=10)

    async def scenario() -> None:
        server, url = await _serve(*tiny, options)
        try:
            speech = bursts(on=0.5, off=1.2, count=3)  # three utterances
            rate = 48_000
            client = await LiveClient.connect(url, np.repeat(speech, rate // SAMPLE_RATE), rate)
            await asyncio.sleep(speech.size / SAMPLE_RATE + 2.5)
            errors = [e["text"] for e in client.events if e["event"] == "error"]
            assert len(errors) == 2 and "exit status 1" in errors[0] and "not audio" in errors[1]
            assert voiced_seconds(client) > 0.3  # the tone answer, 0.5 s
            assert server.busy and client.figures[-1]["state"] in ("speaking", "listening")
            frames = len(client.frames)
            await asyncio.sleep(0.5)
            assert len(client.frames) > frames  # the session goes on
            await client.close()
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.slow
def test_the_shipped_model_opens_its_mouth_while_it_speaks_in_say_mode():
    """tm-mini on loopback in say mode: the received frames' mouth (the mouth reader) is
    more open while the received voice is loud than while it is silent."""
    pytest.importorskip("aiortc")
    from tmrender.eval.mouth import load_mouth_reader, read_mouth
    from tmrender.media.image import load_image
    from tmrender.models.registry import load_model
    from tmrender.serve.measure_say import received_voice, say_run

    model, _ = load_model(None, "cpu")
    reference = load_image(EXAMPLES / "face.png", (model.cfg.height, model.cfg.width))
    texts = ["Papa baked a big brown pie, maybe by the mill."]
    client, figures, _ = asyncio.run(say_run(model, reference, texts, [2.5], LiveOptions()))
    voice, voice_times = received_voice(client)
    times = np.array([t for t, _ in client.frames])
    opening = read_mouth(load_mouth_reader(), np.stack([f for _, f in client.frames]))[:, 0]
    blocks = voice.size // 640  # the received voice's level per 40 ms, at each frame's arrival
    envelope = np.sqrt(np.mean(voice[: blocks * 640].reshape(blocks, 640) ** 2, axis=1))
    level = np.interp(times, voice_times[: blocks * 640 : 640], envelope, left=0, right=0)
    loud, quiet = opening[level > 0.05], opening[level < 0.002]
    assert loud.size >= 10 and quiet.size >= 10, (loud.size, quiet.size)
    assert np.median(loud) > np.median(quiet) + 0.05, (np.median(loud), np.median(quiet))


# --- the voice track and the offset measure, without a connection -----------------------------


def test_voice_track_sends_each_frames_audio_at_its_time_and_silence_when_late():
    pytest.importorskip("aiortc")
    from types import SimpleNamespace

    from tmrender.serve.session import SentAudio
    from tmrender.serve.webrtc import VoiceTrack

    session = SimpleNamespace(voice_out=SentAudio())
    track = VoiceTrack(session)
    ramp = np.linspace(0, 0.5, 640, dtype=np.float32)

    async def scenario() -> list:
        now = time.perf_counter()
        session.voice_out.put(ramp, now + 0.05)
        frames = [await track.recv(), await track.recv()]
        sent = [time.perf_counter()]
        frames.append(await track.recv())  # nothing comes: silence after VOICE_WAIT
        sent.append(time.perf_counter())
        return [now, *sent, frames]

    now, second, third, frames = asyncio.run(scenario())
    assert second - now >= 0.05 + 0.02 - 0.005  # the second half leaves 20 ms after the first
    assert third - second < 0.2
    pcm = [f.to_ndarray()[0] / 32767 for f in frames]
    assert [f.sample_rate for f in frames] == [48_000] * 3 and pcm[0].size == 960
    np.testing.assert_allclose(np.concatenate(pcm[:2])[2::3], ramp, atol=2e-4)
    assert not pcm[2][2:].any() and track.silent == 1  # (from the last sample down to 0)


def test_frame_offsets_find_how_late_each_picture_is_against_its_sound():
    from tmrender.serve.measure_say import frame_offsets, match_frames

    spf, rng = 640, np.random.default_rng(0)
    rendered = rng.integers(0, 255, (12, 16, 16, 3)).astype(np.uint8)
    portrait = np.zeros((16, 16, 3), np.uint8)
    shown = np.array([-1, -1, 0, 1, 1, 2, 4, 5, 6, 7, 8, 9])  # 1 shown again, 3 dropped
    received = np.stack([portrait if i < 0 else rendered[i] for i in shown])
    assert match_frames(received, rendered, portrait).tolist() == shown.tolist()
    driven = rng.standard_normal(12 * spf).astype(np.float32) * 0.1
    # the voice each frame brought, arriving 30 ms after its frame; frames every 40 ms
    voice = np.zeros(len(shown) * spf, np.float32)
    for k, i in enumerate(shown):
        if i >= 0 and (k == 0 or shown[k - 1] != i):
            voice[k * spf : (k + 1) * spf] = driven[i * spf : (i + 1) * spf]
    frame_times = np.arange(len(shown)) * 0.04
    voice_times = np.arange(voice.size) / SAMPLE_RATE + 0.03
    offsets, quality = frame_offsets(shown, frame_times, voice, voice_times, driven, spf)
    assert len(offsets) == 9 and quality > 0.99
    np.testing.assert_allclose(offsets, -0.03, atol=1e-6)
