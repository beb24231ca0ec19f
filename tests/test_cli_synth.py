"""`tmrender synth` and `tmrender avatar` from the command line: files, exit codes."""

import pytest
from PIL import Image

from tmrender.cli import main


def run(*args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def test_synth_writes_a_split(tmp_path):
    code = run(
        "synth",
        "--out",
        str(tmp_path),
        "--clips",
        "1",
        "--seconds",
        "1",
        "--size",
        "48",
        "--split",
        "test",
    )
    assert code == 0
    clip = tmp_path / "test" / "test-0-00000"
    assert {p.name for p in clip.iterdir()} >= {
        "frames.mp4",
        "audio.wav",
        "mouth.npy",
        "pose.npy",
        "boxes.npy",
        "meta.json",
    }


def test_synth_rejects_bad_options_in_one_line(tmp_path, capsys):
    assert run("synth", "--out", str(tmp_path), "--split", "dev") == 2
    assert "error: --split must be train or test" in capsys.readouterr().err


def test_avatar_writes_a_png(tmp_path):
    out = tmp_path / "face.png"
    assert run("avatar", "--seed", "4", "-o", str(out), "--size", "96") == 0
    assert Image.open(out).size == (96, 96)
    assert run("avatar", "-o", str(tmp_path / "missing" / "x.png")) == 2
