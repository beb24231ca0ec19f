"""The VAE stage's adversarial decoder (patch discriminator, hinge and feature-matching
losses), its extra data and its sharpness figure. Tiny corpus, tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.test_train_vae import _dies_at, corpus, loop_options, stage  # noqa: F401 (fixture)
from tmrender.data.corpus import generate_corpus
from tmrender.errors import UserInputError
from tmrender.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from tmrender.train import vae as recipe
from tmrender.train.loop import load_training_networks, run_stage

GAN = dict(gan_weight=0.1, fm_weight=1.0, gan_start=2, disc_width=8)


def test_discriminator_shapes_and_features():
    cfg = DiscriminatorConfig(width=8, stages=3)
    disc = PatchDiscriminator(cfg)
    logits, features = disc(torch.zeros(2, 3, 5, 48, 32))
    assert logits.shape == (2, 1, 5, 6, 4)
    assert [f.shape for f in features] == [
        (10, 8, 24, 16), (10, 16, 12, 8), (10, 32, 6, 4)
    ]  # fmt: skip
    assert cfg.channels == (8, 16, 32) and cfg.receptive_field == 38
    assert any("parametrizations" in k for k in disc.state_dict())  # spectral norm
    plain = PatchDiscriminator(DiscriminatorConfig(width=8, spectral=False))
    assert not any("parametrizations" in k for k in plain.state_dict())
    with pytest.raises(AssertionError, match="multiples of 8"):
        disc(torch.zeros(1, 3, 1, 20, 20))


def test_hinge_and_feature_matching_losses():
    sure = torch.tensor([2.0, 1.0])
    assert recipe.hinge_discriminator_loss(sure, -sure) == 0
    assert recipe.hinge_discriminator_loss(torch.zeros(3), torch.zeros(3)) == 2
    assert recipe.hinge_generator_loss(torch.tensor([1.0, 3.0])) == -2
    a = [torch.ones(2, 3), torch.zeros(4)]
    assert recipe.feature_matching_loss(a, a) == 0
    assert recipe.feature_matching_loss(a, [torch.zeros(2, 3), torch.zeros(4)]) == 0.5


def test_gan_options_are_checked(corpus, tmp_path):  # noqa: F811
    with pytest.raises(UserInputError, match="gan-weight"):
        stage(corpus, tmp_path, gan_weight=-1.0)
    with pytest.raises(UserInputError, match="multiples of 8"):
        recipe._check_options(recipe.VAEOptions(crop=20, gan_weight=0.1))


def test_the_discriminator_may_lead_its_losses(corpus, tmp_path):  # noqa: F811
    s = stage(corpus, tmp_path, **{**GAN, "gan_start": 3, "disc_lead": 2})
    assert [s.updates(k) for k in range(4)] == [["vae"]] + [["vae", "disc"]] * 3
    assert [s.adversarial(k) for k in range(4)] == [False, False, False, True]
    run_stage(s, tmp_path, loop_options(steps=3, log_every=1, val_every=0), on_log=None)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    second = [r for r in rows if r.get("step") == 2 and "loss" in r][0]
    assert "disc_loss" in second and "gan" not in second


def test_gan_off_by_default_keeps_one_network(corpus, tmp_path):  # noqa: F811
    s = stage(corpus, tmp_path)
    assert set(s.networks()) == {"vae"} and s.updates(0) == ["vae"]


@pytest.mark.slow
def test_gan_steps_train_the_discriminator_and_export_no_trace_of_it(corpus, tmp_path):  # noqa: F811
    s = stage(corpus, tmp_path, **GAN)
    assert set(s.networks()) == set(s.optimizers()) == {"vae", "disc"}
    assert s.updates(1) == ["vae"] and s.updates(2) == ["vae", "disc"]
    disc_before = {k: v.clone() for k, v in s.disc.state_dict().items()}
    result = run_stage(s, tmp_path, loop_options(steps=4, log_every=1), on_log=None)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert "disc_loss" not in train[0] and "gan" not in train[0]  # warm-up: no GAN
    assert {"disc_loss", "disc_real", "disc_fake", "gan", "fm"} <= set(train[-1])
    assert all(np.isfinite(r["loss"]) and np.isfinite(r.get("disc_loss", 0)) for r in train)
    assert any(not torch.equal(disc_before[k], v) for k, v in s.disc.state_dict().items())
    assert 0 < result["val"]["sharpness_ratio"] < 10
    # the discriminator is in the run checkpoint, not in the export
    assert set(load_training_networks(tmp_path / "checkpoint.pt")) == {"vae", "disc"}
    with safe_open(tmp_path / "export.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("disc") for k in keys)
    plain = tmp_path / "plain"
    run_stage(stage(corpus, plain), plain, loop_options(steps=1), on_log=None)
    with safe_open(plain / "export.safetensors", "pt") as f:
        assert sorted(f.keys()) == sorted(keys)


@pytest.mark.slow
def test_gan_resume_continues_bit_identically(corpus, tmp_path):  # noqa: F811
    opts = loop_options(steps=10, checkpoint_every=5)
    full = stage(corpus, tmp_path / "full", **GAN)
    run_stage(full, tmp_path / "full", opts, on_log=None)
    half = stage(corpus, tmp_path / "cut", **GAN)
    half.batch = _dies_at(half, step=7)
    with pytest.raises(KeyboardInterrupt):
        run_stage(half, tmp_path / "cut", opts, on_log=None)
    resumed = stage(corpus, tmp_path / "cut", **GAN)
    run_stage(resumed, tmp_path / "cut", opts, resume=True, on_log=None)
    for a, b in ((full.vae, resumed.vae), (full.disc, resumed.disc)):
        expected, found = a.state_dict(), b.state_dict()
        assert all(torch.equal(expected[k], found[k]) for k in expected)


def test_extra_data_joins_the_fit_clips_not_validation(corpus, tmp_path):  # noqa: F811
    extra = tmp_path / "textures"
    generate_corpus(
        extra, "train", clips=2, seconds=0.4, seed=1, size=48, frame_format="npy",
        kind="textures",
    )  # fmt: skip
    plain = stage(corpus, tmp_path / "plain")
    s = recipe.VAEStage(corpus, tmp_path / "run", plain.cfg, plain.opts, extra_data=(extra,))
    assert s.extra_clips == 2 and len(s.fit_clips) == len(plain.fit_clips) + 2
    assert s.cache.clips == plain.cache.clips + 2
    # validation: the same held-out frames as without extra data
    first, ours = plain.cache.clip(plain.val_clips[0]), s.cache.clip(s.val_clips[0])
    assert torch.equal(plain.cache.frames[first], s.cache.frames[ours])
    # texture clips have empty mouth boxes: no mouth weight
    weight = recipe.mouth_weight_map(s.cache.boxes[:1][None], 48, 48, 4.0, 2)
    assert torch.all(weight == 1)
