"""Faces in real pictures: detection on a real photo (matplotlib's grace_hopper.jpg), none in
generated textures, landmarks, mouth measures, tracking, size limits and `tmrender faces`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from tmrender.errors import UserInputError
from tmrender.faces import (
    FaceTracker,
    detect_faces,
    face_crop,
    key_points,
    landmarks,
    main_face,
    mouth_opening,
    mouth_width,
    read_image,
)
from tmrender.faces import detect as detect_module
from tmrender.faces.align import anchor_points, canonical_points

from .conftest import run_cli

# Grace Hopper's face in the 512x600 photo, read off the picture by eye: nose tip, pupils.
NOSE = (267, 238)
EYES = ((222, 190), (305, 187))


@pytest.fixture(scope="module")
def hopper_path():
    return cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


@pytest.fixture(scope="module")
def hopper(hopper_path) -> np.ndarray:
    """The photo as RGB uint8 (600, 512, 3)."""
    return read_image(hopper_path)


def texture(seed: int = 0, size: int = 384) -> np.ndarray:
    """A face-free picture: noise over sine stripes and random discs, RGB uint8 (S, S, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    stripes = 128 + 60 * np.sin(x * 50 + 3 * np.sin(y * 20))
    image = stripes[..., None] * np.array([1.0, 0.8, 0.5]) + rng.normal(0, 20, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


# --- Detection and landmarks ----------------------------------------------------------------


def test_detects_the_face_in_a_real_photo(hopper):
    faces = detect_faces(hopper)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.5
    assert 120 <= face.w <= 260 and abs(face.w - face.h) <= 2
    for x, y in (NOSE, *EYES):
        assert face.x < x < face.x + face.w and face.y < y < face.y + face.h


def test_no_face_in_a_texture():
    assert detect_faces(texture()) == []
    with pytest.raises(UserInputError, match="no face found in the texture"):
        main_face(texture(), "the texture")


def test_faces_come_largest_first(hopper):
    small = np.asarray(Image.fromarray(hopper).resize((256, 300)))
    canvas = np.full((700, 900, 3), 90, np.uint8)
    canvas[50:350, 600:856] = small
    canvas[100:700, 20:532] = hopper
    faces = detect_faces(canvas)
    assert len(faces) == 2
    assert faces[0].w > faces[1].w and faces[0].x < 500 < faces[1].x


def test_landmarks_sit_on_the_face(hopper):
    points = landmarks(hopper, main_face(hopper))
    assert points.shape == (68, 2)
    k = key_points(points)
    assert np.hypot(*(k.nose_tip - NOSE)) < 8
    assert np.hypot(*(k.left_eye - EYES[0])) < 6 and np.hypot(*(k.right_eye - EYES[1])) < 6
    assert k.left_eye[1] < k.nose_tip[1] < k.mouth_centre[1]
    assert k.mouth_left[0] < k.nose_tip[0] < k.mouth_right[0]
    assert 0 <= mouth_opening(points) < 0.1  # her mouth is closed
    assert 0.5 < mouth_width(points) < 1.0


def test_mouth_measures_are_divided_by_the_eye_distance():
    points = np.zeros((68, 2), np.float32)
    points[36:42], points[42:48] = (100, 100), (200, 100)  # eye centres 100 px apart
    points[48], points[54] = (110, 200), (190, 200)
    points[62], points[66] = (150, 190), (150, 220)
    assert mouth_opening(points) == pytest.approx(0.3)
    assert mouth_width(points) == pytest.approx(0.8)
    assert mouth_opening(points * 2) == pytest.approx(0.3)  # independent of the face's size


# --- Tracking -------------------------------------------------------------------------------


def test_tracker_detects_once_and_follows_the_face(hopper):
    canvas = np.full((700, 700, 3), 90, np.uint8)
    tracker = FaceTracker()
    first = None
    for step in range(8):  # the photo moves 6 px right and 3 px down per frame
        frame = canvas.copy()
        dx, dy = 20 + 6 * step, 30 + 3 * step
        frame[dy : dy + 600, dx : dx + 512] = hopper
        tracked = tracker.update(frame)
        assert tracked is not None and tracked.detected == (step == 0)
        anchors = anchor_points(tracked.points)
        if first is None:
            first = anchors
        shift = (anchors - first).mean(axis=0)
        assert np.abs(shift - (6 * step, 3 * step)).max() <= 2.0


def test_tracker_reports_no_face():
    assert FaceTracker().update(texture()) is None


# --- Limits ---------------------------------------------------------------------------------


def test_too_large_and_too_small_are_one_line_errors(hopper, hopper_path, monkeypatch, tmp_path):
    monkeypatch.setattr(detect_module, "MAX_PIXELS", 100_000)
    with pytest.raises(UserInputError, match=r"too large: 512x600 pixels, the limit is 0 mega"):
        read_image(hopper_path)
    monkeypatch.setattr(detect_module, "MAX_PIXELS", 50_000_000)
    huge = tmp_path / "huge.png"  # 225 megapixels: past Pillow's own limit, refused unopened
    Image.new("1", (15_000, 15_000)).save(huge)
    with pytest.raises(UserInputError, match=r"too large: more than \d+ megapixels, the limit"):
        read_image(huge)
    monkeypatch.setattr(detect_module, "MIN_FACE_PX", 400)
    with pytest.raises(UserInputError, match=r"too small: \d+ pixels wide, at least 400"):
        main_face(hopper)


# --- `tmrender faces` -----------------------------------------------------------------------


def test_cli_lists_faces_as_a_table_and_as_json(capsys, hopper_path):
    code, out, _ = run_cli(capsys, "faces", str(hopper_path))
    assert code == 0 and "1 face(s)" in out
    code, out, _ = run_cli(capsys, "faces", str(hopper_path), "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 1
    assert set(rows[0]) == {"x", "y", "w", "h", "score", "size_ok"} and rows[0]["size_ok"]


def test_cli_errors_are_one_line_with_exit_code_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "faces", str(tmp_path / "missing.png"))
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    code, _, err = run_cli(capsys, "faces", str(broken))
    assert code == 2 and "not an image" in err
    plain = tmp_path / "texture.png"
    Image.fromarray(texture()).save(plain)
    code, _, err = run_cli(capsys, "faces", str(plain))
    assert code == 2 and f"no face found in {plain}" in err


def test_face_crop_puts_the_eyes_and_mouth_at_the_model_framing(hopper):
    result = face_crop(hopper)
    assert result.pixels.shape == (128, 128, 3) and result.box == main_face(hopper)
    anchors = result.alignment.to_crop(anchor_points(result.points))
    assert np.abs(anchors - canonical_points()).max() < 3.0  # least squares over 3 anchors
