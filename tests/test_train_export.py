"""`tmrender train export` and the shipped default model: fp16 per network, provenance,
SHA256SUMS, the default model of generate / eval, refusal of a damaged file, and the
portrait check. A tiny model stands in for tm-mini in a temporary weights folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tmrender.data.avatar import draw_avatar
from tmrender.data.corpus import generate_corpus
from tmrender.files import ChecksumError
from tmrender.media.audio import write_wav
from tmrender.media.ffmpeg import count_video_frames
from tmrender.models.checkpoint import read_metadata, save_checkpoint
from tmrender.models.registry import WEIGHTS_ENV, load_model, resolve_model_path
from tmrender.models.talking import TalkingModel
from tmrender.render.portrait import looks_like_avatar
from tmrender.train import export as recipe

from .conftest import run_cli
from .tiny_model import tiny_model


@pytest.fixture
def stages(tmp_path):
    """weights/stages-like folder: a teacher and the final student with their metadata."""
    folder = tmp_path / "stages"
    folder.mkdir()
    teacher = {"stage": "teacher", "steps": 40, "corpus": {"seed": 0, "clips": 3}}
    save_checkpoint(tiny_model(1), folder / "teacher.safetensors", True, teacher)
    student = {"stage": "dmd", "steps": 7, "corpus": {"seed": 0, "clips": 3}}
    save_checkpoint(tiny_model(2), folder / "dmd.safetensors", True, student)
    return folder


@pytest.fixture
def shipped(stages, tmp_path, monkeypatch):
    """The tiny student exported as `tm-mini` into a weights folder named by the env var."""
    weights = tmp_path / "weights"
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    opts = recipe.ExportOptions(dtype="float16")
    recipe.export_model(stages / "dmd.safetensors", weights / "tm-mini.safetensors", opts,
                        stages_dir=stages)  # fmt: skip
    return weights / "tm-mini.safetensors"


@pytest.fixture
def inputs(tmp_path):
    image = tmp_path / "face.png"
    Image.fromarray(draw_avatar(3, 64)).save(image)
    audio = tmp_path / "speech.wav"
    t = np.arange(16_000) / 16_000
    write_wav(audio, 0.3 * np.sin(2 * np.pi * 200 * t))
    return image, audio


def export_args(stages, out) -> tuple[str, ...]:
    """`train export` of the tiny student to `out` in float32 (no held-out clips needed)."""
    return ("train", "export", "--init", str(stages / "dmd.safetensors"), "-o", str(out),
            "--dtype", "float32")  # fmt: skip


def dtypes_in(path) -> dict[str, set[str]]:
    with safe_open(str(path), framework="pt") as f:
        out: dict[str, set[str]] = {}
        for key in f.keys():  # noqa: SIM118
            out.setdefault(key.split(".", 1)[0], set()).add(str(f.get_tensor(key).dtype))
    return out


# -- precision and provenance ------------------------------------------------------------------


def test_half_networks_are_chosen_by_the_score(stages, tmp_path):
    model = tiny_model(2)
    reference = model.dit.head.head.weight.detach().clone()

    def score(candidate: TalkingModel) -> float:  # only a rounded DiT changes the figure
        return 0.9 - (0.01 if not torch.equal(candidate.dit.head.head.weight, reference) else 0)

    chosen, figures = recipe.choose_half_networks(model, score, tolerance=0.005)
    assert chosen == ("vae", "audio_encoder", "audio_proj", "silence")
    assert figures["r_float32"] == figures["r_exported"] == 0.9

    out = tmp_path / "w" / "model.safetensors"
    result = recipe.export_model(stages / "dmd.safetensors", out, recipe.ExportOptions(),
                                 score=score, stages_dir=stages)  # fmt: skip
    found = dtypes_in(out)
    assert found["dit"] == {"torch.float32"} and found["vae"] == {"torch.float16"}
    assert result["dtype"]["dit"] == "float32" and result["dtype"]["audio_proj"] == "float16"
    meta = read_metadata(out)
    assert meta["trained"] is True
    assert meta["extra"]["init"]["steps"] == 7 and meta["extra"]["init"]["stage"] == "dmd"
    assert meta["extra"]["stages"] == {
        "teacher": {"stage": "teacher", "steps": 40, "corpus": {"seed": 0, "clips": 3}}
    }
    assert meta["extra"]["shipped"]["half_check"]["r_exported"] == 0.9


def test_auto_precision_without_clips_is_a_user_error(stages, tmp_path):
    with pytest.raises(Exception, match="--data"):
        recipe.export_model(stages / "dmd.safetensors", tmp_path / "m.safetensors",
                            recipe.ExportOptions())  # fmt: skip


def test_export_is_reproducible_and_records_its_checksum(stages, tmp_path):
    out = tmp_path / "w" / "m.safetensors"
    opts = recipe.ExportOptions(dtype="float32")
    first = recipe.export_model(stages / "dmd.safetensors", out, opts)["sha256"]
    second = recipe.export_model(stages / "dmd.safetensors", out, opts)["sha256"]
    assert first == second
    assert (out.parent / "SHA256SUMS").read_text() == f"{first}  m.safetensors\n"


def test_export_sets_the_deflicker_taps_and_the_cli_checks_them(stages, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    before = read_metadata(stages / "dmd.safetensors")["config"].sampler.deflicker_taps
    opts = recipe.ExportOptions(dtype="float32", deflicker_taps=(1.0, 2.0, 1.0))
    recipe.export_model(stages / "dmd.safetensors", out, opts)
    assert read_metadata(out)["config"].sampler.deflicker_taps == (1.0, 2.0, 1.0)
    recipe.export_model(stages / "dmd.safetensors", out, recipe.ExportOptions(dtype="float32"))
    assert read_metadata(out)["config"].sampler.deflicker_taps == before
    for bad in ("1,2", "1,x,1", "3,2,1"):
        code, _, err = run_cli(capsys, *export_args(stages, out), "--deflicker-taps", bad)
        assert code == 2 and "--deflicker-taps" in err


def test_export_sets_the_edge_keeping_levels(stages, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    args = export_args(stages, out)
    code, _, _ = run_cli(capsys, *args, "--deflicker-taps", "1,2,1", "--deflicker-keep", "6,16")
    sampler = read_metadata(out)["config"].sampler
    assert code == 0 and sampler.deflicker_keep == (6.0, 16.0)
    assert sampler.deflicker_taps == (1.0, 2.0, 1.0)
    run_cli(capsys, *args, "--deflicker-keep", "none")
    assert read_metadata(out)["config"].sampler.deflicker_keep == ()
    for bad in ("6", "16,6", "a,b"):
        code, _, err = run_cli(capsys, *args, "--deflicker-keep", bad)
        assert code == 2 and "--deflicker-keep" in err
    run_cli(capsys, *args, "--deflicker-taps", "1,2,1", "--deflicker-keep", "6,16")
    run_cli(capsys, *args, "--deflicker-taps", "none")  # the filter off takes its levels with it
    assert read_metadata(out)["config"].sampler.deflicker_keep == ()
    code, _, err = run_cli(capsys, *args, "--deflicker-taps", "none", "--deflicker-keep", "6,16")
    assert code == 2 and "--deflicker-keep needs a filter" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("option", "field", "value", "expected", "bad"),
    [
        ("--retime", "retime", "0.1,0.25", (0.1, 0.25), ("0.1", "0.6,0.1", "a,b")),
        ("--keep-reference", "keep_reference", "8,24", (8.0, 24.0), ("8", "24,8", "a,b")),
    ],
)
def test_export_sets_a_sampler_pair_turns_it_off_and_refuses_bad_ones(
    stages, tmp_path, capsys, option, field, value, expected, bad
):
    out = tmp_path / "m.safetensors"
    args = export_args(stages, out)
    code, _, _ = run_cli(capsys, *args, option, value)
    assert code == 0 and getattr(read_metadata(out)["config"].sampler, field) == expected
    run_cli(capsys, *args, option, "none")
    assert getattr(read_metadata(out)["config"].sampler, field) == ()
    for text in bad:
        code, _, err = run_cli(capsys, *args, option, text)
        assert code == 2 and option in err and "Traceback" not in err


def test_export_sets_the_chunk_length_and_the_file_loads_with_it(stages, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    args = export_args(stages, out)
    code, _, err = run_cli(capsys, *args, "--chunk-latents", "1")
    assert code == 0, err
    model, _ = load_model(str(out), "cpu")
    assert model.cfg.chunk_latent_frames == 1
    assert model.cfg.frames_per_chunk == model.cfg.frames_per_latent
    assert model.dit.chunk_frames == 1
    code, _, err = run_cli(capsys, *args, "--chunk-latents", "0")
    assert code == 2 and "--chunk-latents" in err and "Traceback" not in err


def test_export_sets_the_keepers_follow_only_with_a_reference_to_keep(stages, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    args = export_args(stages, out)
    code, _, err = run_cli(capsys, *args, "--keep-reference", "16,48", "--keep-follow", "50")
    assert code == 0, err
    sampler = read_metadata(out)["config"].sampler
    assert sampler.keep_reference == (16.0, 48.0) and sampler.keep_follow == 50.0
    for extra in (("--keep-follow", "0.5"), ("--keep-reference", "none", "--keep-follow", "5")):
        code, _, err = run_cli(capsys, *args, *extra)
        assert code == 2 and "--keep-follow" in err and "Traceback" not in err


def test_lipsync_score_renders_held_out_clips(tmp_path):
    from tmrender.eval.mouth import load_mouth_reader

    generate_corpus(tmp_path / "data", "train", clips=2, seconds=1.0, seed=3, size=32,
                    frame_format="npy")  # fmt: skip
    clips = sorted((tmp_path / "data" / "train").glob("*/meta.json"))
    score = recipe.held_out_lipsync([p.parent for p in clips], load_mouth_reader(), 0.6)
    value = score(tiny_model(0))
    assert -1.0 <= value <= 1.0 and np.isfinite(value)
    assert score(tiny_model(0)) == value  # same seed, same frames


# -- the shipped file ----------------------------------------------------------------------------


def test_shipped_file_loads_matches_its_checksum_and_renders_one_second(shipped, inputs, capsys):
    from tmrender.files import sha256_file

    line = (shipped.parent / "SHA256SUMS").read_text().split()
    assert line == [sha256_file(shipped), "tm-mini.safetensors"]
    assert resolve_model_path(None) == shipped
    model, meta = load_model(None, "cpu")
    assert meta["trained"] and all(p.dtype == torch.float32 for p in model.parameters())
    assert dtypes_in(shipped)["dit"] == {"torch.float16"}
    image, audio = inputs
    code, _, err = run_cli(
        capsys, "generate", "-i", str(image), "-a", str(audio), "--device", "cpu"
    )
    assert code == 0, err
    assert "warning" not in err  # a trained model and an avatar portrait
    assert count_video_frames(audio.with_suffix(".mp4")) == 25


def test_a_damaged_shipped_file_is_refused_with_exit_2(shipped, inputs, capsys):
    data = bytearray(shipped.read_bytes())
    data[-1] ^= 0xFF  # a tensor byte: still a loadable safetensors file
    shipped.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="SHA-256"):
        resolve_model_path("tm-mini")
    image, audio = inputs
    code, _, err = run_cli(capsys, "generate", "-i", str(image), "-a", str(audio))
    assert code == 2
    assert "does not match its SHA-256" in err and len(err.strip().splitlines()) == 1
    assert not audio.with_suffix(".mp4").exists()


def test_checksum_is_read_once_per_file_version(shipped, monkeypatch):
    import tmrender.files as files

    calls = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(files, "_DIGESTS", {})
    for _ in range(3):
        resolve_model_path(None)
    assert len(calls) == 1
    data = shipped.read_bytes()
    shipped.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # another version of the file
    with pytest.raises(ChecksumError):
        resolve_model_path(None)
    assert len(calls) == 2


def test_eval_uses_the_default_model(shipped, tmp_path, capsys):
    generate_corpus(tmp_path / "data", "test", clips=1, seconds=1.0, seed=1, size=32,
                    frame_format="npy")  # fmt: skip
    threads = torch.get_num_threads()
    code, out, err = run_cli(capsys, "eval", "--data", str(tmp_path / "data"), "--out",
                         str(tmp_path / "report"), "--plots", "0", "--json")  # fmt: skip
    torch.set_num_threads(threads)
    assert code == 0, err
    assert list(json.loads(out)) == ["tm-mini"]


# -- the portrait check --------------------------------------------------------------------------


def test_avatars_pass_and_photo_like_texture_and_blanks_are_flagged():
    for seed in range(5):
        assert looks_like_avatar(draw_avatar(seed, 128))
    rng = np.random.default_rng(0)
    assert not looks_like_avatar(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    assert not looks_like_avatar(np.full((128, 128, 3), 90, np.uint8))  # blank


def test_generate_warns_once_for_a_photo_like_portrait(shipped, inputs, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(photo)
    _, audio = inputs
    args = ["generate", "-i", str(photo), "-a", str(audio), "--device", "cpu"]
    code, _, err = run_cli(capsys, *args, "--crop", "0,0,96,96")  # noise: no face to search for
    assert code == 0, err
    assert err.count("does not look like the drawn avatars") == 1
