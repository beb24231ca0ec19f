"""The recipe on a VAE with a latent frame per 2 video frames (`temporal_stride` 2): the
teacher, ode and dmd stages run through the command line on its latents, and the student
they export renders the exact frame count. Tiny corpus, tiny model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tmrender.cli import main
from tmrender.media.audio import write_wav
from tmrender.models.checkpoint import load_checkpoint, save_checkpoint
from tmrender.models.talking import TalkingModel
from tmrender.render.pipeline import render_frames

from .conftest import tiny_model_config


def stride2_config():
    """tiny_model_config with 2 frames per latent: 4 latents per 8-frame chunk, 2 mask
    channels in the DiT's input."""
    cfg = tiny_model_config()
    return dataclasses.replace(
        cfg,
        chunk_latent_frames=4,
        vae=dataclasses.replace(cfg.vae, temporal_stride=2),
        dit=dataclasses.replace(cfg.dit, in_dim=2 * cfg.dit.out_dim + 2),
    )


def run(*args: str) -> None:
    threads = torch.get_num_threads()
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    torch.set_num_threads(threads)
    assert exit_info.value.code == 0


@pytest.mark.slow
def test_teacher_ode_and_dmd_run_on_stride_2_latents_and_the_student_renders(tmp_path, tiny_corpus):
    torch.manual_seed(0)
    init = tmp_path / "init.safetensors"
    save_checkpoint(TalkingModel(stride2_config()), init, trained=False)
    data, common = str(tiny_corpus), ["--val-clips", "1", "--threads", "1", "--batch", "2"]
    run("train", "teacher", "--data", data, "--init", str(init), "--out", str(tmp_path / "t"),
        "--steps", "2", "--chunks", "2", *common)  # fmt: skip
    teacher = tmp_path / "t" / "export.safetensors"
    run("train", "ode", "--data", data, "--init", str(teacher), "--out", str(tmp_path / "o"),
        "--cache", str(tmp_path / "t" / "latents.pt"), "--steps", "2", "--chunks", "2",
        "--pairs", "4", "--val-pairs", "2", "--teacher-steps", "2", *common)  # fmt: skip
    (tmp_path / "o" / "latents.pt").symlink_to(tmp_path / "t" / "latents.pt")
    run("train", "dmd", "--data", data, "--init", str(tmp_path / "o" / "export.safetensors"),
        "--teacher", str(teacher), "--ode-run", str(tmp_path / "o"), "--out",
        str(tmp_path / "d"), "--steps", "1", "--chunks", "2", "--critic-updates", "1",
        "--reg-batch", "2", *common)  # fmt: skip
    model, meta = load_checkpoint(tmp_path / "d" / "export.safetensors")
    assert model.cfg.vae.temporal_stride == 2 and meta["extra"]["stage"] == "dmd"
    audio = tmp_path / "a.wav"
    write_wav(audio, np.random.default_rng(0).normal(0, 0.1, 16000 + 3 * 640))
    face = np.full((model.cfg.height, model.cfg.width, 3), 128, np.uint8)
    frames = np.concatenate(list(render_frames(model.eval(), face, audio)))
    assert frames.shape == (28, model.cfg.height, model.cfg.width, 3)
