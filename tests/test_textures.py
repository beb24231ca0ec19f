"""Procedural textures, textured avatars and texture clips: deterministic, in range, and the
plain corpus untouched (hashes taken before the textures existed)."""

import hashlib
import json

import numpy as np
import pytest

from tmrender.data import avatar as A
from tmrender.data import corpus, textures

# sha256 of the plain drawings / of a plain clip, computed with the code before textures
PLAIN_DRAWINGS_SHA256 = "91514d77b4c7862f3f81698ef9a3cce556d1454e11f5059965ff3cba9dcf43b5"
PLAIN_CLIPS_SHA256 = {
    "train": "82622eec70c037c32619f3bd71128838115ae822fb278726937a4d777106c0e7",
    "test": "51d86f9c04ab4ddb506367f6cee85933bd9fc347c27ee4461d5dea2814527f8e",
}


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("kind", textures.TEXTURE_KINDS)
def test_textures_are_deterministic_per_seed_and_in_range(kind):
    a, b = textures.texture_image(rng(1), 48, kind), textures.texture_image(rng(1), 48, kind)
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, textures.texture_image(rng(2), 48, kind))
    assert a.std() > 3  # not flat
    rgb = textures.texture_rgb(rng(3), 32, kind)
    assert rgb.dtype == np.float32 and rgb.min() >= 0 and rgb.max() <= 1


def test_unknown_texture_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown texture kind"):
        textures.texture_rgb(rng(), 16, "plaid")


def test_fractal_noise_has_a_falling_spectrum():
    field = textures.fractal_noise(rng(4), 64, beta=2.0)
    assert field.min() == 0 and field.max() == 1
    power = np.abs(np.fft.fft2(field - field.mean())) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64)))
    low, high = power[(f > 0.02) & (f < 0.06)].mean(), power[(f > 0.2) & (f < 0.4)].mean()
    assert low > 30 * high


def test_dead_leaves_radii_follow_the_palette():
    grey = np.array([[0.2, 0.2, 0.2], [0.8, 0.8, 0.8]], np.float32)
    img = textures.dead_leaves(rng(5), 40, palette=grey)
    assert img.shape == (40, 40, 3) and img.min() >= 0 and img.max() <= 1
    assert len(np.unique(img[..., 0])) > 2  # shaded leaves of two greys


def test_gain_maps_and_lighting_are_centred_on_one():
    for choice in range(3):
        gain = textures.gain_map(rng(6), 64, 0.2, choice=choice)
        assert abs(gain.mean() - 1) < 0.01 and 0.6 - 1e-5 <= gain.min() <= gain.max() <= 1.4 + 1e-5
    light = textures.lighting(rng(7), 64, 0.3)
    assert light.min() > 0.6 and light.max() < 1.4
    cast = textures.colour_cast(rng(8), 0.1)
    assert cast.shape == (3,) and np.all(np.abs(cast - 1) <= 0.1)


def test_texture_frames_move_and_repeat():
    a, what = textures.texture_frames(rng(9), 6, 32, photo_share=0.0)
    b, _ = textures.texture_frames(rng(9), 6, 32, photo_share=0.0)
    assert a.shape == (6, 32, 32, 3) and np.array_equal(a, b)
    assert what["kind"] in textures.TEXTURE_KINDS
    assert np.abs(a[0].astype(int) - a[-1]).mean() > 0.5  # the camera moves
    assert (a.reshape(6, -1, 3).max(axis=1) > 0).all()  # no empty frame


@pytest.mark.skipif(not textures.package_photos(), reason="no package photo installed")
def test_package_photos_give_clips():
    frames, what = textures.texture_frames(rng(10), 3, 32, photo_share=1.0)
    assert what["kind"] == "photo" and frames.std() > 5


# -- avatars ---------------------------------------------------------------------------------


