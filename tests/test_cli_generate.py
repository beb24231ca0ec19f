"""`tmrender init`, `info` and `generate` through the command line, in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tmrender.media.audio import write_wav
from tmrender.media.ffmpeg import count_video_frames

from .conftest import drawn_avatar, run_cli


@pytest.fixture
def inputs(tmp_path):
    image = tmp_path / "face.png"
    rgba = np.concatenate([drawn_avatar(128), np.full((128, 128, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(image)
    audio = tmp_path / "speech.wav"
    t = np.arange(16_000) / 16_000
    write_wav(audio, 0.3 * np.sin(2 * np.pi * 200 * t))
    return image, audio


def test_generate_writes_next_to_the_audio_and_warns_untrained(capsys, checkpoint, inputs):
    image, audio = inputs
    code, _, err = run_cli(
        capsys, "generate", "-i", str(image), "-a", str(audio), "-m", str(checkpoint)
    )
    assert code == 0, err
    assert "untrained" in err and "wrote" in err
    assert count_video_frames(audio.with_suffix(".mp4")) == 25


def test_generate_without_the_deflicker_filter(capsys, checkpoint, inputs, tmp_path):
    image, audio = inputs
    out = tmp_path / "raw.mp4"
    args = ["generate", "-i", str(image), "-a", str(audio), "-m", str(checkpoint), "-o", str(out)]
    code, _, err = run_cli(capsys, *args, "--no-deflicker")
    assert code == 0, err
    assert count_video_frames(out) == 25


def test_python_callers_get_the_command_line_video(capsys, checkpoint, inputs, tmp_path):
    from tmrender.media.video import iter_video_frames
    from tmrender.render.generate import GenerateOptions, prepare_generate

    image, audio = inputs
    cli, lib = tmp_path / "cli.mp4", tmp_path / "lib.mp4"
    code, _, err = run_cli(capsys, "generate", "-i", str(image), "-a", str(audio), "-m",
                       str(checkpoint), "-o", str(cli), "--seed", "3")  # fmt: skip
    assert code == 0, err
    warnings = []
    opts = GenerateOptions(image=image, audio=audio, output=lib, model=str(checkpoint), seed=3)
    job = prepare_generate(opts, on_warning=warnings.append)
    assert job.run().frames == 25 and any("untrained" in w for w in warnings)
    frames = [np.concatenate(list(iter_video_frames(p, 32))) for p in (cli, lib)]
    assert np.array_equal(*frames)


def test_generate_without_installed_model_says_so(capsys, inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("TMRENDER_WEIGHTS", str(tmp_path / "no-weights"))
    image, audio = inputs
    code, _, err = run_cli(capsys, "generate", "-i", str(image), "-a", str(audio))
    assert code == 2
    assert "no trained model is installed" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def text_file(folder):
    path = folder / "notes.txt"
    path.write_text("this is not media\n")
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i, a, t: ("-i", str(t / "missing.png")), "not found"),
        (lambda i, a, t: ("-a", str(i)), "has no audio stream"),
        (lambda i, a, t: ("-a", str(text_file(t))), "not a media file"),
        (lambda i, a, t: ("-i", str(text_file(t))), "not an image"),
        (lambda i, a, t: ("-o", str(t / "no" / "dir" / "x.mp4")), "does not exist"),
        (lambda i, a, t: ("--mode", "shouting"), "--mode"),
        (lambda i, a, t: ("--crop", "1,2,3"), "--crop"),
        (lambda i, a, t: ("--crf", "80"), "--crf"),
        (lambda i, a, t: ("-m", "nonexistent-model"), "unknown model"),
    ],
)
def test_generate_bad_input_is_one_line(capsys, checkpoint, inputs, tmp_path, change, message):
    image, audio = inputs
    args = {"-i": str(image), "-a": str(audio), "-m": str(checkpoint)}
    key, value = change(image, audio, tmp_path)
    args[key] = value
    flat = [x for pair in args.items() for x in pair]
    code, _, err = run_cli(capsys, "generate", *flat)
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.mp4")) and not list(tmp_path.rglob(".*"))


def test_info_describes_checkpoint(capsys, checkpoint):
    code, out, _ = run_cli(capsys, "info", str(checkpoint), "--json")
    assert code == 0
    facts = json.loads(out)
    assert facts["trained"] is False and facts["name"] == "tm-mini"
    assert len(facts["sha256"]) == 64 and facts["dtype"] == "F32"
    params = facts["parameters"]
    assert params["total"] == sum(
        params[k] for k in ("vae", "dit", "audio_encoder", "audio_proj", "silence")
    )


def test_info_preset_counts_without_weights(capsys):
    code, out, _ = run_cli(capsys, "info", "--preset", "wan2.1-1.3b-audio", "--json")
    assert code == 0
    assert json.loads(out)["parameters"]["dit.base"] == 1_419_119_680


def test_init_rejects_unknown_preset(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "init", "--preset", "huge", "-o", str(tmp_path / "x.safetensors")
    )
    assert code == 2 and "unknown preset" in err


def test_generate_on_two_devices_and_a_bad_devices_list(capsys, checkpoint, inputs, tmp_path):
    image, audio = inputs
    out = tmp_path / "two.mp4"
    args = ["generate", "-i", str(image), "-a", str(audio), "-m", str(checkpoint), "-o", str(out)]
    code, _, err = run_cli(capsys, *args, "--devices", "cpu,cpu")
    assert code == 0, err
    assert count_video_frames(out) == 25
    code, _, err = run_cli(capsys, *args, "--devices", "cuda:0")
    assert code == 2 and "--devices takes two devices" in err
