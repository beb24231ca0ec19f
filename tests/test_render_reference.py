"""Keeping the reference: still pixels show the portrait's own; moving ones and the mouth
show the portrait plus what the render moved away from its steady drawing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tmrender.config import ConfigError, SamplerConfig
from tmrender.render.reference import ReferenceKeeper, mouth_guard

LEVEL = 2 / 255  # one 0..255 level on the -1..1 scale
SIZE = 32


def frames_near(reference: np.ndarray, offsets_in_levels: list[float]) -> torch.Tensor:
    """Frames (1, 3, n, H, W): the reference shifted by each offset (in levels)."""
    base = torch.from_numpy(reference).permute(2, 0, 1).float() / 127.5 - 1.0
    return torch.stack([base + d * LEVEL for d in offsets_in_levels], dim=1)[None]


@pytest.fixture
def reference() -> np.ndarray:
    return np.random.default_rng(0).integers(40, 200, (SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture
def outside() -> torch.Tensor:
    """Pixels (H, W) bool that the mouth guard leaves alone."""
    return torch.from_numpy(mouth_guard(SIZE, SIZE) == 0)


@pytest.fixture
def inside() -> torch.Tensor:
    """Pixels (H, W) bool where the mouth guard shows every departure."""
    return torch.from_numpy(mouth_guard(SIZE, SIZE) == 1)


def test_the_guard_covers_the_mouth_of_the_models_framing_only():
    guard = mouth_guard(128, 128)
    assert guard[79, 64] == 1.0  # the lips (the mouth-corner midpoint is at y 0.60)
    assert guard[55, 52] == 0.0 and guard[20, 64] == 0.0  # an eye, the hair
    assert 0.03 < (guard > 0).mean() < 0.15


def test_close_pixels_take_the_reference_far_ones_stay_and_between_blend(
    reference, outside, inside
):
    keeper = ReferenceKeeper(reference, (8, 24), torch.device("cpu"))
    frames = frames_near(reference, [0, 5, 8, 16, 24, 40])
    out = keeper(frames)
    assert out.shape == frames.shape and out.dtype == torch.float32
    shift = ((out - frames[:, :, :1]) / LEVEL)[0].mean(dim=0)  # (n, H, W) levels
    # within lo: the reference; beyond hi: the frame as it was; halfway (16): half of it
    expected = torch.tensor([0, 0, 0, 8, 24, 40.0])
    assert torch.allclose(shift[:, outside].mean(dim=1), expected, atol=1e-3)
    # under the guard, the frames as they were
    assert inside.any()
    assert torch.allclose(out[..., inside], frames[..., inside])


def test_only_the_pixels_that_moved_keep_the_render(reference, outside):
    keeper = ReferenceKeeper(reference, (8, 24), torch.device("cpu"))
    frames = frames_near(reference, [3, 3])
    frames[:, :, 1, 2:6, 2:6] = 1.0  # white: >= 55 levels from the reference (<= 200)
    out = keeper(frames)
    moved = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    moved[2:6, 2:6] = True
    still = outside & ~moved
    assert torch.allclose(out[0, :, 1][:, moved], frames[0, :, 1][:, moved])
    exact = frames_near(reference, [0])[0, :, 0]
    assert torch.allclose(out[0, :, 1][:, still], exact[:, still])
    assert torch.allclose(out[0, :, 0][:, outside], exact[:, outside])


def test_no_frames_is_no_frames(reference):
    keeper = ReferenceKeeper(reference, (8, 24), torch.device("cpu"))
    assert keeper(torch.zeros(1, 3, 0, SIZE, SIZE)).shape == (1, 3, 0, SIZE, SIZE)


@pytest.mark.parametrize("levels", [(8,), (24, 8), (-1, 4), (8, 8), (1, 2, 3)])
def test_keep_reference_must_be_an_increasing_pair(levels):
    with pytest.raises(ConfigError):
        SamplerConfig(keep_reference=levels)
    assert SamplerConfig(keep_reference=[8, 24]).keep_reference == (8.0, 24.0)


def test_the_renderer_keeps_the_models_reference_and_raw_frames_skip_it(monkeypatch, tmp_path):
    from tests.test_render import collect, tone
    from tmrender.models.presets import PRESETS
    from tmrender.models.talking import TalkingModel

    torch.manual_seed(0)
    model = TalkingModel(PRESETS["tm-mini"]).eval()
    with torch.no_grad():
        model.dit.head.head.weight.normal_(0, 0.05)
    face = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    audio = tone(tmp_path / "a.wav", 0.5)
    plain = collect(model, face, audio)
    raw = collect(model, face, audio, deflicker=False)
    sampler = replace(model.cfg.sampler, keep_reference=(254.0, 255.0))
    monkeypatch.setattr(model, "cfg", replace(model.cfg, sampler=sampler))
    kept = collect(model, face, audio)
    assert np.array_equal(collect(model, face, audio, deflicker=False), raw)
    assert kept.shape == plain.shape
    # every pixel is within 254 levels of the model's still picture: outside the mouth
    # guard the video is the portrait, under the guard it moves as the render does
    guard = mouth_guard(128, 128)
    away, mouth = guard == 0, guard == 1
    assert not np.array_equal(plain[:, away], np.broadcast_to(face[away], plain[:, away].shape))
    assert np.abs(kept[:, away].astype(int) - face[away].astype(int)).max() <= 1
    # under the guard the render's motion shows
    assert np.abs(np.diff(plain[:, mouth].astype(int), axis=0)).max() > 2
    assert np.abs(np.diff(kept[:, mouth].astype(int), axis=0)).max() > 2


def test_motion_is_measured_against_the_models_still_picture(reference, outside):
    """A frame that equals the model's drawing of the still portrait (blurred, tinted)
    shows the portrait; one that departs from that drawing shows the portrait moved as
    much, so the model's own tint never shows."""
    exact = frames_near(reference, [0])
    still = exact + 30 * LEVEL  # the model's picture: 30 levels off the portrait everywhere
    keeper = ReferenceKeeper(reference, (8, 24), torch.device("cpu"), still=still)
    frames = torch.cat([still, still + 40 * LEVEL], dim=2)
    out = keeper(frames)
    assert torch.allclose(out[0, :, 0][:, outside], exact[0, :, 0][:, outside], atol=1e-6)
    assert torch.allclose(out[0, :, 1], exact[0, :, 0] + 40 * LEVEL, atol=1e-5)
    # against the portrait itself, the same still frame would have counted as moved
    plain = ReferenceKeeper(reference, (8, 24), torch.device("cpu"))
    assert torch.allclose(plain(still)[0, :, 0], still[0, :, 0], atol=1e-6)


