"""`tmrender synth --textured / --textures-only` and `tmrender avatar --textured` from the
command line."""

import json

import pytest

from tmrender.cli import main


def run(*args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def test_synth_textured_and_texture_clips(tmp_path):
    base = ("synth", "--clips", "1", "--seconds", "0.4", "--size", "32", "--frames", "npy")
    assert run(*base, "--out", str(tmp_path / "t"), "--textured") == 0
    assert run(*base, "--out", str(tmp_path / "x"), "--textures-only") == 0
    meta = json.loads((tmp_path / "x" / "train" / "train-0-00000" / "meta.json").read_text())
    assert meta["kind"] == "textures"
    assert "texture" in json.loads(
        (tmp_path / "t" / "train" / "train-0-00000" / "meta.json").read_text()
    )


def test_synth_textured_options_exclude_each_other(tmp_path, capsys):
    args = ("synth", "--out", str(tmp_path), "--textured", "--textures-only")
    assert run(*args) == 2
    assert "choose one of --textured and --textures-only" in capsys.readouterr().err


def test_avatar_textured_differs_from_plain(tmp_path):
    plain, textured = tmp_path / "a.png", tmp_path / "b.png"
    assert run("avatar", "--seed", "4", "-o", str(plain), "--size", "64") == 0
    assert run("avatar", "--seed", "4", "-o", str(textured), "--size", "64", "--textured") == 0
    assert plain.read_bytes() != textured.read_bytes()
