"""`tmrender generate` on any picture: a photo's video has the photo's size, `--face`,
`--no-paste-back`, and one-line errors for pictures it cannot render (exit code 2, no file).

The photo is matplotlib's grace_hopper.jpg (512x600, one face)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from tmrender.faces import detect as detect_module
from tmrender.media.audio import write_wav
from tmrender.media.video import iter_video_frames

from .conftest import run_cli


@pytest.fixture
def audio(tmp_path):
    path = tmp_path / "speech.wav"
    write_wav(path, 0.3 * np.sin(2 * np.pi * 200 * np.arange(8_000) / 16_000))
    return path


HOPPER = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


def generate(capsys, checkpoint, image, audio, out, *extra: str):
    args = ["generate", "-i", str(image), "-a", str(audio), "-m", str(checkpoint), "-o", str(out)]
    return run_cli(capsys, *args, *extra)


def first_frame(path) -> np.ndarray:
    return next(iter(iter_video_frames(path, 4)))[0]


def test_a_photo_renders_at_its_own_size_and_only_the_face_changes(
    capsys, checkpoint, audio, tmp_path
):
    out = tmp_path / "hopper.mp4"
    code, _, err = generate(capsys, checkpoint, HOPPER, audio, out, "--crf", "12")
    assert code == 0, err
    frame = first_frame(out)
    photo = np.asarray(Image.open(HOPPER).convert("RGB"))
    assert frame.shape == photo.shape == (600, 512, 3)
    # the face box is about x 170-360, y 120-330 (tests/test_faces.py): the bottom rows
    # and the left and right edges stay the photo (up to H.264)
    for part in (np.s_[450:], np.s_[:, :100], np.s_[:, 430:]):
        error = np.mean((frame[part].astype(float) - photo[part]) ** 2)
        assert 10 * np.log10(255**2 / error) >= 40


def test_no_paste_back_writes_the_aligned_crop(capsys, checkpoint, audio, tmp_path):
    out = tmp_path / "crop.mp4"
    code, _, err = generate(capsys, checkpoint, HOPPER, audio, out, "--no-paste-back")
    assert code == 0, err
    assert first_frame(out).shape == (128, 128, 3)


def faceless(tmp_path):
    path = tmp_path / "wall.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 300, 3)).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("picture", "extra", "message"),
    [
        (faceless, (), r"no face found in .*wall.png; pass --crop x,y,w,h to choose a region"),
        (lambda _: HOPPER, ("--face", "3"), r"face 3 asked for, but only 1 face found in"),
        (lambda _: HOPPER, ("--face", "first"), r"--face must be auto or a face number"),
    ],
)
def test_pictures_it_cannot_render_are_one_line_errors(
    capsys, checkpoint, audio, tmp_path, picture, extra, message
):
    out = tmp_path / "never.mp4"
    code, _, err = generate(capsys, checkpoint, picture(tmp_path), audio, out, *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not out.exists()


def test_a_face_too_small_says_the_minimum(capsys, checkpoint, audio, tmp_path, monkeypatch):
    monkeypatch.setattr(detect_module, "MIN_FACE_PX", 400)
    out = tmp_path / "never.mp4"
    code, _, err = generate(capsys, checkpoint, HOPPER, audio, out)
    assert code == 2 and re.search(r"too small: \d+ pixels wide, at least 400", err), err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_an_image_too_large_says_the_limit(capsys, checkpoint, audio, tmp_path, monkeypatch):
    monkeypatch.setattr(detect_module, "MAX_PIXELS", 100_000)
    out = tmp_path / "never.mp4"
    code, _, err = generate(capsys, checkpoint, HOPPER, audio, out)
    assert code == 2 and "too large: 512x600 pixels, the limit is" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_crop_overrides_the_face_search(capsys, checkpoint, audio, tmp_path):
    out = tmp_path / "crop.mp4"
    code, _, err = generate(
        capsys, checkpoint, faceless(tmp_path), audio, out, "--crop", "0,0,200,200"
    )
    assert code == 0, err
    assert first_frame(out).shape == (128, 128, 3)
