"""The live audio source (`PushAudioStream`), the 48 -> 16 kHz `Downsampler`, and the
renderer fed by a push source: the same frames as from the file."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from tests.conftest import randomized_model, tiny_model_config
from tmrender.media.audio import Downsampler, PushAudioStream, load_audio, write_wav
from tmrender.models.talking import TalkingModel
from tmrender.render.features import Segmenting
from tmrender.render.pipeline import RenderOptions, render_frames


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_downsampler_keeps_speech_band_and_removes_what_would_alias():
    down = Downsampler(48_000)
    passed = down(tone(1000, 1.0, 48_000))
    assert passed.dtype == np.float32 and abs(passed.size - 16_000) <= 1
    assert rms(passed[200:]) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    # 14 kHz would fold onto 2 kHz at 16 kHz: the low-pass must remove it
    assert rms(Downsampler(48_000)(tone(14_000, 1.0, 48_000))[200:]) < 0.005


def test_downsampler_blocks_leave_no_trace():
    signal = np.random.default_rng(0).standard_normal(48_000).astype(np.float32)
    whole = Downsampler(48_000)(signal)
    down = Downsampler(48_000)
    parts = np.concatenate([down(signal[i : i + 957]) for i in range(0, signal.size, 957)])
    np.testing.assert_allclose(parts, whole, atol=1e-6)


def test_downsampler_refuses_other_ratios():
    with pytest.raises(Exception, match="cannot resample 44100"):
        Downsampler(44_100)
    np.testing.assert_array_equal(Downsampler(16_000)(np.ones(5)), np.ones(5, np.float32))


def test_push_stream_yields_in_order_and_ends_after_close():
    stream = PushAudioStream()
    for i in range(3):
        stream.push(np.full(10, i, np.float32))
    stream.close()
    stream.push(np.ones(10, np.float32))  # ignored once closed
    blocks = list(stream)
    assert [b[0] for b in blocks] == [0, 1, 2] and stream.samples_read == 30


def test_push_stream_waits_for_blocks_from_another_thread():
    stream = PushAudioStream()

    def feed() -> None:
        for _ in range(4):
            time.sleep(0.01)
            stream.push(np.zeros(160, np.float32))
        stream.close()

    threading.Thread(target=feed).start()
    assert sum(b.size for b in stream) == 640
    assert stream.seconds_read == pytest.approx(0.04)


def test_push_stream_drops_the_oldest_past_its_backlog():
    stream = PushAudioStream(max_backlog=25)
    for i in range(5):
        stream.push(np.full(10, i, np.float32))
    stream.close()
    assert [b[0] for b in stream] == [3, 4] and stream.dropped_samples == 30


def test_push_stream_remembers_when_each_read_sample_arrived():
    stream = PushAudioStream(history=2)
    for i in range(3):
        stream.push(np.zeros(10, np.float32), arrival=100.0 + i)
    stream.close()
    assert stream.arrival_of(5) is None  # not read yet
    list(stream)
    assert stream.arrival_of(15) == 101.0 and stream.arrival_of(29) == 102.0
    assert stream.arrival_of(5) is None  # forgotten (history of 2 blocks)
    assert stream.arrival_of(30) is None


def test_segmenting_live_ends_each_segment_with_a_chunk_window():
    cut = Segmenting.live(frames_per_chunk=8, window=2, after=2)
    assert (cut.first, cut.frames, cut.after) == (12, 8, 2)
    # the first segment starts at -window: segments end at 10, 18, ... = chunk end + window
    assert -2 + cut.first == 8 + 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomized_model(TalkingModel(tiny_model_config()))


@pytest.mark.parametrize("live", [False, True])
def test_push_source_renders_the_frames_of_the_file(model, tmp_path, live):
    """The same samples pushed in odd blocks give the file's frames exactly (default
    segmenting), and with the live segmenting the same number of frames."""
    path = tmp_path / "speech.wav"
    t = np.arange(int(1.3 * 16_000)) / 16_000
    write_wav(path, 0.3 * np.sin(2 * np.pi * 180 * t) * (t % 0.6 < 0.3))
    image = np.full((model.cfg.height, model.cfg.width, 3), 100, np.uint8)
    reference = np.concatenate(list(render_frames(model, image, path, RenderOptions())))
    options = RenderOptions()
    if live:
        cut = Segmenting.live(model.cfg.frames_per_chunk, model.cfg.audio_proj.window, 2)
        options = RenderOptions(segmenting=cut, queue_depth=1)
    stream = PushAudioStream(max_backlog=10**9)
    samples = load_audio(path)
    for i in range(0, samples.size, 333):
        stream.push(samples[i : i + 333])
    stream.close()
    frames = np.concatenate(list(render_frames(model, image, stream, options)))
    assert frames.shape == reference.shape
    if not live:
        np.testing.assert_array_equal(frames, reference)
