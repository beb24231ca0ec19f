"""`tmrender train vae` (tmrender.train.vae): batches, the mouth-weighted loss, the stage on
the one training loop (loss goes down, resume, max-minutes), the export with latent
statistics (load -> encode unit-scale -> render), and the CLI. Tiny corpus, tiny model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from tests.tiny_model import TINY as BASE
from tmrender.cli import main
from tmrender.data.corpus import generate_corpus
from tmrender.errors import UserInputError
from tmrender.media.audio import write_wav
from tmrender.models.checkpoint import load_checkpoint, read_metadata
from tmrender.render.pipeline import render_frames
from tmrender.train import vae as recipe
from tmrender.train.loop import LoopOptions, run_stage

SIZE = 48
TINY = dataclasses.replace(
    BASE,
    height=SIZE,
    width=SIZE,
    vae=dataclasses.replace(
        BASE.vae, enc_channels=(8, 8, 12), enc_blocks=(0, 0, 1), enc_latent_blocks=1,
        dec_latent_blocks=1, dec_channels=(12, 8, 8),
    ),
    dit=dataclasses.replace(BASE.dit, num_layers=1),
)  # fmt: skip
OPTS = recipe.VAEOptions(
    val_clips=1, val_frames=9, crop_batch=8, crop_frames=1, crop=24, clip_batch=2, clip_frames=5,
    clip_share=0.3, stats_clips=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three 1-s train clips and one test clip at 48 px (npy frames)."""
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, "train", clips=3, seconds=1.0, seed=3, size=SIZE, frame_format="npy")
    generate_corpus(root, "test", clips=1, seconds=1.0, seed=4, size=SIZE, frame_format="npy")
    return root


def loop_options(**kw) -> LoopOptions:
    base = dict(steps=20, lr=3e-3, warmup=2, log_every=2, val_every=10, checkpoint_every=10,
                threads=1)  # fmt: skip
    return LoopOptions(**{**base, **kw})


def stage(corpus, out, **kw) -> recipe.VAEStage:
    torch.manual_seed(0)
    return recipe.VAEStage(corpus, out, TINY, dataclasses.replace(OPTS, **kw))


# -- pure parts --------------------------------------------------------------------------------


def test_mouth_weight_map_marks_the_grown_box():
    boxes = torch.tensor([[[2, 3, 5, 4]]])  # x0, y0, x1, y1 (exclusive)
    w = recipe.mouth_weight_map(boxes, 8, 8, weight=4.0, margin=1)
    assert w.shape == (1, 1, 1, 8, 8)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:5, 1:6] = True
    assert torch.equal(w[0, 0, 0], torch.where(inside, 5.0, 1.0))


def test_reconstruction_loss_is_zero_on_truth_and_weights_the_mouth():
    target = torch.zeros(1, 3, 1, 4, 4)
    weight = torch.ones(1, 1, 1, 4, 4)
    weight[..., 0, 0] = 9.0
    loss, figures = recipe.reconstruction_loss(target, target, weight, mse_weight=1.0)
    assert loss.item() == 0 and float(figures["l1"]) == 0
    off_mouth, on_mouth = target.clone(), target.clone()
    off_mouth[..., 3, 3] = 0.5
    on_mouth[..., 0, 0] = 0.5
    loss_off = recipe.reconstruction_loss(off_mouth, target, weight, 1.0)[0]
    loss_on = recipe.reconstruction_loss(on_mouth, target, weight, 1.0)[0]
    assert loss_on.item() == pytest.approx(9 * loss_off.item())


def test_temporal_loss_sees_flicker_not_shared_change():
    target = torch.zeros(1, 3, 3, 4, 4)
    target[:, :, 1:] = 0.5  # the truth moves once
    weight = torch.ones(1, 1, 3, 4, 4)
    assert recipe.temporal_loss(target + 0.1, target, weight).item() == 0  # same changes
    flicker = target.clone()
    flicker[:, :, 2] += 0.2  # a change the truth does not have
    assert recipe.temporal_loss(flicker, target, weight).item() == pytest.approx(0.2 / 2)
    assert recipe.temporal_loss(target[:, :, :1], target[:, :, :1], weight[:, :, :1]) == 0


def test_batches_have_the_curriculum_shapes_and_mouth_crops(corpus, tmp_path):
    s = stage(corpus, tmp_path, mouth_crop_share=1.0)
    gen, cpu = torch.Generator().manual_seed(0), torch.device("cpu")
    s.updates(0)
    frames = s.batch(gen, cpu)
    assert frames["video"].shape == (8, 3, 1, 24, 24)
    assert frames["weight"].shape == (8, 1, 1, 24, 24)
    assert frames["video"].min() >= -1 and frames["video"].max() <= 1
    assert (frames["weight"] > 1).flatten(1).any(1).all()  # every crop shows the mouth
    s.updates(3)
    assert s.batch(gen, cpu)["video"].shape == (2, 3, 5, SIZE, SIZE)
    cropped = recipe.video_batch(s.cache, s.clip_starts, 3, 5, 16, s.opts, gen, cpu)
    assert cropped["video"].shape == (3, 3, 5, 16, 16)
    assert (cropped["weight"] > 1).flatten(1).any(1).all()
    assert s.cache.frames.dtype == torch.uint8 and (tmp_path / recipe.FRAME_CACHE).exists()
    on_clips = [s.on_clips(step) for step in range(20)]
    assert sum(on_clips) == 6 and not any(on_clips[:3]) and on_clips[3]


