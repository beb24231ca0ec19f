"""The mouth reader: module contract, weight files, region cropping, and its training loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tmrender.data.corpus import ClipSpec, make_clip, write_clip
from tmrender.errors import UserInputError
from tmrender.eval.mouth import (
    DEFAULT_WEIGHTS,
    load_mouth_reader,
    mouth_regions,
    read_mouth,
    save_mouth_reader,
)
from tmrender.files import record_checksum, sha256_file
from tmrender.models.mouth_reader import MouthReader, MouthReaderConfig
from tmrender.train import mouth_reader as recipe

TINY = MouthReaderConfig(stem=4, channels=(8, 8), hidden=8)


def test_forward_shape_and_contract():
    model = MouthReader(TINY).eval()
    h, w = TINY.crop_size
    assert model(torch.zeros(2, 3, h, w)).shape == (2, 3)
    with pytest.raises(AssertionError, match="region"):
        model(torch.zeros(2, 3, h + 1, w))


def test_regions_resize_other_frame_sizes_and_pad_margins():
    frames = np.random.default_rng(0).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    h, w = TINY.crop_size
    assert mouth_regions(frames, TINY).shape == (3, 3, h, w)
    wide = MouthReaderConfig(crop=(0, 0, 64, 64))  # at the frame edge: margin is padded
    assert mouth_regions(frames[:, :128, :128], wide, margin=5).shape == (3, 3, 74, 74)


def test_weights_round_trip_in_fp16_and_checksum_file(tmp_path):
    torch.manual_seed(0)
    model = MouthReader(TINY).eval()
    path = tmp_path / "reader.safetensors"
    digest = save_mouth_reader(model, path, half=True)
    assert digest == sha256_file(path)
    loaded = load_mouth_reader(path)
    assert loaded.cfg == TINY
    frames = np.random.default_rng(1).integers(0, 256, (5, 128, 128, 3), dtype=np.uint8)
    a, b = read_mouth(model, frames), read_mouth(loaded, frames)
    assert a.shape == (5, 3) and np.abs(a - b).max() < 1e-2  # fp16 rounding only
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("abc  other.safetensors\n")
    record_checksum(sums, path, digest)
    record_checksum(sums, path, digest)  # idempotent: one line per file
    assert sums.read_text().splitlines() == ["abc  other.safetensors", f"{digest}  {path.name}"]


def test_loading_something_else_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_mouth_reader(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(UserInputError):
        load_mouth_reader(junk)


def test_a_reader_that_differs_from_its_checksum_line_is_refused(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "reader.safetensors"
    save_mouth_reader(MouthReader(TINY).eval(), path, half=True)
    record_checksum(tmp_path / "SHA256SUMS", path, "0" * 64)
    with pytest.raises(UserInputError, match="does not match its SHA-256"):
        load_mouth_reader(path)


def test_shipped_weights_match_their_checksum():
    sums = DEFAULT_WEIGHTS.parent / "SHA256SUMS"
    lines = dict(reversed(line.split("  ", 1)) for line in sums.read_text().splitlines())
    assert lines[DEFAULT_WEIGHTS.name] == sha256_file(DEFAULT_WEIGHTS)
    assert load_mouth_reader().cfg.outputs[:3] == ("open", "width", "round")


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """Three 1 s train clips (npy frames)."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        write_clip(make_clip(ClipSpec("train", 5, i, 1.0)), root / "train" / f"c{i}", "npy")
    return root


@pytest.mark.slow
def test_training_checkpoints_logs_plots_and_resumes(tiny_corpus, tmp_path):
    opts = recipe.TrainOptions(steps=4, batch=4, checkpoint_every=2, log_every=1, val_clips=1)
    recipe.train(tiny_corpus, tmp_path, opts, cfg=TINY)
    for name in ("checkpoint.pt", "log.jsonl", "loss.png"):
        assert (tmp_path / name).stat().st_size > 0
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "val" in r] == [2, 4]
    more = recipe.TrainOptions(steps=6, batch=4, checkpoint_every=2, log_every=1, val_clips=1)
    recipe.train(tiny_corpus, tmp_path, more, resume=True)
    _, state = recipe.load_training_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 6
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_resume_without_a_checkpoint_is_a_user_error(tiny_corpus, tmp_path):
    with pytest.raises(UserInputError, match="nothing to resume"):
        recipe.train(tiny_corpus, tmp_path, recipe.TrainOptions(steps=1), resume=True)


def test_augment_keeps_shape_and_varies():
    opts = recipe.TrainOptions()
    m = opts.margin
    h, w = TINY.crop_size
    regions = torch.randint(0, 256, (4, 3, h + 2 * m, w + 2 * m), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    a, b = recipe.augment(regions, TINY, opts, gen), recipe.augment(regions, TINY, opts, gen)
    assert a.shape == (4, 3, h, w) and not torch.allclose(a, b)
