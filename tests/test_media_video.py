"""Video output: the frame-count rule, the written MP4 (codecs, pixel format, faststart, exact
frame count, durations, A/V alignment), clean-up on failure, and unwritable destinations."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tmrender.errors import MediaError, UserInputError
from tmrender.media.audio import SAMPLE_RATE, AudioStream, frames_for_samples, write_wav
from tmrender.media.ffmpeg import count_video_frames, ffmpeg_exe, probe
from tmrender.media.video import VideoWriter, read_video_frames

FPS = 25
SIZE = 64
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
AUDIO_SAMPLES = 35_900  # 2.24375 s: not a whole number of frames
BEEP_FRAMES = (5, 21, 40)  # frame indices that flash white while the audio beeps
BEEP_SAMPLES = 800  # 50 ms of 1 kHz


def top_level_boxes(path: Path) -> list[str]:
    """Names of the top-level MP4 boxes in file order (e.g. ftyp, moov, mdat)."""
    names, data, offset = [], path.read_bytes(), 0
    while offset + 8 <= len(data):
        size, name = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:  # 64-bit size follows
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        names.append(name.decode("latin-1"))
        if size < 8:
            break
        offset += size
    return names


def ffmpeg_description(path: Path) -> str:
    """What `ffmpeg -i` prints about a file."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True).stderr


def onsets(samples: np.ndarray, threshold: float = 0.1, gap: int = SAMPLES_PER_FRAME) -> list:
    """First sample of every loud stretch that follows at least `gap` quiet samples."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if loud.size == 0:
        return []
    starts = [loud[0]] + [b for a, b in zip(loud[:-1], loud[1:], strict=True) if b - a > gap]
    return [int(s) for s in starts]


@pytest.fixture(scope="module")
def beep_video(tmp_path_factory) -> dict:
    """An MP4 whose audio beeps exactly when its frames flash white (see BEEP_FRAMES)."""
    folder = tmp_path_factory.mktemp("beeps")
    audio = np.zeros(AUDIO_SAMPLES, np.float32)
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(BEEP_SAMPLES) / SAMPLE_RATE)
    for frame in BEEP_FRAMES:
        start = frame * SAMPLES_PER_FRAME
        audio[start : start + BEEP_SAMPLES] = tone
    write_wav(folder / "beeps.wav", audio)
    num_frames = frames_for_samples(AUDIO_SAMPLES, FPS)
    frames = np.full((num_frames, SIZE, SIZE, 3), 16, np.uint8)
    frames[list(BEEP_FRAMES)] = 255
    out = folder / "out" / "beeps.mp4"
    out.parent.mkdir()
    with VideoWriter(out, SIZE, SIZE, FPS, audio=folder / "beeps.wav") as writer:
        writer.write(frames[:10])  # a batch ...
        for frame in frames[10:]:
            writer.write(frame)  # ... then single frames
    return {"path": out, "frames": frames, "writer": writer}


# --- The frame-count rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "fps", "frames"),
    [
        (0, 25, 0),
        (1, 25, 1),
        (639, 25, 1),
        (640, 25, 1),
        (641, 25, 2),
        (16_000, 25, 25),
        (16_001, 25, 26),
        (24_000, 24, 36),
        (24_000, 30, 45),
        (16_000 * 3600, 25, 90_000),  # one hour
        (1, 60, 1),
        (533, 30, 1),
        (534, 30, 2),  # 534 * 30 / 16000 = 1.00125
    ],
)
def test_frames_for_samples_is_a_ceiling(samples, fps, frames):
    assert frames_for_samples(samples, fps) == frames
    assert frames_for_samples(samples * 3, fps, sample_rate=SAMPLE_RATE * 3) == frames


# --- The written file -----------------------------------------------------------------------


def test_streams_are_h264_yuv420p_and_aac(beep_video):
    info = probe(beep_video["path"])
    assert [s.codec for s in info.video] == ["h264"]
    assert [s.codec for s in info.audio] == ["aac"]
    assert (info.video[0].width, info.video[0].height, info.video[0].fps) == (SIZE, SIZE, FPS)
    video_line = re.search(r"Stream #0:\d.*Video: .*", ffmpeg_description(beep_video["path"]))
    assert re.search(r"\byuv420p\b", video_line.group(0))


def test_moov_comes_before_mdat(beep_video):
    boxes = top_level_boxes(beep_video["path"])
    assert "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat")


def test_exact_frame_count(beep_video):
    expected = frames_for_samples(AUDIO_SAMPLES, FPS)
    assert beep_video["writer"].frames_written == expected == 57
    assert count_video_frames(beep_video["path"]) == expected


def test_durations_match_the_audio(beep_video):
    audio_seconds, frame = AUDIO_SAMPLES / SAMPLE_RATE, 1 / FPS
    stream = AudioStream(beep_video["path"])
    for _ in stream:
        pass
    assert abs(stream.samples_read - AUDIO_SAMPLES) < SAMPLES_PER_FRAME
    assert abs(count_video_frames(beep_video["path"]) * frame - audio_seconds) < frame
    container = probe(beep_video["path"]).duration
    assert container is not None and abs(container - audio_seconds) < frame


def test_frames_decode_back(beep_video):
    decoded = read_video_frames(beep_video["path"])
    assert decoded.shape == beep_video["frames"].shape
    assert np.abs(decoded.astype(int) - beep_video["frames"]).mean() < 3


def test_a_phone_video_with_a_quarter_turn_decodes_upright(tmp_path):
    """Phones store portrait video as landscape plus a display rotation; ffmpeg turns the
    frames upright as it decodes, so the frame size must be the turned one."""
    ramp = np.linspace(0, 255, 48)[None, :, None]  # 32 x 48 px, dark left, bright right
    frames = np.repeat(np.broadcast_to(ramp, (32, 48, 3))[None], 4, 0).astype(np.uint8)
    flat, turned = tmp_path / "flat.mp4", tmp_path / "turned.mp4"
    with VideoWriter(flat, width=48, height=32, fps=FPS) as writer:
        writer.write(frames)
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-display_rotation", "90"]
    subprocess.run([*cmd, "-i", str(flat), "-c", "copy", str(turned)], check=True)
    stream = probe(turned).video[0]
    assert abs(stream.rotation) == 90 and stream.display_size == (32, 48)
    decoded = read_video_frames(turned)
    assert decoded.shape == (4, 48, 32, 3)
    columns = decoded.astype(int).mean(axis=(0, 2, 3))  # the ramp now runs top-bottom
    assert abs(columns[0] - columns[-1]) > 150
    assert probe(flat).video[0].display_size == (48, 32)


def test_audio_and_video_are_aligned(beep_video):
    flashes = np.flatnonzero(read_video_frames(beep_video["path"]).mean(axis=(1, 2, 3)) > 128)
    assert flashes.tolist() == list(BEEP_FRAMES)
    beeps = onsets(next(iter(AudioStream(beep_video["path"], block_samples=10**7))))
    assert len(beeps) == len(BEEP_FRAMES)
    for beep, flash in zip(beeps, flashes, strict=True):
        assert abs(beep / SAMPLES_PER_FRAME - flash) < 1.0, (beep, flash)


def test_without_audio_and_with_odd_size(tmp_path):
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, width=33, height=21, fps=FPS) as writer:
        writer.write(np.zeros((3, 21, 33, 3), np.uint8))
    info = probe(path)
    assert info.audio == [] and [s.codec for s in info.video] == ["h264"]
    assert (info.video[0].width, info.video[0].height) == (34, 22)  # padded to even
    assert count_video_frames(path) == 3


@pytest.mark.parametrize(
    "frames",
    [np.zeros((SIZE, SIZE, 3), np.float32), np.zeros((1, SIZE, SIZE + 2, 3), np.uint8)],
    ids=["float", "wrong-size"],
)
def test_bad_frames_are_rejected(tmp_path, frames):
    with (
        pytest.raises(ValueError, match="frames must be uint8"),
        VideoWriter(tmp_path / "x.mp4", SIZE, SIZE) as writer,
    ):
        writer.write(frames)
    assert list(tmp_path.iterdir()) == []


# --- Nothing left behind --------------------------------------------------------------------


@pytest.fixture
def speech(tmp_path_factory) -> Path:
    """A short WAV outside the destination folder."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    write_wav(path, np.zeros(SAMPLE_RATE // 2, np.float32))
    return path


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_exception_leaves_nothing(tmp_path, speech, error):
    with pytest.raises(error), VideoWriter(tmp_path / "out.mp4", SIZE, SIZE, audio=speech) as w:
        w.write(np.zeros((5, SIZE, SIZE, 3), np.uint8))
        raise error()
    assert list(tmp_path.iterdir()) == []


