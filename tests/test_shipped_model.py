"""The real shipped file, `weights/tm-mini.safetensors`: it is listed in SHA256SUMS, loads
as a trained model, is the default of `generate`, and renders a 1-s clip with 25 frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tmrender.cli import main
from tmrender.files import sha256_file
from tmrender.media.audio import write_wav
from tmrender.media.ffmpeg import count_video_frames
from tmrender.models.registry import WEIGHTS_ENV, load_model, weights_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def repo_weights(monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)


def listed_sums() -> dict[str, str]:
    """name -> SHA-256 from weights/SHA256SUMS."""
    lines = (weights_dir() / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


def test_the_shipped_file_is_listed_with_its_checksum():
    path = weights_dir() / "tm-mini.safetensors"
    assert listed_sums()["tm-mini.safetensors"] == sha256_file(path)


def test_the_shipped_file_loads_as_a_trained_tm_mini():
    model, meta = load_model(None, "cpu")
    assert meta["trained"]
    assert (model.cfg.height, model.cfg.width) == (128, 128)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_generate_renders_one_second_with_the_shipped_model(tmp_path, capsys):
    audio = tmp_path / "one.wav"
    t = np.arange(16_000) / 16_000
    write_wav(audio, 0.3 * np.sin(2 * np.pi * 180 * t) * (t > 0.3))
    out = tmp_path / "one.mp4"
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "-i", str(EXAMPLES / "face.png"), "-a", str(audio), "-o", str(out),
              "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, err
    assert count_video_frames(out) == 25
