"""`tmrender batch` checks each row's picture as `generate` frames it, before rendering:
no face, a face number past those found, a face too small and an image too large fail the
row with generate's one line, in the dry run's table and in a real run alike; the "unlike
the drawn avatars" warning judges the picture as it will be rendered (the aligned face on
the face path).

The photo is matplotlib's grace_hopper.jpg (512x600, one face, about 190 px wide)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from tmrender.faces import detect as detect_module
from tmrender.media.audio import SAMPLE_RATE, write_wav
from tmrender.render.batch.execute import execute_batch
from tmrender.render.batch.plan import BatchSettings, prepare_batch

from .conftest import drawn_avatar, run_cli

HOPPER = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
WARNING = "look like the drawn avatars the model learned from"


def textured(size: int) -> np.ndarray:
    """A photo-like RGB uint8 (size, size, 3) without a face: a gradient under fine grain."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(60, 190, size, dtype=np.float32)[None, :, None]
    grain = rng.normal(0, 12, (size, size, 1)).astype(np.float32)
    return np.clip(ramp + grain + np.zeros((1, 1, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def rows(tmp_path):
    """A manifest of one row per verdict, and its folder."""
    Image.fromarray(drawn_avatar(128)).save(tmp_path / "avatar.png")
    Image.fromarray(textured(200)).save(tmp_path / "texture.png")
    Image.fromarray(textured(700)).save(tmp_path / "big.png")  # 490,000 pixels
    t = np.arange(SAMPLE_RATE // 4) / SAMPLE_RATE
    write_wav(tmp_path / "talk.wav", 0.3 * np.sin(2 * np.pi * 180 * t))
    lines = [
        "image,audio,output,crop,face",
        f"{HOPPER},talk.wav,photo.mp4,,",  # line 2: the face path, a photo
        f"{HOPPER},talk.wav,second.mp4,,2",  # 3: only one face
        "texture.png,talk.wav,noface.mp4,,",  # 4: no face
        'texture.png,talk.wav,cropped.mp4,"0,0,100,100",',  # 5: a crop: no face search
        "avatar.png,talk.wav,avatar.mp4,,",  # 6: model-framed
        "big.png,talk.wav,big.mp4,,",  # 7: too large for the limit set below
    ]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.fixture
def small_limit(monkeypatch):
    """An image limit between the photo (307,200 pixels) and big.png (490,000)."""
    monkeypatch.setattr(detect_module, "MAX_PIXELS", 400_000)


def test_the_plan_fails_rows_whose_picture_cannot_render(rows, checkpoint, small_limit):
    plan = prepare_batch(rows / "rows.csv", BatchSettings(model=str(checkpoint), device="cpu"))
    by_line = {p.row.line: p for p in plan.planned}
    assert {line: p.action for line, p in by_line.items()} == {
        2: "render", 3: "fail", 4: "fail", 5: "render", 6: "render", 7: "fail"
    }  # fmt: skip
    assert "face 2 asked for, but only 1 face found" in by_line[3].reason
    assert by_line[4].reason.startswith("no face found in ") and "--crop" in by_line[4].reason
    assert "too large: 700x700 pixels, the limit is" in by_line[7].reason
    # as rendered: the photo's aligned face and the textured crop are unlike the avatars
    assert [p.avatar_like for p in (by_line[2], by_line[5], by_line[6])] == [False, False, True]


def test_a_face_too_small_fails_its_row(rows, checkpoint, monkeypatch):
    monkeypatch.setattr(detect_module, "MIN_FACE_PX", 400)  # hopper's face is ~190 px
    plan = prepare_batch(rows / "rows.csv", BatchSettings(model=str(checkpoint), device="cpu"))
    reason = next(p.reason for p in plan.planned if p.row.line == 2)
    assert "too small" in reason and "at least 400" in reason


def test_dry_run_shows_the_reasons_and_one_warning(
    capsys, rows, checkpoint, small_limit, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "400")  # rich's width off a terminal: no folded cells
    code, out, err = run_cli(
        capsys, "batch", str(rows / "rows.csv"), "-m", str(checkpoint), "--dry-run"
    )
    assert code == 3, err  # rows fail validation
    text = out + err
    assert "only 1 face found" in text and "no face found" in text and "too large" in text
    warnings = [line for line in err.splitlines() if WARNING in line]
    assert len(warnings) == 1 and "2 of 3 portraits" in warnings[0]
    assert "line 2 (" in warnings[0] and "line 5 (texture.png)" in warnings[0]
    assert not list(rows.glob("*.mp4"))


def test_a_real_run_fails_those_rows_with_the_same_line(rows, checkpoint, small_limit):
    lines = (rows / "rows.csv").read_text().splitlines()
    (rows / "rows.csv").write_text("\n".join([lines[0], lines[2], lines[3], lines[6]]) + "\n")
    plan = prepare_batch(rows / "rows.csv", BatchSettings(model=str(checkpoint), device="cpu"))
    reasons = [p.reason for p in plan.planned]
    report = execute_batch(plan)  # nothing to render: the model is not even loaded
    assert [row["status"] for row in report["rows"]] == ["failed"] * 3
    assert [row["error"] for row in report["rows"]] == reasons
    assert not list(rows.glob("*.mp4"))
