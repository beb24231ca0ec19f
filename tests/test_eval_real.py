"""`tmrender eval` on a tracked real corpus (`tmrender.eval.real`): the landmark measure of
model-framed frames, the offset's sign, silence, pooling, and a run end to end on a tiny
prepared corpus (a drawn avatar speaking on a schedule, see tests/test_prepare_real.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import drawn_avatar, run_cli
from tests.test_prepare_real import avatar_frames, jaw_schedule, write_face_video
from tmrender.data import prepare
from tmrender.data.corpus import Clip
from tmrender.data.visemes import PARAMS
from tmrender.errors import UserInputError
from tmrender.eval import real
from tmrender.eval.options import EvalOptions
from tmrender.faces import measure

OPEN, WIDTH = PARAMS.index("open"), PARAMS.index("width")


def speaking_avatar(frames: int, side: int = 128) -> np.ndarray:
    """A model-framed drawn avatar (seed 6: its closed lips read as closed; seed 3 draws
    them dark, read as 0.2 open) whose jaw follows `jaw_schedule`: uint8 (T, S, S, 3)."""
    from tmrender.data import visemes
    from tmrender.data.avatar import AvatarRenderer, neutral_mouth, neutral_pose, sample_appearance

    renderer = AvatarRenderer(sample_appearance(np.random.default_rng(6)), side)
    out = []
    for jaw in jaw_schedule(frames):
        mouth = neutral_mouth().copy()
        mouth[visemes.JAW], mouth[visemes.CLOSE] = jaw, 0.0
        mouth[visemes.OPEN] = visemes.opening(mouth[visemes.JAW], 0.0, mouth[visemes.TEETH])
        out.append(renderer.draw(mouth, neutral_pose()).pixels)
    return np.stack(out)


def fake_clip(truth_open: np.ndarray, silence=()) -> Clip:
    """A clip of T grey 32 px frames whose landmark opening is `truth_open` (T,)."""
    n = len(truth_open)
    mouth = np.full((n, len(PARAMS)), np.nan, np.float32)
    mouth[:, OPEN], mouth[:, WIDTH] = truth_open, 0.8 + 0.1 * truth_open
    boxes = np.tile(np.array([[12, 20, 20, 26], [6, 6, 26, 28]], np.int32), (n, 1, 1))
    meta = {"id": "fake", "silence": [list(s) for s in silence], "mouth_truth": "landmarks"}
    frames = np.full((n, 32, 32, 3), 100, np.uint8)
    audio = np.zeros(n * 640, np.float32)
    return Clip(frames, audio, mouth, np.full((n, 7), np.nan, np.float32), boxes, meta)


# -- pieces ----------------------------------------------------------------------------------


def test_the_landmark_measure_reads_a_model_framed_mouth_without_detection():
    frames = speaking_avatar(24)
    opening = measure.framed_mouth(frames)[:, 0]
    assert np.corrcoef(opening, jaw_schedule(24))[0, 1] > 0.9
    assert opening.min() < 0.1 < opening.max()
    points = measure.framed_landmarks(drawn_avatar(128))
    lips = points[48:60].mean(axis=0)
    assert abs(lips[0] - 63.5) < 4 and abs(lips[1] - 0.601 * 128) < 6  # on the canonical mouth


def test_a_late_picture_gives_a_positive_offset_in_ms():
    """BT.1359's sign: + = the sound leads (the picture shows each opening late)."""
    rng = np.random.default_rng(0)
    truth = np.convolve(rng.random(120), np.ones(3) / 3, mode="same").astype(np.float32)
    clip = fake_clip(truth)
    late = np.concatenate([truth[:2], truth[:-2]])  # the picture 2 frames (80 ms) late
    read = np.stack([late, 0.8 + 0.1 * late], axis=1)
    row = real.real_clip_metrics(read, clip, clip.frames, EvalOptions())
    assert row["offset"] == 2 and row["offset_ms"] == 80
    assert row["sync_r"] < row["lag_r"][5 + 2] and row["lag_r"][5 + 2] > 0.99
    early = np.stack([np.concatenate([truth[3:], truth[-3:]])] * 2, axis=1)
    assert real.real_clip_metrics(early, clip, clip.frames, EvalOptions())["offset_ms"] == -120


