"""The ode stage on a tiny corpus and a tiny model: recorded teacher trajectories, the
student's teacher-forced computation against its own 2-step rollout, loss going down,
resume, export -> load -> render."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tmrender.cli import main
from tmrender.data.corpus import list_clips, read_clip
from tmrender.diffusion.stream import StreamPlan, student_rollout, teacher_forced_x0
from tmrender.media.audio import frames_for_samples, write_wav
from tmrender.models.checkpoint import load_checkpoint, save_checkpoint
from tmrender.models.talking import TalkingModel
from tmrender.render.pipeline import render_frames
from tmrender.train import latents as L
from tmrender.train import ode as O
from tmrender.train import windows as W
from tmrender.train.loop import LoopOptions, run_stage

from .conftest import randomized_model, tiny_model_config

TINY = tiny_model_config()
OPTS = O.OdeOptions(batch=4, chunks=2, val_clips=1, pairs=12, val_pairs=4, pair_batch=8,
                    teacher_steps=3)  # fmt: skip


def loop_options(**kw) -> LoopOptions:
    base = dict(steps=8, lr=3e-3, warmup=2, log_every=2, val_every=4, checkpoint_every=4,
                threads=1)  # fmt: skip
    return LoopOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, tiny_init) -> Path:
    """A 'teacher' export: the tiny model with a random DiT (so that samples move)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_checkpoint(randomized_model(load_checkpoint(tiny_init)[0]), path, trained=True)
    return path


@pytest.fixture(scope="module")
def teacher(teacher_file) -> TalkingModel:
    return load_checkpoint(teacher_file)[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, teacher, tiny_corpus) -> L.LatentCache:
    return L.load_or_build_cache(tmp_path_factory.mktemp("c") / "latents.pt", teacher, tiny_corpus)


def test_trajectories_record_the_teacher_ode(teacher, cache):
    gen = torch.Generator().manual_seed(0)
    pairs = O.sample_trajectories(teacher, cache, [0, 1], 5, 2, 3, 2, gen)
    assert pairs.noise.shape == (5, 4, 4, 4, 4) and pairs.x0.dtype == torch.float16
    sigma_mid = TINY.sampler.student_sigmas[1]
    w = L.gather_windows(cache, pairs.starts, pairs.refs, 4, 2)
    with torch.no_grad():
        x0, traj = W.sample_teacher(teacher, w, pairs.noise.float(), 3, record=[sigma_mid])
    assert torch.allclose(pairs.x0.float(), x0, atol=2e-2)
    assert torch.allclose(pairs.mid.float(), traj[sigma_mid], atol=2e-2)
    assert not torch.allclose(pairs.mid, pairs.noise, atol=1e-2)  # the teacher moved


def test_teacher_forced_step_matches_the_renderers_rollout(teacher, cache):
    """With the rollout's own outputs as context, two teacher-forced steps (noise at t = 1,
    then the deterministic re-noising the renderer does) give back the rollout."""
    dit, sampler = teacher.dit, TINY.sampler
    plan = StreamPlan.for_sampler(sampler)
    gen = torch.Generator().manual_seed(3)
    w = L.sample_windows(cache, L.window_starts(cache, [0, 1], 6), 2, 6, 2, 4, gen)
    tokens = W.window_tokens(teacher, w)
    noise = torch.randn(w.x0.shape, generator=gen)
    s1, s2 = sampler.student_sigmas
    ones = torch.ones(2)
    with torch.no_grad():
        _, rollout = student_rollout(dit, plan, w.anchor, tokens, noise)
        first = teacher_forced_x0(dit, plan, w.anchor, noise, s1 * ones, tokens, rollout)
        x_mid = (1 - s2) * first + s2 * noise
        second = teacher_forced_x0(dit, plan, w.anchor, x_mid, s2 * ones, tokens, rollout)
    assert torch.allclose(second, rollout, atol=1e-4)


def test_context_is_clean_and_causal(teacher, cache):
    """Chunk k sees the clean context chunk k-1, not the noisy input of chunk k-1, and no
    later chunk."""
    dit = teacher.dit
    gen = torch.Generator().manual_seed(4)
    w = L.sample_windows(cache, L.window_starts(cache, [0, 1], 6), 2, 6, 2, 4, gen)
    tokens = W.window_tokens(teacher, w)
    x = torch.randn(w.x0.shape, generator=gen)
    t = torch.full((2,), 0.75)
    plan = StreamPlan.for_sampler(TINY.sampler)

    def run(x, context):
        with torch.no_grad():
            return teacher_forced_x0(dit, plan, w.anchor, x, t, tokens, context)

    base = run(x, w.x0)
    noisy_first = x.clone()
    noisy_first[:, :, :2] += 1.0
    assert torch.allclose(run(noisy_first, w.x0)[:, :, 2:], base[:, :, 2:], atol=1e-5)
    later_context = w.x0.clone()
    later_context[:, :, 2:] += 1.0
    assert torch.allclose(run(x, later_context)[:, :, :4], base[:, :, :4], atol=1e-5)
    first_context = w.x0.clone()
    first_context[:, :, :2] += 1.0
    changed = run(x, first_context)
    assert torch.allclose(changed[:, :, :2], base[:, :, :2], atol=1e-5)
    assert not torch.allclose(changed[:, :, 2:4], base[:, :, 2:4], atol=1e-3)


