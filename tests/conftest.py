"""Shared fixtures: small media files made with the bundled ffmpeg and Pillow.

Files that several tests only read are session-scoped and live in one temporary folder;
tests that write files use their own `tmp_path`. Add new fixtures under a section heading.
"""

from __future__ import annotations

import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tmrender.media.audio import SAMPLE_RATE, write_wav
from tmrender.media.ffmpeg import run_ffmpeg

TONE_HZ = 440
TONE_AMPLITUDE = 0.125  # lavfi `sine` plays at 1/8 of full scale


# --- Media files (bundled ffmpeg) -----------------------------------------------------------


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """One folder for the session-scoped media files below."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def make_tone(media_dir) -> Callable[..., Path]:
    """Factory: `make_tone(name, *encode_args, seconds=1.5, rate=44100, channels=1)` writes a
    440 Hz sine of `seconds` seconds at `rate` Hz to `media_dir/name` (once per session)."""

    def make(
        name: str, *encode_args: str, seconds: float = 1.5, rate: int = 44_100, channels: int = 1
    ) -> Path:
        path = media_dir / name
        if not path.exists():
            source = f"sine=frequency={TONE_HZ}:sample_rate={rate}:duration={seconds}"
            run_ffmpeg(
                ["-f", "lavfi", "-i", source, "-ac", str(channels), *encode_args, "-y", str(path)],
                what=f"cannot make test tone {name}",
            )
        return path

    return make


@pytest.fixture(scope="session")
def video_with_audio(media_dir) -> Path:
    """1.5 s MP4: 64x64 H.264 test pattern at 25 fps with a 440 Hz AAC track at 44.1 kHz."""
    path = media_dir / "with-audio.mp4"
    # fmt: off
    run_ffmpeg(
        [
            "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=1.5",
            "-f", "lavfi", "-i", f"sine=frequency={TONE_HZ}:sample_rate=44100:duration=1.5",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
            "-y", str(path),
        ],
        what="cannot make the test video",
    )
    # fmt: on
    return path


@pytest.fixture(scope="session")
def video_without_audio(media_dir) -> Path:
    """1 s MP4 with an H.264 video stream and no audio stream."""
    path = media_dir / "no-audio.mp4"
    # fmt: off
    run_ffmpeg(
        [
            "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=1",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-y", str(path),
        ],
        what="cannot make the silent test video",
    )
    # fmt: on
    return path


# --- Special inputs ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def text_file(media_dir) -> Path:
    """A plain text file, for tests that hand it over as media."""
    path = media_dir / "notes.txt"
    path.write_text("these are notes, not audio\n" * 20)
    return path


@pytest.fixture(scope="session")
def empty_wav(media_dir) -> Path:
    """A valid 16-bit WAV header with no samples at all."""
    path = media_dir / "empty.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
    return path


@pytest.fixture(scope="session")
def silent_wav(media_dir) -> Path:
    """One second of digital silence at 16 kHz."""
    path = media_dir / "silent.wav"
    write_wav(path, np.zeros(SAMPLE_RATE, np.float32))
    return path


# --- Tiny model and corpus for the DiT training stages (teacher, ode, dmd) ------------------


def tiny_model_config():
    """A `ModelConfig` small enough for CPU unit tests: `tests.tiny_model.TINY` (32x32
    frames, 4 latent channels, a 2-layer DiT of width 32, a 1-layer Wav2Vec2 of width 16,
    chunks of 2 latent frames) with the default VAE blocks and guidance 2."""
    import dataclasses

    from tests.tiny_model import TINY
    from tmrender.config import SamplerConfig, VAEConfig

    vae = VAEConfig(latent_channels=4, enc_channels=(8, 8, 8), dec_channels=(8, 8, 8))
    dit = dataclasses.replace(TINY.dit, audio_attn_dim=8)
    return dataclasses.replace(TINY, vae=vae, dit=dit, sampler=SamplerConfig(cfg_scale=2.0))


def randomized_model(model, seed: int = 1):
    """A copy of a TalkingModel whose DiT and audio projection have random weights
    everywhere (a fresh DiT's zero head and zero audio output would hide bugs)."""
    import torch

    from tmrender.models.talking import TalkingModel

    out = TalkingModel(model.cfg)
    out.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*out.dit.parameters(), *out.audio_proj.parameters()]:
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return out.eval()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Three 2.4 s train clips at the tiny model's 32 px (npy frames), with speech and pauses."""
    from tmrender.data.corpus import generate_corpus

    root = tmp_path_factory.mktemp("tiny-corpus")
    generate_corpus(root, "train", clips=3, seconds=2.4, seed=2, size=32, frame_format="npy")
    return root


@pytest.fixture(scope="session")
def tiny_init(tmp_path_factory) -> Path:
    """A fresh `TalkingModel(tiny_model_config())` (seed 0) as a stage's `--init` file."""
    import torch

    from tmrender.models.checkpoint import save_checkpoint
    from tmrender.models.talking import TalkingModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-init") / "init.safetensors"
    save_checkpoint(TalkingModel(tiny_model_config()), path, trained=False)
    return path


# --- The command line and a model file ---------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `tmrender ARGS` in-process: (exit code, stdout, stderr)."""
    from tmrender.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A fresh tm-mini (random weights, seed 0) as a model file; read-only for the tests."""
    from tmrender.models.init import init_checkpoint

    path = tmp_path_factory.mktemp("model") / "mini.safetensors"
    init_checkpoint("tm-mini", path)
    return path


def drawn_avatar(side: int, seed: int = 3) -> np.ndarray:
    """A drawn avatar (side, side, 3) uint8 with a neutral mouth and pose: a model-framed
    portrait."""
    from tmrender.data.avatar import AvatarRenderer, neutral_mouth, neutral_pose, sample_appearance

    look = sample_appearance(np.random.default_rng(seed))
    return AvatarRenderer(look, side).draw(neutral_mouth(), neutral_pose()).pixels
