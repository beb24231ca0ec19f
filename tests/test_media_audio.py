"""Audio input: every format the bundled ffmpeg decodes becomes 16 kHz mono float32 with its
exact duration; streaming in blocks equals one-shot decoding; bad inputs give one clear error."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TONE_AMPLITUDE, TONE_HZ
from tmrender.errors import MediaError, UserInputError
from tmrender.media.audio import (
    SAMPLE_RATE,
    AudioStream,
    audio_samples,
    load_audio,
    open_audio,
    write_wav,
)
from tmrender.media.ffmpeg import run_ffmpeg

SECONDS = 1.5
EXPECTED = int(SECONDS * SAMPLE_RATE)  # 24000
ONE_VIDEO_FRAME = SAMPLE_RATE // 25  # 640 samples at 25 fps

LOSSLESS = {
    "pcm_u8.wav": ("-c:a", "pcm_u8"),
    "pcm_s16le.wav": ("-c:a", "pcm_s16le"),
    "pcm_s24le.wav": ("-c:a", "pcm_s24le"),
    "pcm_s32le.wav": ("-c:a", "pcm_s32le"),
    "pcm_f32le.wav": ("-c:a", "pcm_f32le"),
    "tone.flac": ("-c:a", "flac"),
}
LOSSY = {
    "tone.mp3": ("-c:a", "libmp3lame", "-b:a", "96k"),
    "tone.m4a": ("-c:a", "aac", "-b:a", "96k"),
    "tone.opus.ogg": ("-c:a", "libopus", "-b:a", "48k"),
    "tone.vorbis.ogg": ("-c:a", "libvorbis"),
}


def peak_hz(samples: np.ndarray) -> float:
    """Frequency of the strongest spectral line of 16 kHz samples (Hann window)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * SAMPLE_RATE / samples.size)


