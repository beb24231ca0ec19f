"""`tmrender train mouth-reader`: the run folder's reader for `--test-only`, and the shipped
file `--export` writes (fp16 only where it reads as fp32 does, its SHA256SUMS line)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from tmrender.cli import main
from tmrender.data.corpus import ClipSpec, make_clip, write_clip
from tmrender.errors import UserInputError
from tmrender.eval.mouth import META_KEY, load_mouth_reader
from tmrender.files import sha256_file
from tmrender.models.mouth_reader import MouthReaderConfig
from tmrender.train import mouth_reader as recipe

TINY = MouthReaderConfig(stem=4, channels=(8, 8), hidden=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step run of the tiny reader on 3 train clips of 1 s; a test split of 1 clip."""
    root = tmp_path_factory.mktemp("reader")
    for split, clips in (("train", 3), ("test", 1)):
        for i in range(clips):
            clip = make_clip(ClipSpec(split, 5, i, 1.0))
            write_clip(clip, root / "data" / split / f"c{i}", "npy")
    opts = recipe.TrainOptions(steps=2, batch=4, checkpoint_every=2, log_every=1, val_clips=1)
    model = recipe.train(root / "data", root / "run", opts, cfg=TINY)
    return root, model


@pytest.mark.slow
def test_run_model_is_the_checkpoint_s_reader(run, tmp_path):
    root, model = run
    loaded = recipe.run_model(root / "run")
    assert not loaded.training
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.parameters(), model.parameters(), strict=True)
    )
    with pytest.raises(UserInputError, match="train first"):
        recipe.run_model(tmp_path)


@pytest.mark.slow
def test_export_records_its_dtype_and_checksum(run, tmp_path):
    root, model = run
    path = tmp_path / "weights" / "reader.safetensors"
    digest = recipe.export_weights(model, root / "data", path, val_clips=1)
    assert digest == sha256_file(path)
    assert (path.parent / "SHA256SUMS").read_text() == f"{digest}  reader.safetensors\n"
    with safe_open(str(path), "pt") as f:
        extra = json.loads(f.metadata()[META_KEY])["extra"]
        names = f.keys()
        dtypes = {f.get_tensor(name).dtype for name in names if name.endswith("weight")}
    assert dtypes == {getattr(torch, extra["dtype"])}
    assert set(extra["held_out_figures"]) >= set(TINY.outputs)
    assert load_mouth_reader(path).cfg == TINY


@pytest.mark.slow
def test_cli_test_only_prints_the_test_figures_of_the_exported_file(run, tmp_path, capsys):
    root, _ = run
    export = tmp_path / "reader.safetensors"
    args = ["train", "mouth-reader", "--data", str(root / "data"), "--out", str(root / "run"),
            "--test-only", "--export", str(export)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    figures = json.loads(out[out.index("{") :])
    assert figures["split"] == "test" and figures["clips"] == 1 and "robustness" in figures
    assert export.exists()
