"""`tmrender train`: the commands load only when `train` runs, take their defaults from the
recipes' options dataclasses, accept `--device auto`, and refuse the options of removed
features and the old spellings of renamed ones."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import click
import pytest
import torch

from tmrender.cli import typer_command
from tmrender.train import audio, dmd, export, mouth_reader, ode, teacher, vae
from tmrender.train.loop import SCHEDULES, LoopOptions, load_training_networks

from .conftest import run_cli

STAGES = ("mouth-reader", "vae", "audio", "teacher", "ode", "dmd", "export", "merge")


def train_command(name: str) -> click.Command:
    root = typer_command()
    ctx = click.Context(root)
    return root.get_command(ctx, "train").get_command(ctx, name)


def test_the_cli_loads_the_training_stack_only_for_train():
    code = (
        "import sys, tmrender.cli; "
        "print([m for m in ('torch', 'tmrender.train.loop') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_every_train_command_is_listed_with_examples(capsys):
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0 and all(name in out for name in STAGES)
    for name in STAGES:
        code, out, _ = run_cli(capsys, "train", name, "--help")
        assert code == 0 and f"tmrender train {name} --" in out, name


@pytest.mark.parametrize(
    ("command", "options", "loop"),
    [
        ("mouth-reader", mouth_reader.TrainOptions(), None),
        ("vae", vae.VAEOptions(), "vae"),
        ("audio", audio.AudioOptions(), "audio"),
        ("teacher", teacher.TeacherOptions(), "teacher"),
        ("ode", ode.OdeOptions(), "ode"),
        ("dmd", dmd.DmdOptions(), "dmd"),
        ("export", export.ExportOptions(), None),
    ],
)
def test_command_defaults_are_the_recipes_defaults(command, options, loop):
    """One value per default: a Python caller with the dataclass gets the command's run."""
    defaults = {p.name: p.default for p in train_command(command).params}
    defaults["crop"] = defaults.get("crop_size")  # `train vae --crop-size` is VAEOptions.crop
    fields = {f.name for f in dataclasses.fields(options)}
    shared = sorted(fields & {k for k, v in defaults.items() if v is not None} - {"augment"})
    assert shared, command
    assert {k: defaults[k] for k in shared} == {k: getattr(options, k) for k in shared}
    if loop is not None:
        schedule = dataclasses.asdict(SCHEDULES[loop])
        assert {k: defaults[k] for k in schedule} == schedule
        shared_loop = ("max_minutes", "seed", "threads", "device")
        assert all(defaults[k] == getattr(LoopOptions(), k) for k in shared_loop)


@pytest.mark.parametrize(
    "args",
    [
        ["teacher", "--audio-heads", "h.safetensors"],
        ["ode", "--audio-heads", "h.safetensors"],
        ["ode", "--narrow-warmup", "10"],
        ["ode", "--face-mask"],
        ["dmd", "--face-mask"],
        ["vae", "--dec-blocks", "0,1"],
        ["vae", "--lookahead"],
        ["vae", "--crop", "64"],  # now --crop-size: --crop is a box x,y,w,h elsewhere
        ["export", "--deflicker", "1,2,1"],  # now --deflicker-taps: an on/off flag elsewhere
    ],
)
def test_removed_and_renamed_options_are_refused(capsys, args):
    code, _, err = run_cli(capsys, "train", *args)
    assert code == 2 and "No such option" in err and args[1] in err


@pytest.mark.slow
def test_teacher_trains_with_device_auto(tmp_path, tiny_corpus, tiny_init, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "run"
    code, text, err = run_cli(capsys, "train", "teacher", "--data", str(tiny_corpus), "--init",
                          str(tiny_init), "--out", str(out), "--device", "auto", "--steps", "1",
                          "--batch", "2", "--chunks", "2", "--val-clips", "1", "--threads",
                          "1", "--sample-every", "0")  # fmt: skip
    torch.set_num_threads(threads)
    assert code == 0, err
    assert json.loads(text[text.index("{") :])["step"] == 1
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["options"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "dit" in load_training_networks(out / "checkpoint.pt")
