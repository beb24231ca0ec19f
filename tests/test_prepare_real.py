"""`tmrender prepare` on videos of a face (tracked, model-framed, landmark mouth labels, cut
where the face is lost) and `tmrender.data.face_track`'s pieces.

The fixture video is a drawn avatar (seed 6: one dlib's HOG detector finds) whose jaw opens
and closes on a known schedule, pasted into a bigger grey frame at a known offset that moves
by (2, 1) px a frame, with a tone; from frame `LOST_AT` the face is gone (grey only).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tmrender.data import face_track, prepare
from tmrender.data.corpus import read_clip
from tmrender.data.visemes import PARAMS
from tmrender.faces.align import CANONICAL, apply, invert

FRAMES, LOST_AT = 60, 45
AVATAR_SIDE, CANVAS = 192, (300, 384)  # avatar side; canvas height, width
START, STEP = np.array([60, 40]), np.array([2, 1])  # paste offset x, y and its motion a frame
PERIOD = 12  # frames per jaw cycle


def jaw_schedule(frames: int = FRAMES) -> np.ndarray:
    """The avatar's jaw opening per frame (frames,) in [0, 1]."""
    return 0.5 - 0.5 * np.cos(np.arange(frames) * 2 * np.pi / PERIOD)


def avatar_frames(frames: int = FRAMES, lost_at: int = LOST_AT) -> np.ndarray:
    """uint8 (frames, H, W, 3): the speaking avatar moving across a grey canvas, then gone."""
    from tmrender.data import visemes
    from tmrender.data.avatar import AvatarRenderer, neutral_mouth, neutral_pose, sample_appearance

    renderer = AvatarRenderer(sample_appearance(np.random.default_rng(6)), AVATAR_SIDE)
    out = np.full((frames, *CANVAS, 3), 90, np.uint8)
    for i, jaw in enumerate(jaw_schedule(frames)[:lost_at]):
        mouth = neutral_mouth().copy()
        mouth[visemes.JAW], mouth[visemes.CLOSE] = jaw, 0.0
        mouth[visemes.OPEN] = visemes.opening(mouth[visemes.JAW], 0.0, mouth[visemes.TEETH])
        x, y = START + i * STEP
        out[i, y : y + AVATAR_SIDE, x : x + AVATAR_SIDE] = renderer.draw(
            mouth, neutral_pose()
        ).pixels
    return out


def write_face_video(path: Path, frames: np.ndarray) -> Path:
    """An MP4 of `frames` at 25 fps with a 300 Hz tone over them."""
    from tmrender.media.audio import write_wav
    from tmrender.media.video import VideoWriter

    wav = path.with_suffix(".wav.tmp")
    t = np.arange(len(frames) * 640) / 16_000
    write_wav(wav, 0.3 * np.sin(2 * np.pi * 300 * t).astype(np.float32))
    height, width = frames.shape[1:3]
    with VideoWriter(path, width, height, fps=25, audio=wav, crf=12) as writer:
        writer.write(frames)
    wav.unlink()
    return path