def assert_is_tone(samples: np.ndarray, amplitude_tol: float) -> None:
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(peak_hz(samples) - TONE_HZ) < 2.0
    middle = samples[samples.size // 4 : -samples.size // 4]  # away from codec edges
    assert abs(np.abs(middle).max() - TONE_AMPLITUDE) < amplitude_tol


# --- Formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_formats_decode_to_exact_sample_count(make_tone, name):
    path = make_tone(name, *LOSSLESS[name], seconds=SECONDS)
    samples = load_audio(path)
    assert samples.size == EXPECTED
    assert_is_tone(samples, amplitude_tol=0.01 if name != "pcm_u8.wav" else 0.02)


@pytest.mark.parametrize("name", LOSSY)
def test_lossy_formats_decode_within_one_video_frame(make_tone, name):
    rate = 48_000 if "opus" in name else 44_100  # Opus is always 48 kHz inside
    path = make_tone(name, *LOSSY[name], seconds=SECONDS, rate=rate)
    samples = load_audio(path)
    assert abs(samples.size - EXPECTED) <= ONE_VIDEO_FRAME
    assert_is_tone(samples, amplitude_tol=0.03)


def test_audio_track_of_a_video_file(video_with_audio):
    info = open_audio(video_with_audio)
    assert info.codec == "aac" and info.source_rate == 44_100
    samples = load_audio(video_with_audio)
    assert abs(samples.size - EXPECTED) <= ONE_VIDEO_FRAME
    assert_is_tone(samples, amplitude_tol=0.03)


@pytest.mark.parametrize(
    ("rate", "seconds", "expected"),
    [(8_000, 1.25, 20_000), (22_050, 2.0, 32_000), (48_000, 0.75, 12_000), (16_000, 1.0, 16_000)],
)
def test_resampling_keeps_exact_duration(make_tone, rate, seconds, expected):
    path = make_tone(f"rate-{rate}-{seconds}.wav", "-c:a", "pcm_s16le", seconds=seconds, rate=rate)
    assert audio_samples(path) == expected
    assert abs(peak_hz(load_audio(path)) - TONE_HZ) < 2.0


def test_stereo_is_downmixed_to_mono(tmp_path):
    # Left 440 Hz, right 1000 Hz: the mono mix must hold both, at equal strength.
    path = tmp_path / "stereo.wav"
    # fmt: off
    run_ffmpeg(
        [
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=1",
            "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=44100:duration=1",
            "-filter_complex", "[0:a][1:a]amerge=inputs=2", "-c:a", "pcm_s16le", "-y", str(path),
        ],
        what="cannot make stereo test audio",
    )
    # fmt: on
    assert open_audio(path).codec == "pcm_s16le"
    samples = load_audio(path)
    assert samples.shape == (SAMPLE_RATE,)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    hz = np.fft.rfftfreq(samples.size, 1 / SAMPLE_RATE)
    left, right = spectrum[np.argmin(abs(hz - 440))], spectrum[np.argmin(abs(hz - 1000))]
    assert left > 0.2 * spectrum.max() and right > 0.2 * spectrum.max()
    assert 0.8 < left / right < 1.25


def test_write_wav_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    original = rng.uniform(-0.9, 0.9, 4_001).astype(np.float32)
    write_wav(tmp_path / "x.wav", original)
    decoded = load_audio(tmp_path / "x.wav")
    assert decoded.shape == original.shape
    np.testing.assert_allclose(decoded, original, atol=2.0 / 32768)  # 16-bit steps
    with pytest.raises(ValueError, match="mono"):
        write_wav(tmp_path / "y.wav", np.zeros((10, 2)))


# --- Streaming ------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1_000, 16_000, 24_000, 30_000])
def test_streaming_blocks_equal_one_shot_decode(make_tone, block):
    path = make_tone("stream.mp3", "-c:a", "libmp3lame", seconds=SECONDS)
    whole = load_audio(path)
    stream = AudioStream(path, block_samples=block)
    blocks = list(stream)
    assert all(b.size == block for b in blocks[:-1])
    assert 0 < blocks[-1].size <= block
    assert len(blocks) == -(-whole.size // block)
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    assert stream.samples_read == whole.size
    assert stream.seconds_read == pytest.approx(whole.size / SAMPLE_RATE)


def test_stopping_a_stream_early_stops_ffmpeg(make_tone):
    path = make_tone("long.flac", "-c:a", "flac", seconds=20.0, rate=16_000)
    stream = AudioStream(path, block_samples=1_000)
    blocks = iter(stream)
    assert next(blocks).size == 1_000
    blocks.close()  # what a `break` out of a for loop does
    assert stream._proc.returncode is not None  # ffmpeg is gone, not left running
    assert stream.samples_read == 1_000


def test_block_size_must_be_positive(make_tone):
    with pytest.raises(ValueError):
        AudioStream(make_tone("pcm_s16le.wav", *LOSSLESS["pcm_s16le.wav"]), block_samples=0)


# --- Bad and unusual inputs -----------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(UserInputError, match="audio file not found"):
        load_audio(tmp_path / "missing.wav")


def test_folder_given_as_audio(tmp_path):
    with pytest.raises(UserInputError, match="is a folder"):
        open_audio(tmp_path)


def test_message_keeps_the_path_as_given(tmp_path, text_file):
    # A path that itself contains "media file" must come back unchanged in the message.
    missing = tmp_path / "my media file" / "speech.wav"
    with pytest.raises(UserInputError) as err:
        open_audio(missing)
    assert str(err.value) == f"audio file not found: {missing}"
    missing.parent.mkdir()
    text = missing.parent / "notes.wav"
    text.write_bytes(text_file.read_bytes())
    with pytest.raises(MediaError) as err:
        open_audio(text)
    assert str(err.value).startswith(f"{text} is not a media file ffmpeg can read")


@pytest.mark.parametrize("suffix", [".txt", ".wav", ".mp3"])
def test_text_file_is_not_a_media_file(text_file, tmp_path, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_bytes(text_file.read_bytes())
    with pytest.raises(MediaError, match="is not a media file"):
        load_audio(path)


def test_video_without_audio_stream(video_without_audio):
    with pytest.raises(MediaError, match="has no audio stream"):
        load_audio(video_without_audio)


def test_zero_length_wav(empty_wav):
    with pytest.raises(UserInputError, match="zero length"):
        load_audio(empty_wav)


def test_silent_audio_decodes_to_zeros(silent_wav):
    samples = load_audio(silent_wav)
    assert samples.shape == (SAMPLE_RATE,)
    assert not samples.any()