@pytest.mark.slow
def test_loss_goes_down_and_export_renders(tmp_path, tiny_corpus, teacher_file):
    stage = O.OdeStage(tiny_corpus, tmp_path, teacher_file, OPTS)
    assert len(stage.train_pairs) == 12 and len(stage.val_pairs) == 4
    fixed = stage.batch(torch.Generator().manual_seed(5), torch.device("cpu"))
    with torch.no_grad():
        before = float(stage.loss("main", fixed)[0])
    result = run_stage(stage, tmp_path, loop_options(steps=12), on_log=None)
    with torch.no_grad():
        after = float(stage.loss("main", fixed)[0])
    assert after < 0.8 * before
    assert {"err_t0", "err_t1", "rollout_err", "sync_r", "sync_r_teacher"} <= set(result["val"])
    model, meta = load_checkpoint(tmp_path / "export.safetensors")
    assert meta["extra"]["stage"] == "ode"
    trained = stage.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    clip = read_clip(list_clips(tiny_corpus, "train")[0])
    wav = tmp_path / "speech.wav"
    write_wav(wav, clip.audio[:20000])
    frames = np.concatenate(list(render_frames(model, clip.frames[0], wav)))
    assert frames.shape == (frames_for_samples(20000, 25), 32, 32, 3)


def test_trajectories_are_sampled_once(tmp_path, tiny_corpus, teacher_file, teacher):
    O.OdeStage(tiny_corpus, tmp_path, teacher_file, OPTS)
    path = tmp_path / "trajectories.pt"
    stamp = path.stat().st_mtime_ns
    O.OdeStage(tiny_corpus, tmp_path, teacher_file, OPTS)
    assert path.stat().st_mtime_ns == stamp
    more = O.OdeStage(tiny_corpus, tmp_path, teacher_file, dataclasses.replace(OPTS, pairs=14))
    assert len(more.train_pairs) == 14 and path.stat().st_mtime_ns != stamp


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path, tiny_corpus, teacher_file):
    opts = loop_options()
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    run_stage(O.OdeStage(tiny_corpus, full_dir, teacher_file, OPTS), full_dir, opts, on_log=None)
    killed = O.OdeStage(tiny_corpus, cut_dir, teacher_file, OPTS)
    real_batch, calls = killed.batch, []

    def dying_batch(gen, device):
        if len(calls) == 6:  # after the checkpoint at step 4
            raise Interrupted
        calls.append(1)
        return real_batch(gen, device)

    killed.batch = dying_batch
    with pytest.raises(Interrupted):
        run_stage(killed, cut_dir, opts, on_log=None)
    resumed = O.OdeStage(tiny_corpus, cut_dir, teacher_file, OPTS)
    run_stage(resumed, cut_dir, opts, resume=True, on_log=None)
    full = load_file(full_dir / "export.safetensors")
    cut = load_file(cut_dir / "export.safetensors")
    assert all(torch.equal(full[k], cut[k]) for k in full)


@pytest.mark.slow
def test_cli_trains_and_exports(tmp_path, tiny_corpus, teacher_file, capsys):
    export = tmp_path / "ode.safetensors"
    args = ["train", "ode", "--data", str(tiny_corpus), "--init", str(teacher_file), "--out",
            str(tmp_path / "run"), "--steps", "2", "--batch", "2", "--chunks", "2",
            "--pairs", "4", "--val-pairs", "2", "--teacher-steps", "2", "--val-clips", "1",
            "--threads", "1", "--export", str(export)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert json.loads(text[text.index("{") :])["export"]["pairs"] == 4
    assert load_checkpoint(export)[1]["extra"]["stage"] == "ode"


def test_guidance_changes_the_trajectories_and_is_recorded(tmp_path, tiny_corpus, teacher_file):
    plain = O.OdeStage(tiny_corpus, tmp_path / "a", teacher_file, OPTS)
    guided_opts = dataclasses.replace(OPTS, cfg_scale=1.0)  # tiny config's own is 2.0
    guided = O.OdeStage(tiny_corpus, tmp_path / "b", teacher_file, guided_opts)
    assert torch.equal(plain.train_pairs.noise, guided.train_pairs.noise)
    assert not torch.equal(plain.train_pairs.x0, guided.train_pairs.x0)
    assert guided.model.cfg.sampler.cfg_scale == 1.0
    extra = guided.export(tmp_path / "b" / "out.safetensors")
    assert extra["cfg_scale"] == 1.0 and extra["student_start"] == "teacher"


def test_student_option_starts_from_another_students_dit(tmp_path, tiny_corpus, teacher_file):
    other = randomized_model(load_checkpoint(teacher_file)[0], seed=7)
    student_file = tmp_path / "student.safetensors"
    save_checkpoint(other, student_file, trained=True)
    opts = dataclasses.replace(OPTS, student=str(student_file))
    stage = O.OdeStage(tiny_corpus, tmp_path / "run", teacher_file, opts)
    plain = O.OdeStage(tiny_corpus, tmp_path / "run", teacher_file, OPTS)
    assert torch.equal(plain.train_pairs.x0, stage.train_pairs.x0)  # the teacher sampled them
    for name, value in other.dit.state_dict().items():
        assert torch.equal(stage.model.dit.state_dict()[name], value)


def test_student_with_another_vae_is_refused(tmp_path, tiny_corpus, teacher_file):
    other = randomized_model(load_checkpoint(teacher_file)[0], seed=7)
    with torch.no_grad():
        next(other.vae.parameters()).add_(1.0)
    student_file = tmp_path / "student.safetensors"
    save_checkpoint(other, student_file, trained=True)
    opts = dataclasses.replace(OPTS, student=str(student_file))
    with pytest.raises(Exception, match="another VAE"):
        O.OdeStage(tiny_corpus, tmp_path / "run", teacher_file, opts)


def test_mouth_params_in_the_config_match_the_corpus():
    from tmrender.config import MOUTH_PARAMS
    from tmrender.data.visemes import PARAMS

    assert len(PARAMS) == MOUTH_PARAMS
