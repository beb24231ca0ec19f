"""`tmrender speak`: text -> a 16 kHz mono WAV through eSpeak NG; bad input exits 2."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from tmrender.data.speech import named_voice, voice_names
from tmrender.errors import UserInputError

from .conftest import run_cli


def read_wav(path) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(path), "rb") as wav:
        params = wav.getparams()
        samples = np.frombuffer(wav.readframes(params.nframes), "<i2")
    return params, samples


def test_speak_writes_a_16khz_mono_wav_of_plausible_length(capsys, tmp_path):
    path = tmp_path / "hello.wav"
    text = "Hello there. This is a talking avatar."  # 7 words: about 2-4 s
    code, _, err = run_cli(capsys, "speak", text, "-o", str(path))
    assert code == 0, err
    params, samples = read_wav(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, 16_000)
    assert 1.5 < params.nframes / 16_000 < 5.0
    assert np.abs(samples).max() > 8_000  # scaled to a peak of 0.8
    assert [p.name for p in tmp_path.iterdir()] == ["hello.wav"]  # no temporary left over


def test_speak_is_repeatable_and_the_voice_and_seed_change_it(capsys, tmp_path):
    def spoken(name: str, *options: str) -> np.ndarray:
        assert (
            run_cli(capsys, "speak", "Good morning.", "-o", str(tmp_path / name), *options)[0] == 0
        )
        return read_wav(tmp_path / name)[1]

    first, again = spoken("a.wav"), spoken("b.wav")
    assert np.array_equal(first, again)
    other_voice = spoken("c.wav", "--voice", "en+f2")
    assert not np.array_equal(first, other_voice)
    assert named_voice("en", seed=3) != named_voice("en")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hi", "--voice", "klingon+m1"], "unknown voice 'klingon+m1'"),
        (["hi", "--voice", "en+nobody"], "unknown voice 'en+nobody'"),
        (["   "], "the text is empty"),
        (["hi", "-o", "missing-folder/x.wav"], "output folder does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    if "-o" not in args:
        args = [*args, "-o", "out.wav"]
    code, _, err = run_cli(capsys, "speak", *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.wav").exists()


def test_voice_names_cover_both_splits_and_all_parse():
    names = voice_names()
    assert "en+m3" in names and "fi+m6" in names
    assert all(named_voice(name).espeak_name == name for name in names)
    with pytest.raises(UserInputError):
        named_voice("")
