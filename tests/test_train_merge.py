"""`tmrender train merge`: the base's config and networks plus the donor's named ones."""

import dataclasses

import pytest
import torch

from tests.tiny_model import tiny_model
from tmrender.cli import main
from tmrender.models.checkpoint import load_checkpoint, save_checkpoint


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    return stop.value.code


def _write(model, path, stage):
    save_checkpoint(model, path, trained=False, extra_meta={"stage": stage})
    return path


def test_merge_takes_only_the_named_networks(tmp_path):
    base = _write(tiny_model(seed=1), tmp_path / "vae.safetensors", "vae")
    donor = _write(tiny_model(seed=2), tmp_path / "audio.safetensors", "audio")
    out = tmp_path / "merged.safetensors"
    args = ["train", "merge", "--base", str(base), "--donor", str(donor)]
    assert run_cli(*args, "--take", "audio_encoder", "-o", str(out)) == 0
    merged, meta = load_checkpoint(out)
    base_model, donor_model = load_checkpoint(base)[0], load_checkpoint(donor)[0]
    for name, param in merged.state_dict().items():
        source = donor_model if name.startswith("audio_encoder.") else base_model
        assert torch.equal(param, source.state_dict()[name]), name
    assert meta["extra"]["stage"] == "vae" and meta["extra"]["donor_extra"]["stage"] == "audio"
    assert meta["extra"]["merged"]["networks"] == ["audio_encoder"]


def test_merge_refuses_unknown_networks_and_misfits(tmp_path, capsys):
    base = _write(tiny_model(seed=1), tmp_path / "a.safetensors", "vae")
    out = tmp_path / "m.safetensors"
    args = ["train", "merge", "--base", str(base), "--donor", str(base), "-o", str(out)]
    assert run_cli(*args, "--take", "wings") == 2
    assert "--take" in capsys.readouterr().err
    assert not out.exists()


def test_merge_takes_a_vae_only_with_the_same_config(tmp_path, capsys):
    base_model, donor_model = tiny_model(seed=1), tiny_model(seed=1)
    with torch.no_grad():  # a decoder fine-tune: other weights, the same latents
        for name, param in donor_model.vae.named_parameters():
            if name.startswith("dec_"):
                param.add_(0.01)
    base = _write(base_model, tmp_path / "student.safetensors", "dmd")
    donor = _write(donor_model, tmp_path / "vae.safetensors", "vae")
    out = tmp_path / "merged.safetensors"
    args = ["train", "merge", "--base", str(base), "--donor", str(donor), "-o", str(out)]
    assert run_cli(*args, "--take", "vae") == 0
    merged, _ = load_checkpoint(out)
    donor_vae = load_checkpoint(donor)[0].vae.state_dict()
    assert all(torch.equal(v, donor_vae[k]) for k, v in merged.vae.state_dict().items())
    other = tiny_model(seed=1)
    stats = dataclasses.replace(other.cfg.vae, latent_mean=(0.5,) * 4, latent_std=(2.0,) * 4)
    other.cfg = dataclasses.replace(other.cfg, vae=stats)
    odd = _write(other, tmp_path / "odd.safetensors", "vae")
    assert run_cli("train", "merge", "--base", str(base), "--donor", str(odd), "-o", str(out),
                   "--take", "vae") == 2  # fmt: skip
    assert "another VAE config (latent_mean, latent_std)" in capsys.readouterr().err