def test_the_mouth_shows_the_portrait_plus_what_the_render_moved(reference, inside):
    """Under the guard every departure from the still picture shows, however small, but on
    the portrait's pixels: a mouth the model draws 6 levels darker than the portrait's
    shows the portrait's own mouth at rest, and 6 levels of opening on top of it."""
    exact = frames_near(reference, [0])
    still = exact - 6 * LEVEL
    keeper = ReferenceKeeper(reference, (8, 24), torch.device("cpu"), still=still)
    out = keeper(torch.cat([still, still - 6 * LEVEL], dim=2))
    assert torch.allclose(out[0, :, 0][:, inside], exact[0, :, 0][:, inside], atol=1e-5)
    assert torch.allclose(out[0, :, 1][:, inside], exact[0, :, 0][:, inside] - 6 * LEVEL, atol=1e-5)


def test_the_steady_drawing_follows_a_render_that_rests_off_the_still_picture(reference, outside):
    """The render settles 16 levels off the still picture (half-way between the keeping
    levels) and stays there: with no follow half of it shows for ever, with a follow of
    5 frames the keeper learns it as the model's steady drawing and shows the portrait."""
    exact = frames_near(reference, [0])
    frames = frames_near(reference, [16] * 60)
    fixed = ReferenceKeeper(reference, (8, 24), torch.device("cpu"))
    follows = ReferenceKeeper(reference, (8, 24), torch.device("cpu"), follow=5)
    first = exact[0, :, 0][:, outside]
    held = fixed(frames)[0][:, :, outside]
    learnt = torch.cat([follows(frames[:, :, i : i + 7]) for i in range(0, 60, 7)], 2)[0]
    learnt = learnt[:, :, outside]
    assert torch.allclose(held[:, -1], first + 8 * LEVEL, atol=1e-5)
    assert torch.allclose(learnt[:, -1], first, atol=0.2 * LEVEL)
    # it learns gradually, one call after the other: no jump in the first frames
    shift = ((learnt - first[:, None]) / LEVEL).mean(dim=(0, 2))
    assert shift[0] == pytest.approx(8, abs=1e-3)
    assert bool(torch.all(shift[1:] <= shift[:-1] + 1e-4))


def test_an_open_mouth_is_not_learnt_as_the_steady_drawing(reference, inside):
    """A mouth held open (30 levels off) for 40 frames stays fully open with a follow of
    5 frames: only pixels that rest are learnt."""
    frames = frames_near(reference, [0] * 40)
    frames[..., inside] -= 30 * LEVEL
    keeper = ReferenceKeeper(reference, (8, 24), torch.device("cpu"), follow=5)
    out = keeper(frames)
    assert torch.allclose(out[0, :, -1][:, inside], frames[0, :, -1][:, inside], atol=1e-5)


@pytest.mark.parametrize("follow", [-1.0, 0.5])
def test_keep_follow_is_off_or_at_least_a_frame(follow):
    with pytest.raises(ConfigError):
        SamplerConfig(keep_reference=(8, 24), keep_follow=follow)
    assert SamplerConfig(keep_reference=(8, 24), keep_follow=50).keep_follow == 50
