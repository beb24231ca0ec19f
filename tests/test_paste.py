"""Paste-back: a rendered aligned crop goes back into the picture where the face was, only
the face region changes, and the video has the picture's size.

The fixture is a drawn avatar enlarged 1.5x and pasted into a larger picture at a known
offset; the detector finds only some drawn avatars (docs/FACES.md), so it is aligned with
its known geometry (as in tests/test_faces_align.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tmrender.data.avatar import AvatarRenderer, neutral_mouth, neutral_pose, sample_appearance
from tmrender.faces.align import align, warp_from_crop, warp_to_crop
from tmrender.faces.landmarks import KeyPoints
from tmrender.render.paste import PasteBack, even_size, face_mask

SEED, SIDE, SCALE, OFFSET = 7, 256, 1.5, np.array([317, 141])
PICTURE = (901, 1101)  # odd on purpose: the video is even-rounded


def background(shape: tuple[int, int]) -> np.ndarray:
    """A smooth colour gradient with gentle waves (H, W, 3) uint8: H.264 keeps it well."""
    ys, xs = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    waves = 20 * np.sin(xs / 37.0) * np.cos(ys / 53.0)
    layers = [60 + 0.1 * xs + waves, 90 + 0.12 * ys - waves, 140 + 0.05 * (xs + ys)]
    return np.clip(np.stack(layers, axis=2), 0, 255).astype(np.uint8)


def pasted_avatar():
    """(picture (H, W, 3) uint8, the avatar's anchors there (3, 2), its face box x0, y0,
    x1, y1 in the picture's pixels)."""
    look = sample_appearance(np.random.default_rng(SEED))
    avatar = AvatarRenderer(look, SIDE).draw(neutral_mouth(), neutral_pose()).pixels
    big = background(PICTURE)
    side = round(SIDE * SCALE)
    enlarged = Image.fromarray(avatar).resize((side, side), Image.Resampling.BICUBIC)
    big[OFFSET[1] : OFFSET[1] + side, OFFSET[0] : OFFSET[0] + side] = enlarged
    eye_y = look.face_y - look.face_h * 0.04
    mouth_y = look.face_y + look.face_h * 0.56 - look.smile
    fractions = np.array([[0.5 - look.eye_gap, eye_y], [0.5 + look.eye_gap, eye_y], [0.5, mouth_y]])
    anchors = fractions * side - 0.5 + OFFSET
    centre = np.array([0.5, look.face_y]) * side + OFFSET
    half = np.array([look.face_w, look.face_h]) * side
    return big, anchors, np.concatenate([centre - half, centre + half])


def key_points(anchors: np.ndarray) -> KeyPoints:
    left, right, mouth = anchors
    half = np.array([10.0, 0.0])
    return KeyPoints(left, right, mouth, mouth - half, mouth + half, mouth, mouth)


def far_from_face(shape: tuple[int, int], box: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """(H, W) bool: pixels farther than `margin` of the face box's size from the box."""
    x0, y0, x1, y1 = box
    grow = margin * np.array([x1 - x0, y1 - y0])
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    inside_x = (xs >= x0 - grow[0]) & (xs <= x1 + grow[0])
    inside_y = (ys >= y0 - grow[1]) & (ys <= y1 + grow[1])
    return ~(inside_x & inside_y)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_even_size_and_mask_shape():
    assert even_size(901, 1101) == (900, 1100) and even_size(1, 3) == (2, 2)
    mask = face_mask(128)
    assert mask.shape == (128, 128) and mask.dtype == np.float32
    assert mask[70, 64] == pytest.approx(1.0) and mask[0, 0] == 0.0 and mask[127, 64] == 0.0


def test_paste_back_changes_only_the_face_and_lands_on_it():
    big, anchors, box = pasted_avatar()
    alignment = align(key_points(anchors), 128)
    reference = warp_to_crop(big, alignment)
    paste = PasteBack(big, alignment, reference)
    # 1. a frame unlike the picture: only the face region may change
    grey = np.full((2, 128, 128, 3), 128, np.uint8)
    out = paste(grey)
    assert out.shape == (2, 900, 1100, 3) and paste.size == (1100, 900)
    far = far_from_face((900, 1100), box)
    assert np.array_equal(out[0][far], big[:900, :1100][far])
    assert (out[0] != big[:900, :1100]).any(axis=2).sum() > 5000  # the face did change
    # 2. the reference itself comes back where it was taken from (within 1 px)
    back = PasteBack(big, alignment, reference)(reference[None])[0].astype(np.float64)
    x0, y0, x1, y1 = np.round(box + [20, 20, -20, -30]).astype(int)  # the inner face
    shift = phase_shift(big[y0:y1, x0:x1].mean(axis=2), back[y0:y1, x0:x1].mean(axis=2))
    assert np.abs(shift).max() < 1.0, shift
    assert np.abs(back[y0:y1, x0:x1] - big[y0:y1, x0:x1]).mean() < 6


def test_colour_matching_removes_a_tint():
    big, anchors, _ = pasted_avatar()
    alignment = align(key_points(anchors), 128)
    reference = warp_to_crop(big, alignment)
    paste = PasteBack(big, alignment, reference)
    tinted = np.clip(reference.astype(int) + [30, -20, 10], 0, 255).astype(np.uint8)
    paste(tinted[None])
    matched = np.clip(tinted * paste.gain + paste.bias, 0, 255)
    weight = face_mask(128) > 0.5
    assert np.abs(matched[weight].mean(0) - reference[weight].mean(0)).max() < 1.0


def phase_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The translation (dx, dy) that moves grey image b (H, W) onto a, to a tenth of a pixel."""
    cross = np.fft.fft2(a - a.mean()) * np.conj(np.fft.fft2(b - b.mean()))
    h, w = cross.shape
    ky, kx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    steps = np.arange(-20, 21) / 10
    grid = [(dx, dy) for dy in steps for dx in steps]
    values = [(cross * np.exp(2j * np.pi * (kx * dx + ky * dy))).sum().real for dx, dy in grid]
    return np.array(grid[int(np.argmax(values))])


def test_a_render_with_paste_back_keeps_the_picture(tmp_path):
    """tm-mini (untrained: noise in the face) for 1 s, pasted back, through H.264."""
    from tmrender.media.audio import write_wav
    from tmrender.media.video import iter_video_frames
    from tmrender.render.pipeline import RenderOptions, render_video

    net = tiny_model()
    big, anchors, box = pasted_avatar()
    alignment = align(key_points(anchors), net.cfg.height)
    reference = warp_to_crop(big, alignment)
    audio = tmp_path / "a.wav"
    write_wav(audio, 0.3 * np.sin(2 * np.pi * 200 * np.arange(16_000) / 16_000))
    out = tmp_path / "out.mp4"
    paste = PasteBack(big, alignment, reference)
    stats = render_video(net, reference, audio, out, RenderOptions(crf=12), paste=paste)
    frames = np.concatenate(list(iter_video_frames(out, 32)))
    assert stats.frames == 25 and frames.shape == (25, 900, 1100, 3)
    far = far_from_face((900, 1100), box)
    assert psnr(frames[12][far], big[:900, :1100][far]) >= 40.0


def tiny_model():
    """An untrained tm-mini on the CPU."""
    import torch

    from tmrender.models.init import build_random_model, preset_config

    return build_random_model(preset_config("tm-mini"), torch.device("cpu"), torch.float32)


def one_pass_paste(paste: PasteBack, frame: np.ndarray) -> np.ndarray:
    """The slow, plain paste in RGB (H, W, 3) uint8, as a reference: the colour-matched crop
    warped into the region in one bicubic affine warp (Pillow's), blended in floating point
    with the region's mask."""
    y, x = paste.region
    matched = np.clip(frame * paste.gain + paste.bias + 0.5, 0, 255).astype(np.uint8)
    warped, _ = warp_from_crop(matched, paste.alignment, (y.stop - y.start, x.stop - x.start))
    mask = paste._region_mask()[..., None]
    out = paste.image.copy()
    out[y, x] = np.clip(warped * mask + out[y, x] * (1.0 - mask) + 0.5, 0, 255).astype(np.uint8)
    return out


def test_planar_frames_are_the_paste_in_i420():
    """The YUV-domain paste against a plain RGB paste converted to I420: the picture's own
    planes wherever the mask is 0, and close to the plain paste inside it; `__call__`'s RGB
    frames are the same frames (up to RGB's gamut: a shared chroma sample at the mask's
    edge can ask for colours RGB clips)."""
    from tmrender.render.paste import i420_planes, rgb_to_yuv420

    big, anchors, _ = pasted_avatar()
    alignment = align(key_points(anchors), 128)
    reference = warp_to_crop(big, alignment)
    paste = PasteBack(big, alignment, reference)
    frames = np.stack([reference, np.full_like(reference, 90)])
    planar = paste.planar(frames)
    assert planar.shape == (2, 900 * 1100 * 3 // 2) and planar.dtype == np.uint8
    picture = rgb_to_yuv420(big[:900, :1100])
    for frame, i420 in zip(frames, planar, strict=True):
        want = rgb_to_yuv420(one_pass_paste(paste, frame))
        planes = zip(i420_planes(i420, (900, 1100)), want, picture, paste.parts, strict=True)
        for got, plain, own, part in planes:
            touched = np.zeros(got.shape, bool)
            touched[part.rows, part.cols] = part.mask > 0
            assert np.array_equal(got[~touched], own[~touched])
            assert psnr(got[part.rows, part.cols], plain[part.rows, part.cols]) >= 40.0
    y, x = paste.region
    inside = paste.parts[0].mask > 0
    for rgb, i420 in zip(paste(frames), planar, strict=True):
        assert np.array_equal(rgb[y, x][~inside], big[y, x][~inside])
        luma = rgb_to_yuv420(rgb[y, x])[0]
        error = np.abs(luma.astype(int) - paste.region_planes(i420)[0])[inside]
        assert np.mean(error <= 1) >= 0.99


def test_planar_into_an_earlier_block_is_a_fresh_paste():
    """`planar(out=)` writes only the region into a reused block: the same frames as new."""
    big, anchors, _ = pasted_avatar()
    alignment = align(key_points(anchors), 128)
    reference = warp_to_crop(big, alignment)
    paste = PasteBack(big, alignment, reference)
    first = paste.planar(np.stack([reference, np.full_like(reference, 30)]))
    second = np.stack([np.full_like(reference, 200), reference])
    fresh = paste.planar(second)
    reused = paste.planar(second, out=first)
    assert reused is first and np.array_equal(reused, fresh)


def test_i420_encodes_like_ffmpegs_own_conversion(tmp_path):
    """The same picture through VideoWriter as RGB (ffmpeg converts) and as our I420."""
    from tmrender.media.video import VideoWriter, iter_video_frames
    from tmrender.render.paste import rgb_to_yuv420

    picture = background((96, 160))
    picture[20:60, 30:90] = [200, 40, 90]  # a saturated patch: chroma at its edges
    i420 = np.concatenate([p.ravel() for p in rgb_to_yuv420(picture)])
    decoded = []
    for name, frames, planar in (("rgb", picture[None], False), ("i420", i420[None], True)):
        with VideoWriter(tmp_path / f"{name}.mp4", 160, 96, crf=0, planar=planar) as out:
            out.write(frames)
        decoded.append(next(iter(iter_video_frames(tmp_path / f"{name}.mp4")))[0])
    # lossless H.264 (crf 0): what is left is 4:2:0 chroma and rounding (44.7 dB, 43.2 dB
    # through ffmpeg's own conversion), no colour shift between the two
    assert psnr(decoded[1], picture) >= 42.0 and psnr(decoded[1], decoded[0]) >= 44.0
    shift = (decoded[1].astype(float) - decoded[0]).mean(axis=(0, 1))
    assert np.abs(shift).max() < 0.5
