"""The CLI shell: --version and --help, user errors as one line with exit code 2, internal
errors as one line with exit code 1, tracebacks only with --debug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

import tmrender
import tmrender.cli
from tmrender.cli.app import State
from tmrender.eval import bench_io
from tmrender.media.audio import load_audio
from tmrender.media.image import load_image

from .conftest import run_cli


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    """`--debug` is stored on a class; one in-process run must not leak it into the next."""
    monkeypatch.setattr(State, "debug", False)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    assert "Traceback" not in text
    return lines[0]


# --- Version and help -----------------------------------------------------------------------


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0
    assert out.strip() == f"tmrender {tmrender.__version__}"


def test_help(capsys):
    code, out, err = run_cli(capsys, "--help")
    assert code == 0 and err == ""
    assert "Usage: tmrender" in out and "--version" in out and "bench" in out


def test_command_help_shows_examples(capsys):
    code, out, _ = run_cli(capsys, "bench", "--help")
    assert code == 0 and "--suite" in out and "tmrender bench --suite decode" in out


# --- User errors ----------------------------------------------------------------------------


def test_user_error_is_one_line_with_exit_code_2(capsys):
    code, out, err = run_cli(capsys, "bench", "--suite", "nope")
    assert code == 2 and out == ""
    assert one_line(err).startswith("error: unknown --suite 'nope'")


def test_user_error_in_a_real_process():
    proc = subprocess.run(
        [sys.executable, "-m", "tmrender", "bench", "--suite", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert one_line(proc.stderr).startswith("error: unknown --suite")


@pytest.mark.parametrize("args", [["no-such-command"], ["bench", "--no-such-option"]])
def test_usage_error_exits_2(capsys, args):
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "internal error" not in err and "Traceback" not in err


def fake_bench(error: BaseException):
    """A stand-in for `bench_io.bench_decode` that raises `error`."""

    def broken_bench(*args, **kwargs):
        raise error

    return broken_bench


@pytest.mark.parametrize(
    "error",
    [tmrender.errors.UserInputError("x" * 150), RuntimeError("the benchmark broke")],
    ids=["user", "internal"],
)
def test_long_errors_stay_one_line(capsys, monkeypatch, error):
    monkeypatch.setattr(bench_io, "bench_decode", fake_bench(error))
    _, _, err = run_cli(capsys, "bench", "--suite", "decode")
    one_line(err)


# --- Media errors through the CLI -----------------------------------------------------------

# A stand-in for the commands that read media: the errors are the library's, the shell main()'s.
media_app = typer.Typer()


@media_app.command()
def decode(audio: Path) -> None:
    load_audio(audio)


@media_app.command()
def portrait(image: Path) -> None:
    load_image(image, size=(16, 16))


@pytest.fixture
def media_cli(monkeypatch, tmp_path, media_dir, text_file, empty_wav, video_without_audio):
    """main() running `media_app` in a folder that holds the special inputs under short names,
    so that messages can be compared exactly."""
    monkeypatch.setattr(tmrender.cli, "typer_command", lambda: typer.main.get_command(media_app))
    monkeypatch.chdir(tmp_path)
    for name, source in [
        ("notes.txt", text_file),
        ("empty.wav", empty_wav),
        ("mute.mp4", video_without_audio),
    ]:
        (tmp_path / name).write_bytes(source.read_bytes())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["decode", "missing.wav"], "error: audio file not found: missing.wav"),
        (["decode", "notes.txt"], "error: notes.txt is not a media file ffmpeg can read"),
        (["decode", "mute.mp4"], "error: mute.mp4 has no audio stream"),
        (["decode", "empty.wav"], "error: audio file has zero length: empty.wav"),
        (["portrait", "missing.png"], "error: image file not found: missing.png"),
        (["portrait", "notes.txt"], "error: not an image that can be read: notes.txt"),
    ],
)
def test_media_errors_are_one_line(capsys, media_cli, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert one_line(err).startswith(message)


def test_silent_audio_is_not_an_error(capsys, media_cli, silent_wav):
    code, _, err = run_cli(capsys, "decode", str(silent_wav))
    assert code == 0 and err == ""


# --- Internal errors and interrupts ---------------------------------------------------------


def test_internal_error_exits_1_without_traceback(capsys, monkeypatch):
    monkeypatch.setattr(bench_io, "bench_decode", fake_bench(RuntimeError("the benchmark broke")))
    code, out, err = run_cli(capsys, "bench", "--suite", "decode")
    assert code == 1 and out == "" and "Traceback" not in err
    text = one_line(err)
    assert text.startswith("internal error: RuntimeError: the benchmark broke")
    assert "--debug" in text


def test_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setattr(bench_io, "bench_decode", fake_bench(RuntimeError("the benchmark broke")))
    code, _, err = run_cli(capsys, "--debug", "bench", "--suite", "decode")
    assert code == 1
    assert "Traceback" in err and "broken_bench" in err
    assert "RuntimeError: the benchmark broke" in err


def test_keyboard_interrupt_exits_130_without_traceback(capsys, monkeypatch):
    monkeypatch.setattr(bench_io, "bench_decode", fake_bench(KeyboardInterrupt()))
    code, out, err = run_cli(capsys, "bench", "--suite", "decode")
    assert code == 130 and out == "" and "Traceback" not in err
