"""The latent cache and the teacher stage on a tiny corpus and a tiny model: cache layout and
staleness, windows and references, guided sampling, loss going down, resume, export ->
load -> render."""

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
from tmrender.diffusion.flow import sampling_timesteps
from tmrender.diffusion.samplers import sample_euler_cfg
from tmrender.media.audio import frames_for_samples, write_wav
from tmrender.models.checkpoint import load_checkpoint
from tmrender.models.talking import TalkingModel
from tmrender.render.pipeline import render_frames
from tmrender.train import latents as L
from tmrender.train import teacher as T
from tmrender.train import windows as W
from tmrender.train.loop import LoopOptions, run_stage

from .conftest import randomized_model, tiny_model_config

TINY = tiny_model_config()
SIZE = TINY.height
OPTS = T.TeacherOptions(
    batch=4, chunks=2, val_clips=1, val_windows=2, sample_windows=2, sample_steps=3
)


def loop_options(**kw) -> LoopOptions:
    base = dict(steps=8, lr=3e-3, warmup=2, log_every=2, val_every=4, checkpoint_every=4,
                threads=1)  # fmt: skip
    return LoopOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def corpus(tiny_corpus) -> Path:
    return tiny_corpus


@pytest.fixture(scope="module")
def init(tiny_init) -> Path:
    return tiny_init


@pytest.fixture(scope="module")
def model(init) -> TalkingModel:
    return load_checkpoint(init)[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, model, corpus) -> L.LatentCache:
    return L.load_or_build_cache(tmp_path_factory.mktemp("cache") / "latents.pt", model, corpus)


# ---- latent cache --------------------------------------------------------------------------