@pytest.fixture(scope="module")
def face_video(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("face-videos")
    write_face_video(folder / "talker.mp4", avatar_frames())
    return folder


@pytest.fixture(scope="module")
def tracked(face_video, tmp_path_factory) -> Path:
    """The face video prepared at 128 px (npy frames): the clip folder."""
    out = tmp_path_factory.mktemp("tracked") / "corpus"
    opts = prepare.PrepareOptions(out=out, split="test", frame_format="npy")
    (result,) = prepare.prepare_corpus(face_video, opts)
    assert result.error is None, result.error
    return out / "test" / "talker"


# -- pure pieces -----------------------------------------------------------------------------


def test_smoothed_alignments_put_the_anchors_at_the_canonical_points():
    from tmrender.faces.align import anchor_points

    rng = np.random.default_rng(0)
    base = rng.uniform(100, 300, (68, 2)).astype(np.float32)
    drop = 100 * (CANONICAL[2, 1] - CANONICAL[0, 1]) / (CANONICAL[1, 0] - CANONICAL[0, 0])
    base[36:42] = [150, 200]  # eyes and mouth corners in the canonical proportions
    base[42:48] = [250, 200]
    base[48], base[54] = [170, 200 + drop], [230, 200 + drop]
    still = np.repeat(base[None], 7, axis=0)
    matrices = face_track.smoothed_alignments(still, 128)
    expected = CANONICAL * 128 - 0.5
    for matrix in matrices:
        assert np.allclose(apply(matrix, anchor_points(base)), expected, atol=1e-3)
    jitter = still + rng.normal(0, 2.0, still.shape).astype(np.float32)  # landmark noise
    raw = face_track.smoothed_alignments(jitter, 128, radius=0)
    smooth = face_track.smoothed_alignments(jitter, 128)
    assert (
        np.abs(np.diff(smooth[:, :, 2], axis=0)).mean()
        < np.abs(np.diff(raw[:, :, 2], axis=0)).mean()
    )


def test_outward_box_holds_the_pixels_of_its_points():
    points = np.array([[10.0, 20.0], [30.2, 40.7]])
    assert face_track.outward_box(points, 128).tolist() == [10, 20, 31, 42]
    assert face_track.outward_box(np.array([[-5.0, 3.0], [200.0, 9.0]]), 64).tolist() == [
        0, 3, 64, 10,
    ]  # fmt: skip


def test_a_video_without_a_face_in_its_first_frame_is_refused():
    from tmrender.errors import MediaError

    grey = (np.full((120, 160, 3), 90, np.uint8) for _ in range(3))
    with pytest.raises(MediaError, match="no face found in the first frame"):
        face_track.track_video_face(grey)


# -- a tracked clip (slow: tracking and the landmark measure of 45 frames) -------------------


@pytest.mark.slow
def test_the_clip_is_cut_where_the_face_is_lost(tracked):
    clip = read_clip(tracked)
    meta = clip.meta
    assert clip.frames.shape == (LOST_AT, 128, 128, 3)
    assert clip.audio.size == LOST_AT * 640
    assert meta["face_track"]["lost_at_frame"] == LOST_AT
    assert meta["face_track"]["frames_dropped"] == FRAMES - LOST_AT
    assert meta["face_track"]["frames_available"] == FRAMES
    assert meta["face_box"] == {"from": "tracked", "detections": 1}
    assert meta["mouth_truth"] == "landmarks"
    index = json.loads((tracked.parent / "index.json").read_text())
    assert index[0]["dropped"] == FRAMES - LOST_AT


@pytest.mark.slow
def test_the_face_box_follows_the_moving_face(tracked):
    """The face box of boxes.npy, taken back to source pixels through align.npy, moves with
    the pasted avatar (2, 1) px a frame, within 2 px."""
    boxes = np.load(tracked / "boxes.npy")
    matrices = np.load(tracked / "align.npy").astype(np.float64)
    assert boxes.shape == (LOST_AT, 2, 4) and matrices.shape == (LOST_AT, 2, 3)
    centres = []
    for box, matrix in zip(boxes[:, 1], matrices, strict=True):
        centre = np.array([[(box[0] + box[2]) / 2 - 0.5, (box[1] + box[3]) / 2 - 0.5]])
        centres.append(apply(invert(matrix), centre)[0])
    moved = np.array(centres) - centres[0]
    expected = np.arange(LOST_AT)[:, None] * STEP
    assert np.abs(moved - expected).max() < 2.5, np.abs(moved - expected).max()
    # in the prepared frames the face stays where the model's portraits have theirs
    mouth, face = boxes[:, 0], boxes[:, 1]
    assert (mouth[:, :2] >= face[:, :2]).all() and (mouth[:, 2:] <= face[:, 2:]).all()
    assert np.ptp(face, axis=0).max() <= 6  # px of 128: the box jitters with the landmarks


@pytest.mark.slow
def test_mouth_labels_follow_the_known_opening_schedule(tracked):
    mouth = np.load(tracked / "mouth.npy")
    opening, width = mouth[:, PARAMS.index("open")], mouth[:, PARAMS.index("width")]
    assert np.isfinite(opening).all() and np.isfinite(width).all()
    others = [i for i, name in enumerate(PARAMS) if name not in ("open", "width")]
    assert np.isnan(mouth[:, others]).all()
    r = np.corrcoef(opening, jaw_schedule()[:LOST_AT])[0, 1]
    assert r > 0.85, r
    source = np.load(tracked / "mouth_source.npy")
    assert np.corrcoef(source[:, 0], jaw_schedule()[:LOST_AT])[0, 1] > 0.85


@pytest.mark.slow
def test_the_command_reports_dropped_frames_and_skips_a_short_clip(face_video, tmp_path, capsys):
    short = tmp_path / "videos"
    short.mkdir()
    write_face_video(short / "brief.mp4", avatar_frames(frames=30, lost_at=10))
    (short / "talker.mp4").symlink_to(face_video / "talker.mp4")
    out = tmp_path / "corpus"
    code, _, err = run_cli(capsys, "prepare", "--videos", str(short), "--out", str(out))
    assert code == 3, err
    assert "talker: face lost, 15 frames dropped (kept 45)" in err
    assert "15 frames dropped where the face was lost (1 clips cut)" in err
    skipped = [line for line in err.splitlines() if "skipped" in line and "brief" in line]
    assert len(skipped) == 1 and "the face is lost at frame 10" in skipped[0], err


@pytest.mark.slow
def test_the_first_frame_is_the_crop_generate_would_make(tracked, face_video):
    """Frame 0 is aligned on its own landmarks, as `generate --face auto` aligns a photo."""
    from tmrender.faces import face_crop
    from tmrender.media.video import iter_video_frames

    first = next(iter(iter_video_frames(face_video / "talker.mp4")))[0]
    expected = face_crop(first, 128).alignment.matrix
    assert np.allclose(np.load(tracked / "align.npy")[0], expected, atol=1e-4)
