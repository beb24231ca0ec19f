"""A tiny Wan2.1 I2V release converted with `tmrender convert` renders with `tmrender
generate` on the CPU (Wan VAE, CLIP features of the portrait, umT5 context of the prompt),
and `tmrender info` tells where each network came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tmrender.cli import main
from tmrender.media.audio import write_wav
from tmrender.media.ffmpeg import count_video_frames
from tmrender.models.checkpoint import load_checkpoint
from tmrender.render.pipeline import RenderOptions, render_frames

from .conftest import run_cli
from .tiny_wan import write_tiny_wan

SIZE = 32


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The tiny original-layout release converted through the command line."""
    root = tmp_path_factory.mktemp("wan")
    tiny = write_tiny_wan(root)
    path = root / "wan-tiny.safetensors"
    args = ["convert", "--wan", str(tiny["original"]), "--wav2vec2", str(tiny["wav2vec2"])]
    with pytest.raises(SystemExit) as done:
        main([*args, "--size", str(SIZE), "-o", str(path)])
    assert done.value.code == 0
    return path


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    image = tmp_path / "face.png"
    pixels = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    audio = tmp_path / "speech.wav"
    t = np.arange(16_000) / 16_000
    write_wav(audio, 0.3 * np.sin(2 * np.pi * 200 * t))
    return image, audio


@pytest.mark.slow
def test_converted_model_renders_with_generate_on_cpu(capsys, converted, inputs, tmp_path):
    image, audio = inputs
    out = tmp_path / "talk.mp4"
    args = ["-i", str(image), "-a", str(audio), "-m", str(converted), "-o", str(out)]
    args += ["--crop", "0,4,40,40"]  # a noise picture has no face to search for
    code, _, err = run_cli(capsys, "generate", *args, "--device", "cpu", "--prompt", "hello world")
    assert code == 0, err
    assert count_video_frames(out) == 25  # 1 s at 25 fps


def test_the_prompt_reaches_the_dit(converted):
    model, _ = load_checkpoint(converted)
    image = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    audio = np.zeros(8_000, np.float32)
    path = converted.parent / "half-second.wav"
    write_wav(path, audio)

    def frames(prompt: str) -> np.ndarray:
        blocks = render_frames(model, image, path, RenderOptions(prompt=prompt))
        return np.concatenate(list(blocks))

    a, again, b = frames("hello world"), frames("hello world"), frames("a person speaks")
    assert a.shape == (13, SIZE, SIZE, 3)
    assert np.array_equal(a, again) and not np.array_equal(a, b)


def test_info_tells_the_source_of_each_network(capsys, converted):
    code, out, _ = run_cli(capsys, "info", str(converted), "--json")
    assert code == 0
    facts = json.loads(out)
    assert facts["layout"] == "original" and facts["trained"] is False
    networks = facts["networks"]
    assert list(networks) == [
        "dit.base", "dit.audio", "vae", "image_encoder", "text_encoder", "audio_encoder",
        "audio_proj", "silence",
    ]  # fmt: skip
    for name in ("dit.base", "vae", "image_encoder", "text_encoder", "audio_encoder"):
        assert networks[name]["trained"] is True, name
        assert networks[name]["source_parameters"] == networks[name]["parameters"] > 0, name
    for name in ("dit.audio", "audio_proj", "silence"):
        assert networks[name]["trained"] is False and "source_parameters" not in networks[name]
    assert networks["text_encoder"]["dtype"] == "F32" and "U8" in facts["dtype"]
    code, _, table = run_cli(capsys, "info", str(converted))  # the table goes to stderr
    assert code == 0 and "image_encoder:" in table and "in the source" in table
