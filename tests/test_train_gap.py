"""`tmrender eval --teacher`: the student and the teacher on the same windows."""

from __future__ import annotations

import pytest
import torch

from tmrender.errors import UserInputError
from tmrender.models.checkpoint import load_checkpoint
from tmrender.train.gap import GapOptions, teacher_gap
from tmrender.train.windows import load_reader

from .conftest import randomized_model

OPTS = GapOptions(windows=4, chunks=2, teacher_steps=2, refs_per_clip=2)


def models(tiny_init):
    base = load_checkpoint(tiny_init)[0]
    return randomized_model(base, seed=2), randomized_model(base, seed=1)


def test_gap_reads_both_on_the_same_windows(tmp_path, tiny_corpus, tiny_init):
    student, teacher = models(tiny_init)
    reader = load_reader("")
    cache = tmp_path / "latents.pt"
    first = teacher_gap(student, teacher, tiny_corpus, "train", cache, reader, OPTS)
    assert cache.exists()
    assert {"sync_r_vae", "sync_r_teacher", "sync_r_student", "gap"} <= set(first)
    assert all(-1 <= first[k] <= 1 for k in ("sync_r_vae", "sync_r_teacher", "sync_r_student"))
    assert first["gap"] == pytest.approx(
        first["sync_r_student"] - first["sync_r_teacher"], abs=2e-4
    )
    assert teacher_gap(student, teacher, tiny_corpus, "train", cache, reader, OPTS) == first
    swapped = teacher_gap(teacher, student, tiny_corpus, "train", cache, reader, OPTS)
    assert swapped["sync_r_vae"] == first["sync_r_vae"]  # same windows, same reconstructions
    assert swapped["sync_r_teacher"] != first["sync_r_teacher"]


def test_a_teacher_with_another_vae_is_refused(tmp_path, tiny_corpus, tiny_init):
    student, teacher = models(tiny_init)
    with torch.no_grad():
        next(teacher.vae.parameters()).add_(1.0)
    with pytest.raises(UserInputError, match="another VAE"):
        teacher_gap(student, teacher, tiny_corpus, "train", tmp_path / "c.pt", None, OPTS)


def test_eval_refuses_a_teacher_for_a_baseline(tmp_path, tiny_corpus, tiny_init, capsys):
    from tmrender.cli import main

    out = str(tmp_path / "out")
    args = ["eval", "--model", "gt", "--data", str(tiny_corpus), "--split", "train",
            "--clips", "1", "--out", out, "--teacher", str(tiny_init)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "not a baseline" in err and "Traceback" not in err


def test_a_teacher_with_another_decoder_only_is_accepted(tmp_path, tiny_corpus, tiny_init):
    student, teacher = models(tiny_init)
    with torch.no_grad():
        next(p for n, p in teacher.vae.named_parameters() if n.startswith("dec")).add_(1.0)
    reader = load_reader("")
    figures = teacher_gap(student, teacher, tiny_corpus, "train", tmp_path / "c.pt", reader, OPTS)
    assert figures["windows"] == OPTS.windows
