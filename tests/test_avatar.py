"""Avatar drawing: determinism, variety, boxes, which pixels the mouth and eyes may change."""

import numpy as np
import pytest

from tmrender.data import avatar as A
from tmrender.data import visemes as V


def renderer(seed=3, size=96):
    return A.AvatarRenderer(A.sample_appearance(np.random.default_rng(seed)), size)


def open_mouth():
    m = A.neutral_mouth()
    m[[V.JAW, V.CLOSE]] = 0.9, 0.0
    m[V.OPEN] = V.opening(m[V.JAW], m[V.CLOSE], m[V.TEETH])
    return m


def test_drawing_is_deterministic_and_seeds_differ():
    a = A.draw_avatar(7, 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, A.draw_avatar(7, 64))
    assert np.abs(a.astype(int) - A.draw_avatar(8, 64)).mean() > 10


def test_appearances_vary():
    looks = [A.sample_appearance(np.random.default_rng(s)) for s in range(60)]
    assert len({lk.hair_style for lk in looks}) >= 7 and len({lk.background for lk in looks}) >= 5
    darkness = [sum(lk.skin) for lk in looks]
    assert min(darkness) < 300 and max(darkness) > 600  # deep and light skin both occur


def test_opening_the_mouth_changes_only_the_lower_face():
    r = renderer()
    closed = r.draw(A.neutral_mouth(), A.neutral_pose())
    opened = r.draw(open_mouth(), A.neutral_pose())
    changed = np.abs(closed.pixels.astype(int) - opened.pixels).sum(axis=2) > 8
    ys, xs = np.nonzero(changed)
    assert ys.size > 20
    assert ys.min() >= min(closed.mouth_box[1], opened.mouth_box[1]) - 1  # nothing above the lips
    x0, _, x1, _ = closed.face_box
    assert xs.min() >= x0 - 2 and xs.max() <= x1 + 2
    # the dark mouth interior lies inside the mouth box
    mx0, my0, mx1, my1 = opened.mouth_box
    dark = (opened.pixels.astype(int).sum(axis=2) < 200) & changed
    dy, dx = np.nonzero(dark)
    assert dy.size > 0 and dx.min() >= mx0 and dx.max() < mx1 and dy.min() >= my0 and dy.max() < my1


def test_blinking_changes_only_the_eyes():
    r = renderer()
    pose = A.neutral_pose()
    still = r.draw(A.neutral_mouth(), pose).pixels
    pose[A.BLINK] = 1.0
    blink = r.draw(A.neutral_mouth(), pose)
    ys, _ = np.nonzero(np.abs(still.astype(int) - blink.pixels).sum(axis=2) > 8)
    assert ys.size > 0 and ys.max() < blink.mouth_box[1] - 5


@pytest.mark.parametrize("size", [48, 128, 300])
def test_any_size_and_boxes_inside_the_image(size):
    frame = renderer(size=size).draw(open_mouth(), A.neutral_pose())
    assert frame.pixels.shape == (size, size, 3)
    for x0, y0, x1, y1 in (frame.mouth_box, frame.face_box):
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
    fx0, fy0, fx1, fy1 = frame.face_box
    mx0, my0, mx1, my1 = frame.mouth_box
    assert fx0 <= mx0 and mx1 <= fx1 and fy0 <= my0 and my1 <= fy1 + 2


def test_motion_ranges_blinks_and_idle():
    rng = np.random.default_rng(0)
    n = 25 * 30
    audio = np.zeros(16000 * 30, np.float32)
    pose = A.motion_track(rng, audio, [(5.0, 1.0), (10.0, 1.0)], n)
    assert pose.shape == (n, len(A.POSE)) and np.isfinite(pose).all()
    assert pose[:, A.BLINK].min() == 0.0 and pose[:, A.BLINK].max() > 0.9
    onsets = np.flatnonzero((pose[1:, A.BLINK] > 0.5) & (pose[:-1, A.BLINK] <= 0.5))
    assert 4 <= onsets.size <= 16 and np.diff(onsets).min() >= 2.0 * 25 - 2
    assert np.abs(pose[:, A.ROLL]).max() < 0.1 and np.abs(pose[:, A.DX]).max() < 0.03
    assert np.abs(pose[:, A.DX]).max() > 0.001  # idle motion even in silence
    assert np.all((pose[:, A.BROW] >= 0) & (pose[:, A.BROW] <= 1))
    assert np.abs(np.diff(pose[:, A.ROLL])).max() < 0.01  # smooth
