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


def test_merge_takes_a_deeper_decoder_with_its_config(tmp_path, capsys):
    from tmrender.models.vae import CausalVAE

    base_model = tiny_model(seed=1)
    donor_model = tiny_model(seed=1)
    deeper = dataclasses.replace(donor_model.cfg.vae, dec_latent_blocks=1)
    donor_model.vae = CausalVAE(deeper)
    donor_model.cfg = dataclasses.replace(donor_model.cfg, vae=deeper)
    base = _write(base_model, tmp_path / "student.safetensors", "dmd")
    donor = _write(donor_model, tmp_path / "vae.safetensors", "vae")
    out = tmp_path / "merged.safetensors"
    args = ["train", "merge", "--base", str(base), "--donor", str(donor), "-o", str(out)]
    assert run_cli(*args, "--take", "vae") == 0
    merged, _ = load_checkpoint(out)
    assert merged.cfg.vae.dec_latent_blocks == 1 and merged.cfg.dit == base_model.cfg.dit
    assert merged.vae.state_dict().keys() == donor_model.vae.state_dict().keys()
    other = tiny_model(seed=1)
    stats = dataclasses.replace(other.cfg.vae, latent_mean=(0.5,) * 4, latent_std=(2.0,) * 4)
    other.cfg = dataclasses.replace(other.cfg, vae=stats)
    odd = _write(other, tmp_path / "odd.safetensors", "vae")
    assert run_cli("train", "merge", "--base", str(base), "--donor", str(odd), "-o", str(out),
                   "--take", "vae") == 2  # fmt: skip
    assert "other latents" in capsys.readouterr().err