def test_cropped_clips_are_windows_of_consecutive_frames(corpus, tmp_path):
    s = stage(corpus, tmp_path, mouth_crop_share=0.5)
    gen = torch.Generator().manual_seed(1)
    batch = recipe.video_batch(s.cache, s.clip_starts, 6, 5, 24, s.opts, gen, torch.device("cpu"))
    pixels = ((batch["video"] + 1) * 127.5).round().to(torch.uint8)  # B, 3, T, c, c
    gen = torch.Generator().manual_seed(1)
    first = s.clip_starts[torch.randint(len(s.clip_starts), (6,), generator=gen)]
    for b in range(6):
        clip = s.cache.frames[first[b] : first[b] + 5].permute(1, 0, 2, 3)  # 3, T, H, W
        windows = clip.unfold(2, 24, 8).unfold(3, 24, 8)  # 3, T, ny, nx, 24, 24
        assert any(
            torch.equal(windows[:, :, y, x], pixels[b])
            for y in range(windows.shape[2])
            for x in range(windows.shape[3])
        )


def test_options_are_checked(corpus, tmp_path):
    with pytest.raises(UserInputError, match="clip-frames"):
        stage(corpus, tmp_path, clip_frames=6)
    with pytest.raises(UserInputError, match="multiples of 8"):
        stage(corpus, tmp_path, crop=20)
    with pytest.raises(UserInputError, match="px"):
        recipe.VAEStage(corpus, tmp_path, dataclasses.replace(TINY, height=64, width=64), OPTS)


# -- the stage on the loop ---------------------------------------------------------------------


@pytest.mark.slow
def test_training_lowers_the_loss_and_exports_a_normalised_vae(corpus, tmp_path):
    s = stage(corpus, tmp_path, clip_share=0.0)  # one phase: comparable losses
    result = run_stage(s, tmp_path, loop_options(steps=40, lr=1e-2), on_log=None)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])
    val = result["val"]
    assert {"psnr", "psnr_mouth", "reader_r", "reader_r_original", "motion_ratio"} <= set(val)
    assert val["frames"] == 9 and val["psnr"] > 10
    # export: a full checkpoint whose VAE carries its latent statistics
    path = tmp_path / "export.safetensors"
    meta = read_metadata(path)
    assert meta["trained"] is False and meta["extra"]["stage"] == "vae"
    assert meta["extra"]["vae_validation"] == val
    model, _ = load_checkpoint(path)
    cfg = model.cfg.vae
    assert len(cfg.latent_mean) == len(cfg.latent_std) == 4
    assert cfg.latent_mean == tuple(result["export"]["latent_mean"])
    torch.testing.assert_close(model.vae.state_dict(), s.vae.state_dict())
    frames = s.cache.frames[:9][None].permute(0, 2, 1, 3, 4).float() / 127.5 - 1
    with torch.no_grad():
        lat = model.vae.encode(frames)
        torch.testing.assert_close(model.vae.decode(lat), s.vae.decode(s.vae.encode(frames)))
    # on the windows the statistics came from, the normalised latents have mean 0, std 1
    mean, std = recipe.latent_statistics(model.vae, s.cache, range(2), 5, normalised=True)
    np.testing.assert_allclose(mean, 0.0, atol=1e-4)
    np.testing.assert_allclose(std, 1.0, atol=1e-4)


def test_exported_checkpoint_renders(corpus, tmp_path):
    run_stage(stage(corpus, tmp_path), tmp_path, loop_options(steps=2), on_log=None)
    model, _ = load_checkpoint(tmp_path / "export.safetensors")
    audio = tmp_path / "a.wav"
    write_wav(audio, np.zeros(16000, np.float32))
    face = np.full((SIZE, SIZE, 3), 128, np.uint8)
    frames = np.concatenate(list(render_frames(model, face, audio)))
    assert frames.shape == (25, SIZE, SIZE, 3)


@pytest.mark.slow
def test_resume_continues_bit_identically(corpus, tmp_path):
    full = stage(corpus, tmp_path / "full")
    run_stage(full, tmp_path / "full", loop_options(steps=12, checkpoint_every=6), on_log=None)
    half = stage(corpus, tmp_path / "cut")
    half.batch = _dies_at(half, step=7)
    with pytest.raises(KeyboardInterrupt):
        run_stage(half, tmp_path / "cut", loop_options(steps=12, checkpoint_every=6), on_log=None)
    resumed = stage(corpus, tmp_path / "cut")
    opts = loop_options(steps=12, checkpoint_every=6)
    run_stage(resumed, tmp_path / "cut", opts, resume=True, on_log=None)
    expected, found = full.vae.state_dict(), resumed.vae.state_dict()
    assert all(torch.equal(expected[k], found[k]) for k in expected)


