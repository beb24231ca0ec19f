"""Frame sources for `tmrender eval`: what turns a test clip into frames to be measured.

A source is a callable `(clip) -> uint8 (T, H, W, 3)` that may use only the clip's first
frame and its audio (the ground-truth source excepted: it is the ceiling). Sources:

- `gt`        the true frames (a perfect model): every figure's ceiling;
- `still`     the first frame held: a mouth that never moves (lip-sync floor);
- `loudness`  the avatar redrawn with its mouth driven by the audio loudness alone and the
              head held still: a plausible cheat, since loud frames are mostly open vowels;
- a model     `render_frames` of tmrender.render.pipeline from the first frame and the audio.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tmrender.data import avatar, visemes
from tmrender.data.corpus import Clip
from tmrender.errors import UserInputError

FrameSource = Callable[[Clip], np.ndarray]
BASELINES = ("gt", "still", "loudness")

LOUD_SMOOTH_FRAMES = 3  # moving average of the loudness envelope
LOUD_REFERENCE_PERCENTILE = 90  # of voiced frames: this loudness opens the jaw fully
LOUD_VOICED_RMS = 0.01  # frame RMS (full scale 1) counted as voiced: about -40 dBFS


def truth_source(clip: Clip) -> np.ndarray:
    """The ground-truth frames themselves (T, H, W, 3)."""
    return clip.frames


def still_source(clip: Clip) -> np.ndarray:
    """The first frame repeated T times (T, H, W, 3) (a read-only broadcast view)."""
    return np.broadcast_to(clip.frames[:1], clip.frames.shape)


def loudness_mouth(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """Mouth parameters (T, 7) that follow the audio loudness only: jaw from the smoothed
    RMS envelope, lips closed where it is quiet, other columns at rest."""
    spf = visemes.SAMPLES_PER_FRAME
    padded = np.zeros(n_frames * spf, np.float32)
    padded[: min(audio.size, padded.size)] = audio[: padded.size]
    env = np.sqrt((padded.reshape(n_frames, spf) ** 2).mean(axis=1))
    kernel = np.ones(LOUD_SMOOTH_FRAMES) / LOUD_SMOOTH_FRAMES
    env = np.convolve(env, kernel, mode="same")
    voiced = env[env > LOUD_VOICED_RMS]
    reference = np.percentile(voiced, LOUD_REFERENCE_PERCENTILE) if voiced.size else 1.0
    level = np.clip((env - LOUD_VOICED_RMS) / max(reference - LOUD_VOICED_RMS, 1e-6), 0.0, 1.0)
    mouth = np.tile(avatar.neutral_mouth(), (n_frames, 1))
    mouth[:, visemes.JAW] = level
    mouth[:, visemes.CLOSE] = np.clip(1.0 - level / 0.15, 0.0, 1.0)
    mouth[:, visemes.OPEN] = visemes.opening(
        mouth[:, visemes.JAW], mouth[:, visemes.CLOSE], mouth[:, visemes.TEETH]
    )
    return mouth.astype(np.float32)


def appearance_of(clip: Clip) -> avatar.Appearance:
    """The clip's avatar appearance, rebuilt from its metadata."""
    raw = clip.meta["appearance"]
    return avatar.Appearance(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def loudness_source(clip: Clip) -> np.ndarray:
    """The clip's avatar redrawn with the loudness mouth and the first frame's head pose
    held (no blinks): (T, H, W, 3)."""
    n_frames, size = clip.frames.shape[0], clip.frames.shape[1]
    renderer = avatar.AvatarRenderer(appearance_of(clip), size)
    mouth = loudness_mouth(clip.audio, n_frames)
    pose = clip.pose[0].copy()
    pose[avatar.BLINK] = 0.0
    out = np.empty_like(clip.frames)
    for i in range(n_frames):
        out[i] = renderer.draw(mouth[i], pose).pixels
    return out


def model_source(model, options=None) -> FrameSource:
    """A source that renders with `model` (a TalkingModel) from the clip's first frame and
    its audio through `tmrender.render.pipeline.render_frames`."""
    from tmrender.media.audio import write_wav
    from tmrender.render.pipeline import render_frames

    def render(clip: Clip) -> np.ndarray:
        height, width = clip.frames.shape[1:3]
        if (model.cfg.height, model.cfg.width) != (height, width):
            raise UserInputError(
                f"the model renders {model.cfg.width}x{model.cfg.height} but the clips are "
                f"{width}x{height}; synthesize the corpus with --size {model.cfg.width}"
            )
        with tempfile.TemporaryDirectory(prefix="tmrender-eval-") as tmp:
            wav = Path(tmp) / "audio.wav"
            write_wav(wav, clip.audio)
            blocks = list(render_frames(model, clip.frames[0], wav, options))
        frames = np.concatenate(blocks) if blocks else np.zeros((0, height, width, 3), np.uint8)
        if len(frames) != len(clip.frames):
            raise RuntimeError(f"the renderer gave {len(frames)} frames for {len(clip.frames)}")
        return frames

    return render


def baseline_source(name: str) -> FrameSource:
    """The source of a baseline name in `BASELINES`."""
    table = {"gt": truth_source, "still": still_source, "loudness": loudness_source}
    if name not in table:
        raise UserInputError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return table[name]