def test_exception_keeps_an_existing_file(tmp_path, speech):
    (tmp_path / "out.mp4").write_bytes(b"previous result")
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "out.mp4", SIZE, SIZE) as w:
        w.write(np.zeros((2, SIZE, SIZE, 3), np.uint8))
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    assert (tmp_path / "out.mp4").read_bytes() == b"previous result"


def test_no_frames_leaves_nothing(tmp_path):
    with (
        pytest.raises(MediaError, match="no frames"),
        VideoWriter(tmp_path / "out.mp4", SIZE, SIZE),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


def test_failed_mux_leaves_nothing(tmp_path, text_file):
    with (
        pytest.raises(MediaError, match="cannot add the audio"),
        VideoWriter(tmp_path / "out.mp4", SIZE, SIZE, audio=text_file) as writer,
    ):
        writer.write(np.zeros((2, SIZE, SIZE, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


# --- Destinations that cannot be written ----------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(UserInputError, match="output folder does not exist"):
        VideoWriter(tmp_path / "nope" / "out.mp4", SIZE, SIZE)


def test_file_in_place_of_a_folder(tmp_path):
    (tmp_path / "plain").write_text("a file")
    with pytest.raises(UserInputError, match="is a file, not a folder"):
        VideoWriter(tmp_path / "plain" / "out.mp4", SIZE, SIZE)


def test_unwritable_folder():
    # Root ignores permission bits, but nobody may create files in /proc.
    with pytest.raises(UserInputError, match="cannot be written"):
        VideoWriter("/proc/out.mp4", SIZE, SIZE)


def test_output_is_a_folder(tmp_path):
    with pytest.raises(UserInputError, match="is a folder"):
        VideoWriter(tmp_path, SIZE, SIZE)


def test_crf_out_of_range(tmp_path):
    with pytest.raises(UserInputError, match="--crf"):
        VideoWriter(tmp_path / "out.mp4", SIZE, SIZE, crf=52)
    assert list(tmp_path.iterdir()) == []