def test_cache_holds_every_latent_frame_with_its_conditioning(cache, model, corpus):
    clip = read_clip(list_clips(corpus, "train")[0])
    n_latent = 1 + (len(clip.frames) - 1) // 4
    assert cache.clips == 3 and int(cache.clip_start[1]) == n_latent
    h = SIZE // 8
    w_frames = 4 + 2 * TINY.audio_proj.window
    assert cache.latents.shape == (int(cache.clip_start[-1]), 4, h, h)
    assert cache.audio.shape[1:] == (w_frames, 1, 16)
    assert cache.refs.shape == (3, 8, 4, h, h) and cache.ref_frames.shape == (3, 8)
    # latents are the whole-clip encoding; a reference is its frame encoded alone
    with torch.no_grad():
        whole = L.encode_video(model, clip.frames[: 1 + (n_latent - 1) * 4])[0]
        first_ref = L.encode_video(model, clip.frames[cache.ref_frames[0, :1].numpy()][:, None])
    assert torch.allclose(cache.latents[:n_latent], whole.permute(1, 0, 2, 3), atol=1e-5)
    assert torch.allclose(cache.refs[0, 0], first_ref[0, :, 0], atol=1e-5)
    # per latent frame j >= 1: its video frames 4j-3..4j, opening and boxes from them
    j = 3
    frames = np.arange(4 * j - 3, 4 * j + 1)
    assert torch.allclose(cache.opening[j], torch.from_numpy(clip.mouth[frames, L.OPEN]))
    face = clip.boxes[frames, L.FACE]
    expected = [face[:, 0].min() // 8, face[:, 1].min() // 8, -(-face[:, 2].max() // 8),
                -(-face[:, 3].max() // 8)]  # fmt: skip
    assert cache.boxes[j, L.FACE].tolist() == expected
    assert cache.voiced.any() and not cache.voiced.all()


def test_audio_windows_follow_the_video_frames(cache, model, corpus):
    """Latent j's audio window holds the features of video frames 4j-3-w .. 4j+w: shifting
    the clip's audio by 4 frames shifts the windows by one latent frame."""
    clip = read_clip(list_clips(corpus, "train")[0])
    n_latent = int(cache.clip_start[1])
    spf = TINY.samples_per_frame
    with torch.no_grad():
        plain, _ = L.clip_audio_features(model, clip.audio, n_latent)
        late, _ = L.clip_audio_features(
            model, np.concatenate([np.zeros(4 * spf, np.float32), clip.audio]), n_latent + 1
        )
    assert torch.allclose(plain[1:], cache.audio[1:n_latent])
    # features depend a little on the encoder segments; the windows line up all the same
    err_aligned = (late[2:-1] - plain[1:-1]).abs().mean()
    err_off_by_one = (late[1:-2] - plain[1:-1]).abs().mean()
    assert err_aligned < 0.2 * err_off_by_one


def test_cache_is_reused_and_rebuilt_when_stale(tmp_path, model, corpus):
    path = tmp_path / "latents.pt"
    first = L.load_or_build_cache(path, model, corpus)
    stamp = path.stat().st_mtime_ns
    again = L.load_or_build_cache(path, model, corpus)
    assert path.stat().st_mtime_ns == stamp and again.key == first.key
    other = TalkingModel(TINY)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.vae.enc_out.bias.add_(0.5)  # the frozen VAE changed: stale
    rebuilt = L.load_or_build_cache(path, other, corpus)
    assert rebuilt.key != first.key and not torch.allclose(rebuilt.latents, first.latents)
    changed_dit = TalkingModel(TINY)
    changed_dit.load_state_dict(other.state_dict())
    with torch.no_grad():
        changed_dit.dit.head.head.bias.add_(1.0)  # the DiT does not matter to the cache
    assert L.cache_key(changed_dit, L.list_clips(corpus, "train"), 8) == rebuilt.key


def test_windows_take_references_from_other_moments(cache):
    train, held = L.split_clips(cache, 1)
    assert train == [0, 1] and held == [2]
    length = 4
    starts = L.window_starts(cache, train, length)
    gen = torch.Generator().manual_seed(0)
    w = L.sample_windows(cache, starts, 64, length, 2, 4, gen)
    clip = L.clip_of_frames(cache, w.starts)
    assert set(clip.tolist()) <= {0, 1}
    local = w.starts - cache.clip_start[clip]
    ref_frame = cache.ref_frames[clip, w.refs]
    first, last = (local - 1) * 4 + 1, (local + length - 1) * 4
    assert ((ref_frame < first) | (ref_frame > last)).all()
    assert w.latents.shape == (64, 4, 1 + length, 4, 4)
    assert torch.equal(w.anchor[:, :, 0], cache.refs[clip, w.refs])
    assert torch.equal(w.x0[5].permute(1, 0, 2, 3), cache.latents[w.starts[5] + torch.arange(4)])
    # speaking is decided per chunk of 2 latent frames, as the renderer does
    voiced = cache.voiced[w.starts[:, None] + torch.arange(length)]
    assert torch.equal(w.speaking[:, 0::2], voiced[:, 0::2] | voiced[:, 1::2])
    assert torch.equal(w.speaking[:, 0::2], w.speaking[:, 1::2])
    assert w.opening.shape == (64, 4 * length) and w.mouth.shape == (64, 1, length, 4, 4)


def test_box_masks():
    boxes = torch.tensor([[1, 0, 3, 2], [0, 0, 4, 4]])
    masks = L.box_masks(boxes, 4, 4)
    assert masks[0].tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert masks[1].sum() == 16


# ---- teacher pieces ------------------------------------------------------------------------


def test_dropped_audio_equals_no_audio_and_kept_audio_matters(cache, model):
    net = randomized_model(model)
    gen = torch.Generator().manual_seed(0)
    w = L.sample_windows(cache, L.window_starts(cache, [0, 1], 4), 3, 4, 2, 4, gen)
    batch = T.make_flow_batch(w, gen, 3.0, audio_drop=0.0)
    dropped = batch.windows.with_face(T.drop_audio(w.face, torch.tensor([True, False, True])))
    with torch.no_grad():
        tokens = W.window_tokens(net, w)
        x_t = (1 - batch.t.view(-1, 1, 1, 1, 1)) * w.x0 + batch.t.view(-1, 1, 1, 1, 1) * batch.eps
        v_drop = W.window_velocity(net.dit, w.anchor, x_t, batch.t, tokens, dropped.face)
        v_none = W.window_velocity(net.dit, w.anchor, x_t, batch.t, None, None)
        v_keep = W.window_velocity(net.dit, w.anchor, x_t, batch.t, tokens, w.face)
    assert torch.allclose(v_drop[[0, 2]], v_none[[0, 2]], atol=1e-5)
    assert not torch.allclose(v_drop[1], v_none[1], atol=1e-3)
    assert torch.allclose(v_drop[1], v_keep[1], atol=1e-5)


def test_guided_sampling_in_one_batch_equals_two_calls(cache, model):
    net = randomized_model(model)
    gen = torch.Generator().manual_seed(1)
    w = L.sample_windows(cache, L.window_starts(cache, [0, 1], 4), 2, 4, 2, 4, gen)
    noise = torch.randn(w.x0.shape, generator=gen)
    with torch.no_grad():
        x0, trajectory = W.sample_teacher(net, w, noise, steps=4, cfg_scale=2.0, record=[0.75])
        tokens = W.window_tokens(net, w)
        zeros = torch.zeros_like(w.face)

        def separate(x, t, conditional):
            face = w.face if conditional else zeros
            return W.window_velocity(net.dit, w.anchor, x, t, tokens, face)

        grid = sampling_timesteps(4, 3.0)  # 1, 0.9, 0.75, 0.5, 0
        reference = sample_euler_cfg(separate, noise, grid, 2.0)
        mid = sample_euler_cfg(separate, noise, grid[:3], 2.0)
    assert torch.allclose(x0, reference, atol=1e-4)
    assert torch.allclose(trajectory[0.75], mid, atol=1e-4)


def test_teacher_timesteps_insert_recorded_points():
    grid = W.teacher_timesteps(4, 3.0, [0.8, 0.75])
    assert grid[0] == 1.0 and grid[-1] == 0.0 and 0.8 in grid
    assert len(grid) == 6 and grid == sorted(grid, reverse=True)


# ---- the stage -----------------------------------------------------------------------------


@pytest.mark.slow
def test_loss_goes_down_and_export_renders(tmp_path, corpus, init):
    stage = T.TeacherStage(corpus, tmp_path, init, OPTS)
    fixed = stage.batch(torch.Generator().manual_seed(5), torch.device("cpu"))
    with torch.no_grad():
        before = float(stage.loss("main", fixed)[0])
    result = run_stage(stage, tmp_path, loop_options(steps=12), on_log=None)
    with torch.no_grad():
        after = float(stage.loss("main", fixed)[0])
    assert after < 0.8 * before
    assert {"loss", "mouth", "mouth_noaudio", "audio_gain", "sync_r"} <= set(result["val"])
    assert (tmp_path / "latents.pt").exists() and (tmp_path / "loss.png").exists()
    model, meta = load_checkpoint(tmp_path / "export.safetensors")
    assert meta["trained"] and meta["extra"]["stage"] == "teacher"
    trained = stage.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    clip = read_clip(list_clips(corpus, "train")[0])
    wav = tmp_path / "speech.wav"
    write_wav(wav, clip.audio[:16000])
    frames = np.concatenate(list(render_frames(model, clip.frames[0], wav)))
    assert frames.shape == (frames_for_samples(16000, 25), SIZE, SIZE, 3)


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path, corpus, init):
    opts = loop_options()
    run_stage(T.TeacherStage(corpus, tmp_path / "full", init, OPTS), tmp_path / "full", opts,
              on_log=None)  # fmt: skip
    killed = T.TeacherStage(corpus, tmp_path / "cut", init, OPTS)
    real_batch, calls = killed.batch, []

    def dying_batch(gen, device):
        if len(calls) == 6:  # after the checkpoint at step 4
            raise Interrupted
        calls.append(1)
        return real_batch(gen, device)

    killed.batch = dying_batch
    with pytest.raises(Interrupted):
        run_stage(killed, tmp_path / "cut", opts, on_log=None)
    resumed = T.TeacherStage(corpus, tmp_path / "cut", init, OPTS)
    run_stage(resumed, tmp_path / "cut", opts, resume=True, on_log=None)
    full = load_file(tmp_path / "full" / "export.safetensors")
    cut = load_file(tmp_path / "cut" / "export.safetensors")
    assert full.keys() == cut.keys()
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        OPTS.batch = 3  # type: ignore[misc]


@pytest.mark.slow
def test_cli_trains_and_exports(tmp_path, corpus, init, capsys):
    export = tmp_path / "stages" / "teacher.safetensors"
    args = ["train", "teacher", "--data", str(corpus), "--init", str(init), "--out",
            str(tmp_path / "run"), "--steps", "2", "--batch", "2", "--chunks", "2",
            "--val-clips", "1", "--threads", "1", "--export", str(export)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert json.loads(text[text.index("{") :])["step"] == 2
    assert load_checkpoint(export)[1]["extra"]["stage"] == "teacher"
    with pytest.raises(SystemExit) as exit_info:
        main([*args[:4], "--init", str(tmp_path / "missing.safetensors"), "--steps", "1"])
    assert exit_info.value.code == 2