def test_a_still_mouth_has_no_offset_and_a_flat_curve():
    clip = fake_clip(np.linspace(0, 0.3, 50, dtype=np.float32), silence=[(0, 20)])
    read = np.full((50, 2), 0.1, np.float32)
    row = real.real_clip_metrics(read, clip, clip.frames, EvalOptions())
    assert row["sync_r"] == 0.0 and row["offset"] is None and row["flat"] is True
    assert row["silence_open"] == pytest.approx(0.1)
    assert row["truth_silence_open"] == pytest.approx(np.linspace(0, 0.3, 50)[3:17].mean(), 1e-4)


def test_silence_mask_trims_the_runs():
    mask = real.silence_mask({"silence": [[0, 10], [20, 25], [40, 50]]}, 45, 3)
    assert np.flatnonzero(mask).tolist() == [3, 4, 5, 6, 43, 44]  # 20..25: too short


def test_pooled_figures_measure_movement_within_clips():
    rng = np.random.default_rng(1)
    truth = [rng.random(60).astype(np.float32) for _ in range(3)]
    # each clip read exactly, but at its own level: pooling raw values would mix levels in
    curves = [
        (np.stack([t + 5 * k, np.full_like(t, np.nan)], 1), np.stack([t] * 7, 1))
        for k, t in enumerate(truth)
    ]
    pooled = real.pooled_summary(curves, EvalOptions())
    assert pooled["sync_r_pooled"] == pytest.approx(1.0) and pooled["width_r_pooled"] is None
    assert pooled["offset_pooled_ms"] == 0 and len(pooled["lag_r_pooled"]) == 11


def test_a_split_mixing_real_and_synthetic_clips_is_refused(tmp_path):
    for name, meta in (("a", {"mouth_truth": "landmarks"}), ("b", {}), ("c", {})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(json.dumps(meta))
    assert real.is_real_corpus([tmp_path / "a"]) is True
    assert real.is_real_corpus([tmp_path / "b", tmp_path / "c"]) is False
    with pytest.raises(UserInputError, match="mixes"):
        real.is_real_corpus([tmp_path / "a", tmp_path / "b"])


# -- end to end (slow: prepare, a tm-mini render, the landmark measure) ----------------------


@pytest.fixture(scope="module")
def real_corpus(tmp_path_factory) -> Path:
    """A test split of one tracked clip (45 frames, mp4 as `prepare` stores by default)."""
    folder = tmp_path_factory.mktemp("real-videos")
    write_face_video(folder / "talker.mp4", avatar_frames())
    out = tmp_path_factory.mktemp("real-corpus")
    (result,) = prepare.prepare_corpus(folder, prepare.PrepareOptions(out=out, split="test"))
    assert result.error is None, result.error
    return out


@pytest.mark.slow
def test_eval_on_a_real_corpus_runs_end_to_end(real_corpus, checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["eval", "--data", str(real_corpus), "--out", str(out), "--baselines"]
    code, _, err = run_cli(capsys, *args, "--model", str(checkpoint))
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["truth"] == "landmarks" and report["reader"]["sha256"] is None
    sources = report["sources"]
    assert list(sources) == ["mini", "gt", "still", "loudness"]
    gt = sources["gt"]["summary"]
    assert gt["sync_r"] >= 0.99 and gt["sync_r_pooled"] >= 0.99 and gt["offset_ms"] == 0
    still = sources["still"]["clips"][0]["all"]
    assert still["sync_r"] == 0.0 and still["flat"] is True and still["offset_ms"] is None
    loud = sources["loudness"]["clips"][0]["all"]
    assert loud["width_r"] is None and loud["psnr"] == still["psnr"]
    model = sources["mini"]["clips"][0]["all"]
    assert model["sync_r"] is not None and len(model["lag_r"]) == 11
    assert (out / "offsets.png").stat().st_size > 10_000
    page = (out / "index.html").read_text()
    assert "BT.1359" in page and "offsets.png" in page
    assert "lip sync r, pooled" in err
