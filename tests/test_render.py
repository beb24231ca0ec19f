"""The streaming renderer: exact frame counts, audio alignment, silence mode, clean failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tmrender.errors import UserInputError
from tmrender.media.audio import audio_samples, frames_for_samples, write_wav
from tmrender.media.ffmpeg import count_video_frames, probe
from tmrender.models.presets import PRESETS
from tmrender.models.talking import TalkingModel
from tmrender.render.features import (
    FIRST_SEGMENT_FRAMES,
    SEGMENT_FRAMES,
    FeatureProducer,
    FeatureTimeline,
)
from tmrender.render.pipeline import (
    RenderOptions,
    RenderStats,
    chunk_is_speaking,
    render_frames,
    render_video,
)

SR = 16_000


@pytest.fixture(scope="module")
def model() -> TalkingModel:
    torch.manual_seed(0)
    net = TalkingModel(PRESETS["tm-mini"]).eval()
    # A fresh model has a zero output head and zero audio output (Wan init, converted
    # model): give both weights so that the video depends on the audio.
    with torch.no_grad():
        net.dit.head.head.weight.normal_(0, 0.05)
        for block in net.dit.blocks:
            block.audio_cross_attn.o.weight.normal_(0, 0.5)
    return net


@pytest.fixture(scope="module")
def face(model) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (model.cfg.height, model.cfg.width, 3), dtype=np.uint8)


def tone(path, seconds: float, freq: float = 220.0, amp: float = 0.5):
    t = np.arange(round(seconds * SR)) / SR
    write_wav(path, amp * np.sin(2 * np.pi * freq * t) * (np.sin(2 * np.pi * 3 * t) > 0))
    return path


def collect(model, face, audio, **options) -> np.ndarray:
    return np.concatenate(list(render_frames(model, face, audio, RenderOptions(**options))))


@pytest.mark.parametrize("seconds", [0.04, 0.3, 1.0, 1.37])
def test_frame_count_is_ceil_of_audio_duration(model, face, tmp_path, seconds):
    audio = tone(tmp_path / "a.wav", seconds)
    frames = collect(model, face, audio)
    expected = frames_for_samples(round(seconds * SR), 25)
    assert frames.shape == (expected, 128, 128, 3) and frames.dtype == np.uint8


@pytest.mark.parametrize("latents", [1, 3])
def test_a_model_set_to_another_chunk_length_renders_every_frame_in_its_chunks(
    model, face, tmp_path, latents
):
    import copy

    audio = tone(tmp_path / "a.wav", 1.37)
    own = collect(model, face, audio, deflicker=False)
    other = copy.deepcopy(model)
    other.set_chunk_latent_frames(latents)
    assert other.cfg.frames_per_chunk == latents * model.cfg.frames_per_latent
    frames = collect(other, face, audio, deflicker=False)
    assert frames.shape == own.shape
    assert not np.array_equal(frames, own)  # the chunks see other windows


def test_the_deflicker_filter_is_the_models_zero_lag_filter(model, face, tmp_path):
    from tmrender.render.temporal import TemporalFilter

    assert model.cfg.sampler.deflicker_taps == (1, 2, 2, 2, 1)
    audio = tone(tmp_path / "a.wav", 1.37)
    filtered, raw = collect(model, face, audio), collect(model, face, audio, deflicker=False)
    assert filtered.shape == raw.shape and not np.array_equal(filtered, raw)
    video = torch.from_numpy(raw).permute(3, 0, 1, 2)[None].float()
    smoother = TemporalFilter(model.cfg.sampler.deflicker_taps)
    again = torch.cat([smoother.push(video[:, :, :8]), smoother.push(video[:, :, 8:])], dim=2)
    again = torch.cat([again, smoother.flush()], dim=2)[0].permute(1, 2, 3, 0).numpy()
    # the renderer filters before rounding to uint8: at most one level apart
    assert np.abs(again - filtered.astype(np.float32)).max() <= 1.0 + 1e-4


def test_retiming_is_the_models_and_comes_before_the_filter(model, face, tmp_path, monkeypatch):
    from dataclasses import replace

    from tmrender.render.temporal import Retimer, TemporalFilter

    audio = tone(tmp_path / "a.wav", 1.37)
    raw = collect(model, face, audio, deflicker=False)
    sampler = replace(model.cfg.sampler, retime=(0.1, 0.25))
    monkeypatch.setattr(model, "cfg", replace(model.cfg, sampler=sampler))
    assert np.array_equal(collect(model, face, audio, deflicker=False), raw)  # raw: untouched
    video = torch.from_numpy(raw).permute(3, 0, 1, 2)[None].float()
    retimer = Retimer(model.cfg.frames_per_latent, (0.1, 0.25))
    smoother = TemporalFilter(sampler.deflicker_taps)
    again = torch.cat([smoother.push(retimer.push(video)), smoother.push(retimer.flush())], 2)
    again = torch.cat([again, smoother.flush()], dim=2)[0].permute(1, 2, 3, 0).numpy()
    processed = collect(model, face, audio)
    assert processed.shape == raw.shape
    # the renderer works before rounding and clamping to uint8: at most one level apart
    # wherever no frame of the pixel was clamped
    inside = ((raw > 0) & (raw < 255)).all(axis=0)
    assert inside.mean() > 0.5
    assert np.abs(again - processed.astype(np.float32))[:, inside].max() <= 1.0 + 1e-4


def test_the_causal_option_is_the_causal_filter_alone_and_holds_nothing(model, face, tmp_path):
    from tmrender.render.temporal import causal_filter

    audio = tone(tmp_path / "a.wav", 1.37)
    raw = collect(model, face, audio, deflicker=False)
    assert np.array_equal(collect(model, face, audio, deflicker=False, temporal="causal"), raw)
    video = torch.from_numpy(raw).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    smoother = causal_filter(model.cfg.sampler, model.cfg.frames_per_latent)
    again = torch.cat([smoother.push(video[:, :, :8]), smoother.push(video[:, :, 8:])], dim=2)
    again = ((again[0].permute(1, 2, 3, 0) + 1) * 127.5).numpy()
    blocks = list(render_frames(model, face, audio, RenderOptions(temporal="causal")))
    causal = np.concatenate(blocks)
    assert causal.shape == raw.shape and not np.array_equal(causal, raw)
    # the renderer filters before rounding to uint8: at most one level apart
    inside = ((raw > 0) & (raw < 255)).all(axis=0)
    assert np.abs(again - causal.astype(np.float32))[:, inside].max() <= 1.0 + 1e-4
    # each chunk's frames come out whole (the centred filter holds 3 back for the next)
    chunk = model.cfg.frames_per_chunk
    assert [len(b) for b in blocks[:-1]] == [chunk] * (len(blocks) - 1)
    centred = [len(b) for b in render_frames(model, face, audio, RenderOptions())]
    assert centred[0] < chunk


def test_video_file_has_exact_frames_and_audio(model, face, tmp_path):
    audio = tone(tmp_path / "speech.wav", 2.13)
    out = tmp_path / "out.mp4"
    stats = render_video(model, face, audio, out)
    assert count_video_frames(out) == frames_for_samples(round(2.13 * SR), 25) == stats.frames
    assert audio_samples(out) == round(2.13 * SR)  # the muxed AAC track keeps every sample
    info = probe(out)
    assert [s.codec for s in info.streams] == ["h264", "aac"]
    assert abs(info.duration - 2.13) <= 1 / 25
    assert stats.first_frame_seconds is not None and stats.dit_steps == 2 * stats.chunks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "speech.wav"]


def test_same_seed_same_video_other_seed_differs(model, face, tmp_path):
    audio = tone(tmp_path / "a.wav", 0.7)
    first, again = collect(model, face, audio, seed=3), collect(model, face, audio, seed=3)
    other = collect(model, face, audio, seed=4)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_silence_mode_ignores_the_audio(model, face, tmp_path):
    low = tone(tmp_path / "low.wav", 1.0, freq=150)
    high = tone(tmp_path / "high.wav", 1.0, freq=900)
    assert not np.array_equal(collect(model, face, low), collect(model, face, high))
    silent_low = collect(model, face, low, mode="silence")
    assert np.array_equal(silent_low, collect(model, face, high, mode="silence"))


def test_all_silent_audio_renders_idle(model, face, tmp_path):
    audio = tmp_path / "quiet.wav"
    write_wav(audio, np.zeros(SR // 2))
    stats = RenderStats()
    frames = np.concatenate(list(render_frames(model, face, audio, stats=stats)))
    assert frames.shape[0] == 13 and stats.speaking_chunks == 0 and stats.chunks == 2


def test_voice_activity_per_chunk():
    voiced = np.zeros(12, bool)
    assert not chunk_is_speaking("auto", voiced)
    assert chunk_is_speaking("speaking", voiced)
    voiced[5] = True
    assert chunk_is_speaking("auto", voiced) and not chunk_is_speaking("silence", voiced)


def test_zero_length_audio_fails_cleanly(model, face, tmp_path):
    audio = tmp_path / "empty.wav"
    write_wav(audio, np.zeros(0))
    out = tmp_path / "out.mp4"
    with pytest.raises(UserInputError, match="zero length"):
        render_video(model, face, audio, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.wav"]


def test_interrupt_leaves_nothing(model, face, tmp_path):
    audio = tone(tmp_path / "a.wav", 3.0)

    def interrupt(stats):
        if stats.frames >= 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render_video(model, face, audio, tmp_path / "out.mp4", on_frames=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_feature_timeline_windows_match_segments(model, tmp_path):
    """Windows cut across segment boundaries equal the segments' own features."""
    import queue
    import threading

    from tmrender.media.audio import AudioStream

    audio = tone(tmp_path / "a.wav", 4.5)
    spf = model.cfg.samples_per_frame
    producer = FeatureProducer(
        AudioStream(audio), model.audio_encoder, spf, lambda total: total + 8, "cpu", start=-2
    )
    with torch.no_grad():
        segments = list(producer.segments())
    assert [s.first for s in segments[:3]] == [-2, -2 + FIRST_SEGMENT_FRAMES, 64]
    assert all(s.features.shape[1] == SEGMENT_FRAMES for s in segments[1:])
    total = frames_for_samples(round(4.5 * SR), 25)
    assert segments[-1].total_frames == total
    assert segments[-1].first + SEGMENT_FRAMES >= total + 8
    q: queue.Queue = queue.Queue()
    for seg in segments:
        q.put(seg)
    timeline = FeatureTimeline(q, threading.Event())
    feats, voiced = timeline.window(8, 20)  # spans the first two segments
    expected = torch.cat([segments[0].features, segments[1].features], dim=1)[:, 10:22]
    assert torch.equal(feats, expected) and voiced.shape == (12,) and voiced.any()
    assert timeline.covers(total - 1) and not timeline.covers(total)