def test_plain_avatars_are_unchanged():
    h = hashlib.sha256()
    for seed in range(3):
        h.update(A.draw_avatar(seed, 64).tobytes())
    renderer = A.AvatarRenderer(A.sample_appearance(rng(5)), 64)
    mouth, pose = A.neutral_mouth(), A.neutral_pose()
    mouth[A.OPEN], pose[A.ROLL], pose[A.BLINK] = 0.8, 0.05, 0.5
    h.update(renderer.draw(mouth, pose).pixels.tobytes())
    assert h.hexdigest() == PLAIN_DRAWINGS_SHA256


def test_textured_avatar_keeps_the_boxes_and_differs_in_pixels():
    look = A.sample_appearance(rng(11))
    plain = A.AvatarRenderer(look, 64)
    textured = A.AvatarRenderer(look, 64, texture=A.texture_for_seed(11))
    mouth, pose = A.neutral_mouth(), A.neutral_pose()
    mouth[A.OPEN], pose[A.ROLL], pose[A.DX] = 0.7, 0.08, 0.02
    a, b = plain.draw(mouth, pose), textured.draw(mouth, pose)
    assert a.mouth_box == b.mouth_box and a.face_box == b.face_box
    assert np.abs(a.pixels.astype(int) - b.pixels).mean() > 5
    again = A.AvatarRenderer(look, 64, texture=A.texture_for_seed(11)).draw(mouth, pose)
    assert np.array_equal(b.pixels, again.pixels)


def test_draw_avatar_textured_option():
    a, b = A.draw_avatar(4, 48), A.draw_avatar(4, 48, textured=True)
    assert a.shape == b.shape and not np.array_equal(a, b)


# -- corpus ----------------------------------------------------------------------------------


def clip_sha256(clip):
    h = hashlib.sha256()
    for a in (clip.frames, clip.audio, clip.mouth, clip.pose, clip.boxes):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps(clip.meta, sort_keys=True).encode())
    return h.hexdigest()


@pytest.mark.parametrize("split", ["train", "test"])
def test_default_corpus_is_unchanged(split):
    clip = corpus.make_clip(corpus.ClipSpec(split, 3, 1, 1.0, 64))
    assert clip_sha256(clip) == PLAIN_CLIPS_SHA256[split]


def test_textured_clip_keeps_the_mouth_track_of_the_plain_one():
    plain = corpus.make_clip(corpus.ClipSpec("train", 2, 0, 1.0, 48))
    textured = corpus.make_clip(corpus.ClipSpec("train", 2, 0, 1.0, 48, "textured"))
    for name in ("audio", "mouth", "pose", "boxes"):
        assert np.array_equal(getattr(plain, name), getattr(textured, name)), name
    assert plain.meta["appearance"] == textured.meta["appearance"]
    assert "texture" in textured.meta and "texture" not in plain.meta
    assert not np.array_equal(plain.frames, textured.frames)


def test_texture_clips_are_silent_and_mouthless(tmp_path):
    index = corpus.generate_corpus(
        tmp_path, "train", clips=2, seconds=0.4, seed=1, size=32, frame_format="npy",
        kind="textures",
    )  # fmt: skip
    rows = json.loads(index.read_text())
    assert [r["id"] for r in rows] == ["train-1-00000", "train-1-00001"]
    clip = corpus.read_clip(tmp_path / "train" / "train-1-00000")
    assert clip.frames.shape == (10, 32, 32, 3) and clip.meta["kind"] == "textures"
    assert not clip.audio.any() and not clip.mouth.any() and not clip.boxes.any()


def test_unknown_kind_is_a_user_error(tmp_path):
    from tmrender.errors import UserInputError

    with pytest.raises(UserInputError, match="kind"):
        corpus.generate_corpus(tmp_path, "train", clips=1, seconds=1, kind="cartoon")


def test_clips_shorter_than_the_activity_kernel():
    clip = corpus.make_clip(corpus.ClipSpec("train", 0, 0, 0.4, 32))  # 10 frames
    assert clip.frames.shape[0] == clip.pose.shape[0] == 10
