"""The dmd stage (tmrender.train.dmd) on a tiny corpus and a tiny model: the DMD gradient,
the student's generation against the ode stage's and the renderer's computations,
finite losses and a falling regression loss, exact resume, and export -> load -> render."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tmrender.data.corpus import generate_corpus
from tmrender.diffusion.stream import StreamPlan, student_rollout, teacher_forced_x0
from tmrender.media.audio import write_wav
from tmrender.models.checkpoint import load_checkpoint, save_checkpoint
from tmrender.render.pipeline import render_frames
from tmrender.train import dmd as recipe
from tmrender.train.loop import LoopOptions, load_training_networks, run_stage
from tmrender.train.windows import window_tokens

from .tiny_model import tiny_model

OPTS = recipe.DmdOptions(
    batch=2,
    chunks=2,
    val_clips=1,
    critic_updates=1,
    reg_batch=2,
    pairs=6,
    val_pairs=2,
    teacher_steps=2,
    pair_batch=6,
    sample_every=1,
)


class Interrupted(Exception):
    """Raised to simulate a run killed in the middle."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny corpus (3 clips of 2 s at 32 px), teacher and student files, and a run
    folder holding the latent cache and the teacher trajectories (as the ode stage's)."""
    root = tmp_path_factory.mktemp("dmd")
    generate_corpus(
        root / "data", "train", clips=3, seconds=2.0, seed=4, size=32, frame_format="npy"
    )
    save_checkpoint(tiny_model(1), root / "teacher.safetensors", True, {"stage": "teacher"})
    save_checkpoint(tiny_model(2), root / "ode.safetensors", True, {"stage": "ode"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    recipe.DmdStage(
        root / "data",
        root / "ode_run",
        root / "ode.safetensors",
        root / "teacher.safetensors",
        OPTS,
    )
    torch.set_num_threads(threads)
    return root


def make_stage(setup, opts=OPTS) -> recipe.DmdStage:
    return recipe.DmdStage(
        setup / "data",
        setup / "run",
        setup / "ode.safetensors",
        setup / "teacher.safetensors",
        opts,
        ode_run=setup / "ode_run",
    )


def loop(steps: int, **kw) -> LoopOptions:
    base = dict(
        steps=steps, lr=1e-3, warmup=1, checkpoint_every=2, log_every=1, val_every=0, threads=1
    )
    return LoopOptions(**{**base, **kw})


# -- pure functions ------------------------------------------------------------------------------


def test_dmd_loss_gradient_is_the_normalised_score_difference():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 2, 2, generator=gen).requires_grad_(True)
    x0_real, x0_fake = torch.randn(2, 2, 3, 4, 2, 2, generator=gen)
    weight = torch.ones(2, 1, 4, 1, 1)
    weight[:, :, :2] = 0  # the first two frames are real context, not the generator's
    loss, _ = recipe.dmd_loss(x0, x0_real, x0_fake, weight)
    loss.backward()
    norm = (x0 - x0_real).abs()[:, :, 2:].mean((1, 2, 3, 4)).view(-1, 1, 1, 1, 1).detach()
    expected = (x0_fake - x0_real) / norm / weight.expand_as(x0).sum()
    assert torch.allclose(x0.grad[:, :, 2:], expected[:, :, 2:], atol=1e-6)
    assert torch.count_nonzero(x0.grad[:, :, :2]) == 0
    # descent moves x0 along x0_real - x0_fake: towards the real score, away from the fake
    assert torch.all((x0.grad[:, :, 2:] * (x0_fake - x0_real)[:, :, 2:]) >= 0)


def test_real_frames_cover_the_prefix_chunks():
    mask = recipe.real_frames(torch.tensor([0, 1, 2]), chunks=3, chunk_frames=2)
    assert mask.shape == (3, 1, 6, 1, 1)
    assert mask[:, 0, :, 0, 0].int().tolist() == [
        [0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
    ]


def fixed_batch(stage: recipe.DmdStage, seed: int = 0, **plan) -> recipe.DmdBatch:
    """A batch of the stage's own drawing, its rollout plan changed by `plan`."""
    gen = torch.Generator().manual_seed(seed)
    batch = stage.batch(gen, torch.device("cpu"))
    return replace(batch, rollout=replace(batch.rollout, **plan))


@torch.no_grad()
def test_generation_with_real_context_is_the_ode_stages_teacher_forcing(setup):
    stage = make_stage(setup)
    s = stage.student
    batch = fixed_batch(stage, prefix=torch.tensor([OPTS.chunks] * OPTS.batch), exit_step=0)
    w = batch.windows
    tokens = window_tokens(s, w)
    x0, _ = recipe.generate_clips(
        s.dit, w.anchor, tokens, w.x0, batch.rollout, s.cfg.sampler, "refresh"
    )
    t = torch.ones(OPTS.batch)
    plan = StreamPlan.for_sampler(s.cfg.sampler, "refresh")
    expected = teacher_forced_x0(s.dit, plan, w.anchor, batch.rollout.noise, t, tokens, w.x0)
    torch.testing.assert_close(x0, expected)


@torch.no_grad()
def test_generation_without_real_context_is_the_renderers_rollout(setup):
    stage = make_stage(setup)
    s = stage.student
    last = len(s.cfg.sampler.student_sigmas) - 1
    batch = fixed_batch(stage, prefix=torch.zeros(OPTS.batch, dtype=torch.long), exit_step=last)
    w = batch.windows
    tokens = window_tokens(s, w)
    x0, clean = recipe.generate_clips(
        s.dit, w.anchor, tokens, w.x0, batch.rollout, s.cfg.sampler, "refresh"
    )
    plan = StreamPlan.for_sampler(s.cfg.sampler, "refresh")
    _, expected = student_rollout(s.dit, plan, w.anchor, tokens, batch.rollout.noise)
    torch.testing.assert_close(clean, expected)
    torch.testing.assert_close(x0, expected)


def test_only_the_exit_step_carries_gradient(setup):
    stage = make_stage(setup)
    s = stage.student
    batch = fixed_batch(stage, exit_step=0)
    w = batch.windows
    x0, clean = recipe.generate_clips(
        s.dit, w.anchor, window_tokens(s, w), w.x0, batch.rollout, s.cfg.sampler, "last_step"
    )
    assert x0.requires_grad and not clean.requires_grad
    assert not torch.equal(x0.detach(), clean)  # one step vs two


# -- the stage through the loop ------------------------------------------------------------------


@pytest.mark.slow
def test_losses_are_finite_and_the_regression_goes_down(setup, tmp_path):
    stage = make_stage(setup)
    probe = fixed_batch(stage, seed=99)
    with torch.no_grad():
        before = float(stage._regression(probe))
    result = run_stage(stage, tmp_path, loop(8, lr=3e-3), on_log=None)
    with torch.no_grad():
        after = float(stage._regression(probe))
    assert after < before
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if "val" not in r]
    for key in ("loss", "dmd_loss", "reg_loss", "dmd_grad", "critic_loss"):
        assert all(np.isfinite(r[key]) for r in train), key
    val = result["val"]
    assert {"reg_t0", "reg_t1", "rollout_err", "sync_r", "sync_r_teacher", "sync_gap"} <= set(val)
    assert all(np.isfinite(v) for v in val.values())
    assert (tmp_path / "loss.png").stat().st_size > 0


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(setup, tmp_path):
    straight = make_stage(setup)
    run_stage(straight, tmp_path / "a", loop(4), on_log=None)

    broken = make_stage(setup)
    calls = {"n": 0}
    real_batch = broken.batch

    def batch_then_die(gen, device):
        if calls["n"] == 2 * (OPTS.critic_updates + 1) + 1:  # inside step 3
            raise Interrupted
        calls["n"] += 1
        return real_batch(gen, device)

    broken.batch = batch_then_die
    with pytest.raises(Interrupted):
        run_stage(broken, tmp_path / "b", loop(4), on_log=None)
    run_stage(make_stage(setup), tmp_path / "b", loop(4), resume=True, on_log=None)

    a = load_training_networks(tmp_path / "a" / "checkpoint.pt")
    b = load_training_networks(tmp_path / "b" / "checkpoint.pt")
    for net in ("dit", "fake", "audio_proj"):
        for key, value in a[net].items():
            assert torch.equal(value, b[net][key]), f"{net}.{key}"


@pytest.mark.slow
@pytest.mark.parametrize("context", ["refresh", "last_step"])
def test_export_loads_and_renders(setup, tmp_path, context):
    opts = replace(OPTS, context=context)
    stage = make_stage(setup, opts)
    run_stage(stage, tmp_path, loop(1), on_log=None)
    model, meta = load_checkpoint(tmp_path / "export.safetensors")
    assert meta["trained"] and meta["extra"]["stage"] == "dmd"
    assert model.cfg.sampler.context == context
    assert torch.equal(model.dit.head.head.weight, stage.student.dit.head.head.weight)
    wav = tmp_path / "a.wav"
    t = np.arange(16_000) / 16_000
    write_wav(wav, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
    face = np.full((32, 32, 3), 120, np.uint8)
    frames = np.concatenate(list(render_frames(model, face, wav)))
    assert frames.shape == (25, 32, 32, 3)


def test_a_student_of_another_family_is_refused(setup, tmp_path):
    from tmrender.errors import UserInputError

    other = tiny_model(3)
    other.cfg = replace(other.cfg, name="other")
    save_checkpoint(other, tmp_path / "other.safetensors", True)
    with pytest.raises(UserInputError, match="different configs"):
        recipe.DmdStage(
            setup / "data",
            tmp_path / "run",
            tmp_path / "other.safetensors",
            setup / "teacher.safetensors",
            OPTS,
            ode_run=setup / "ode_run",
        )


@pytest.mark.slow
def test_the_command_line_trains_and_exports(setup, tmp_path):
    from tmrender.cli import main

    threads = torch.get_num_threads()
    args = [
        "train", "dmd", "--data", str(setup / "data"), "--init", str(setup / "ode.safetensors"),
        "--teacher", str(setup / "teacher.safetensors"), "--ode-run", str(setup / "ode_run"),
        "--out", str(tmp_path / "run"), "--steps", "1", "--batch", "2", "--chunks", "2",
        "--critic-updates", "1", "--reg-batch", "2", "--val-clips", "1", "--threads", "1",
        "--context", "last_step", "--export", str(tmp_path / "dmd.safetensors"),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    torch.set_num_threads(threads)
    assert exit_info.value.code == 0
    model, meta = load_checkpoint(tmp_path / "dmd.safetensors")
    assert model.cfg.sampler.context == "last_step"
    assert meta["extra"]["options"]["critic_updates"] == 1
