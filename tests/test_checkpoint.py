"""Checkpoint: exact round trip, config in metadata, strict keys."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tmrender.errors import UserInputError
from tmrender.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from tmrender.models.presets import PRESETS
from tmrender.models.talking import TalkingModel


@pytest.fixture(scope="module")
def model() -> TalkingModel:
    torch.manual_seed(0)
    return TalkingModel(PRESETS["tm-mini"]).eval()


def test_round_trip_is_exact(model, tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, trained=False, extra_meta={"step": 7})
    loaded, meta = load_checkpoint(path)
    assert meta["config"] == model.cfg and meta["trained"] is False
    assert meta["extra"] == {"step": 7}
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    prefixes = {k.split(".")[0] for k in load_file(str(path))}
    assert prefixes == {"vae", "dit", "audio_encoder", "audio_proj", "silence"}
    half, _ = load_checkpoint(path, dtype=torch.float16)
    assert half.dit.patch_embedding.weight.dtype == torch.float16


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserInputError, match="not a safetensors"):
        load_checkpoint(junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(UserInputError, match="not a tmrender checkpoint"):
        read_metadata(other)
    with pytest.raises(UserInputError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_strict_keys_are_reported(model, tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, trained=True, extra_meta={})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    del tensors["dit.head.modulation"]
    tensors["dit.bogus"] = torch.zeros(1)
    tensors["silence.embedding"] = torch.zeros(3, 3)
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=meta)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(broken)
    text = str(err.value)
    assert "1 missing: dit.head.modulation" in text
    assert "1 unexpected: dit.bogus" in text
    assert "wrong shape: silence.embedding" in text


def test_saving_twice_gives_identical_bytes(model, tmp_path):
    """Exports are reproducible: same weights, same SHA-256 (one sorted metadata key)."""
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path in (first, second):
        save_checkpoint(model, path, trained=True, extra_meta={"b": 1, "a": [1, 2]})
    assert first.read_bytes() == second.read_bytes()