def _dies_at(s: recipe.VAEStage, step: int):
    """A batch function that raises KeyboardInterrupt once the stage reaches `step`."""
    original = s.batch

    def batch(gen, device):
        if s.step >= step:
            raise KeyboardInterrupt
        return original(gen, device)

    return batch


@pytest.mark.slow
def test_max_minutes_stops_cleanly(corpus, tmp_path):
    s = stage(corpus, tmp_path)
    result = run_stage(s, tmp_path, loop_options(steps=50, max_minutes=1e-9), on_log=None)
    assert result["stopped_early"] and result["step"] == 1
    assert (tmp_path / "export.safetensors").exists() and (tmp_path / "checkpoint.pt").exists()


# -- command line ------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_trains_exports_and_reports_test_figures(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tmrender.models.presets.tm_mini_variant", lambda *args, **kw: TINY)
    out, export = tmp_path / "run", tmp_path / "stages" / "vae.safetensors"
    args = ["train", "vae", "--data", str(corpus), "--out", str(out), "--steps", "3",
            "--crop-batch", "2", "--crop-frames", "5", "--crop-size", "24", "--clip-batch", "1",
            "--clip-frames", "5", "--threads", "1", "--val-clips", "1",
            "--export", str(export)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    result = json.loads(text[text.index("{") :])
    assert result["step"] == 3 and result["test"]["split"] == "test"
    assert result["test"]["clips"] == 1 and result["test"]["frames"] == 25
    assert read_metadata(export)["config"].vae.latent_std


def test_cli_refuses_bad_options(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "vae", "--data", str(corpus), "--out", str(tmp_path), "--crop-size", "20"])
    assert exit_info.value.code == 2
    assert "multiples of 8" in capsys.readouterr().err


@pytest.mark.slow
def test_decoder_only_keeps_the_encoder_and_its_statistics(corpus, tmp_path):
    first = tmp_path / "first"
    run_stage(stage(corpus, first), first, loop_options(steps=4), on_log=None)
    start, _ = load_checkpoint(first / "export.safetensors")
    encoder = {k: v.clone() for k, v in start.vae.state_dict().items() if k.startswith("enc_")}
    decoder = {k: v.clone() for k, v in start.vae.state_dict().items() if k.startswith("dec_")}
    opts = dataclasses.replace(OPTS, decoder_only=True)
    second = tmp_path / "second"
    tuned = recipe.VAEStage(corpus, second, start.cfg, opts, vae=start.vae)
    assert all(n.startswith("dec_") for n, p in tuned.vae.named_parameters() if p.requires_grad)
    run_stage(tuned, second, loop_options(steps=6, lr=1e-2), on_log=None)
    model, _ = load_checkpoint(second / "export.safetensors")
    state = model.vae.state_dict()
    assert all(torch.equal(state[k], v) for k, v in encoder.items())
    assert any(not torch.equal(state[k], v) for k, v in decoder.items())
    assert model.cfg.vae.latent_mean == start.cfg.vae.latent_mean
    assert model.cfg.vae.latent_std == start.cfg.vae.latent_std


@pytest.mark.slow
def test_decoder_only_with_latent_noise_and_temporal_loss(corpus, tmp_path):
    first = tmp_path / "first"
    run_stage(stage(corpus, first), first, loop_options(steps=2), on_log=None)
    start, _ = load_checkpoint(first / "export.safetensors")
    opts = dataclasses.replace(OPTS, decoder_only=True, latent_noise=0.1, temporal_weight=1.0)
    tuned = recipe.VAEStage(corpus, tmp_path / "second", start.cfg, opts, vae=start.vae)
    gen = torch.Generator().manual_seed(0)
    tuned.updates(3)  # a step on whole clips: the time axis has 5 frames
    batch = tuned.batch(gen, torch.device("cpu"))
    latent = start.vae.encode(batch["video"])
    assert batch["latent_noise"].shape == latent.shape
    assert batch["latent_noise"].std().item() == pytest.approx(0.1, rel=0.3)
    loss, figures = tuned.loss("vae", batch)
    loss.backward()
    assert float(figures["temporal"]) > 0
    grads = {n: p.grad for n, p in tuned.vae.named_parameters()}
    assert all(g is None for n, g in grads.items() if n.startswith("enc_"))
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_latent_noise_needs_the_decoder_only(corpus, tmp_path):
    with pytest.raises(UserInputError, match="--decoder-only"):
        stage(corpus, tmp_path, latent_noise=0.1)


def test_cli_decoder_only_needs_a_trained_vae(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "vae", "--data", str(corpus), "--out", str(tmp_path), "--decoder-only"])
    assert exit_info.value.code == 2
    assert "--init" in capsys.readouterr().err
