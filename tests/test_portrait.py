"""The portrait check: avatars pass, textured or blank images are flagged, and `generate` and
`batch` say so in one warning line while still rendering."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tmrender.cli import main
from tmrender.data.avatar import draw_avatar
from tmrender.media.audio import SAMPLE_RATE, write_wav
from tmrender.render.portrait import (
    ANALYSIS_SIZE,
    PHOTO_SHARE,
    looks_like_avatar,
    portrait_looks_like_avatar,
    texture_share,
)

WARNING = "look like the drawn avatars the model learned from"


def run(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err


def textured(size: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB uint8 (size, size, 3): a smooth gradient under fine grain."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(60, 190, size, dtype=np.float32)[None, :, None]
    grain = rng.normal(0, 12, (size, size, 1)).astype(np.float32)
    return np.clip(ramp + grain + np.zeros((1, 1, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def files(tmp_path):
    """An avatar, a photo-like image and half a second of audio."""
    Image.fromarray(draw_avatar(5, 300)).save(tmp_path / "avatar.png")
    Image.fromarray(textured(200)).save(tmp_path / "photo.jpg", quality=90)
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    write_wav(tmp_path / "talk.wav", 0.3 * np.sin(2 * np.pi * 180 * t))
    return tmp_path


@pytest.mark.parametrize("size", [128, 256, 512])
def test_avatars_of_many_seeds_and_sizes_pass(tmp_path, size):
    for seed in range(6):
        path = tmp_path / f"a{seed}.png"
        Image.fromarray(draw_avatar(seed, size)).save(path)
        assert portrait_looks_like_avatar(path), (seed, size)


def test_textured_noisy_and_blank_images_are_flagged():
    assert texture_share(textured(ANALYSIS_SIZE)) > PHOTO_SHARE
    assert not looks_like_avatar(textured(ANALYSIS_SIZE))
    noise = np.random.default_rng(0).integers(0, 256, (ANALYSIS_SIZE,) * 2 + (3,), np.uint8)
    assert not looks_like_avatar(noise)
    assert not looks_like_avatar(np.full((ANALYSIS_SIZE, ANALYSIS_SIZE, 3), 140, np.uint8))


def test_the_crop_decides_what_is_checked(tmp_path):
    left_avatar = np.concatenate([draw_avatar(2, 256), textured(256)], axis=1)
    path = tmp_path / "half.png"
    Image.fromarray(left_avatar).save(path)
    from tmrender.media.image import CropBox

    assert portrait_looks_like_avatar(path, CropBox(0, 0, 256, 256))
    assert not portrait_looks_like_avatar(path, CropBox(256, 0, 256, 256))


def test_generate_warns_in_one_line_and_still_renders(capsys, checkpoint, files):
    args = ["generate", "-a", str(files / "talk.wav"), "-m", str(checkpoint), "--device", "cpu"]
    photo = ("-i", str(files / "photo.jpg"), "--crop", "0,0,200,200")  # a texture: no face
    code, err = run(capsys, *args, *photo, "-o", str(files / "p.mp4"))
    assert code == 0, err
    assert sum(WARNING in line for line in err.splitlines()) == 1
    assert (files / "p.mp4").exists()
    code, err = run(capsys, *args, "-i", str(files / "avatar.png"), "-o", str(files / "a.mp4"))
    assert code == 0 and WARNING not in err


def test_batch_names_the_unlike_rows_in_one_line(capsys, checkpoint, files):
    (files / "rows.csv").write_text(  # photo.jpg has no face: cropped, as in generate above
        "image,audio,output,crop\n"
        "avatar.png,talk.wav,a.mp4,\n"
        'photo.jpg,talk.wav,p.mp4,"0,0,200,200"\n'
        'photo.jpg,talk.wav,q.mp4,"0,0,150,150"\n'
    )
    code, err = run(capsys, "batch", str(files / "rows.csv"), "-m", str(checkpoint), "--dry-run")
    assert code == 0, err
    lines = [line for line in err.splitlines() if WARNING in line]
    assert len(lines) == 1
    assert "2 of 3 portraits" in lines[0] and "line 3 (photo.jpg), line 4 (photo.jpg)" in lines[0]
    (files / "rows.csv").write_text("image,audio\navatar.png,talk.wav\n")
    code, err = run(capsys, "batch", str(files / "rows.csv"), "-m", str(checkpoint), "--dry-run")
    assert code == 0 and WARNING not in err
