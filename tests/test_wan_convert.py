"""`tmrender convert`: tiny Wan2.1 folders in both layouts + a tiny wav2vec2 -> a tmrender
checkpoint that reproduces diffusers' outputs; strict name/shape checks against the real
1.3B and 14B tensor lists (tests/data/wan21_dit_tensors.json, recorded from the reference
structure on the meta device and checked here against diffusers' own converter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from tmrender.cli import main
from tmrender.convert.names import vae_diffusers_to_wan
from tmrender.convert.wan import (
    ORIGINAL_CLIP,
    ORIGINAL_T5,
    ORIGINAL_VAE,
    ConversionError,
    SourceTensor,
    check_sources,
    convert_wan,
    dit_dimensions,
    expected_shapes,
    model_config,
    vae_config_from_tensors,
)
from tmrender.models.checkpoint import load_checkpoint, read_metadata
from tmrender.models.presets import PRESETS
from tmrender.models.wan_vae import WAN21_VAE

from .tiny_wan import (
    IMAGE_DIM,
    TEXT_DIM,
    original_dit_state,
    tiny_diffusers_models,
    write_original_dit,
    write_tiny_wan,
)

REAL_TENSORS = Path(__file__).parent / "data" / "wan21_dit_tensors.json"
REL_TOL = 1e-5
SIZE = 32  # output size of the converted tiny model (latent 4 x 4)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


# ---- tiny sources --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny Wan2.1 I2V in the diffusers and the original layout, and a tiny wav2vec2."""
    return write_tiny_wan(tmp_path_factory.mktemp("wan"))


# ---- conversion reproduces diffusers -------------------------------------------------------


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_converted_model_reproduces_diffusers(tiny, layout, tmp_path):
    out = tmp_path / "model.safetensors"
    convert_wan(tiny[layout], tiny["wav2vec2"], out, size=SIZE)
    model, meta = load_checkpoint(out)
    assert meta["trained"] is False and meta["extra"]["converted_from"]["layout"] == layout
    assert model.cfg.vae.kind == "wan" and (model.cfg.height, model.cfg.width) == (SIZE, SIZE)
    assert model.cfg.dit.in_dim == 36 and model.cfg.dit.image_embedding
    ref_dit, ref_vae = tiny_diffusers_models()
    b, t, h, w = 1, 3, SIZE // 8, SIZE // 8
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(b, 16, t, h, w, generator=gen)
    text = torch.randn(b, 512, TEXT_DIM, generator=gen)
    clip = torch.randn(b, model.cfg.dit.image_tokens, IMAGE_DIM, generator=gen)
    is_anchor = (torch.arange(t) < 1).float().view(1, 1, t, 1, 1)
    inputs = torch.cat((x, is_anchor.expand(b, 4, t, h, w), x * is_anchor), dim=1)
    audio = torch.randn(b, t - 1, model.cfg.audio_proj.tokens, model.cfg.dit.audio_dim)
    with torch.no_grad():
        expected = ref_dit(inputs, torch.tensor([600.0]), text, clip).sample
        tt = torch.full((b, t), 0.6)
        got = model.dit(x, tt, context=text, clip_fea=clip)
        with_audio = model.dit(x, tt, audio=audio, context=text, clip_fea=clip)
        frames = model.vae.decode(x[:, :, :2])
        raw = model.vae.denormalise_latent(x[:, :, :2])
        frames_ref = ref_vae.decode(raw).sample
    assert rel_err(got, expected) < REL_TOL
    assert torch.equal(with_audio, got), "audio layers must start at zero output"
    assert rel_err(frames.clamp(-1, 1), frames_ref) < REL_TOL


def test_cli_convert_writes_a_wan_model(tiny, tmp_path):
    out = tmp_path / "cli.safetensors"
    args = ["convert", "--wan", str(tiny["original"]), "--wav2vec2", str(tiny["wav2vec2"])]
    with pytest.raises(SystemExit) as done:
        main([*args, "--size", str(SIZE), "-o", str(out)])
    assert done.value.code == 0
    assert read_metadata(out)["config"].vae.kind == "wan"


def test_cli_reports_a_wrong_folder_in_one_line(tiny, tmp_path, capsys):
    args = ["convert", "--wan", str(tmp_path), "--wav2vec2", str(tiny["wav2vec2"])]
    with pytest.raises(SystemExit) as done:
        main([*args, "-o", str(tmp_path / "x.safetensors")])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "not a Wan2.1 folder" in err and len(err.splitlines()) == 1


def test_preset_mismatch_is_one_line(tiny, tmp_path):
    with pytest.raises(ConversionError, match="does not match preset wan2.1-14b-audio: dim 24"):
        convert_wan(
            tiny["original"], tiny["wav2vec2"], tmp_path / "x.safetensors", "wan2.1-14b-audio"
        )


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_original_layout_rejects_missing_or_extra_tensor(tiny, tmp_path, change):
    folder = tmp_path / change
    folder.mkdir()
    state = original_dit_state()
    if change == "missing":
        del state["blocks.1.ffn.2.weight"]
    else:
        state["blocks.1.extra.weight"] = torch.zeros(3)
    write_original_dit(folder, state, num_heads=2)
    for name in (ORIGINAL_VAE, ORIGINAL_CLIP, ORIGINAL_T5, "google"):
        (folder / name).symlink_to(tiny["original"] / name)
    word = "missing: blocks.1.ffn.2.weight" if change == "missing" else "unexpected: blocks.1.extra"
    with pytest.raises(ConversionError, match=word):
        convert_wan(folder, tiny["wav2vec2"], tmp_path / "x.safetensors", size=SIZE)
    assert not (tmp_path / "x.safetensors").exists()


# ---- the real 1.3B and 14B tensor sets ---------------------------------------------------


def real_tensors(model: str) -> dict[str, SourceTensor]:
    shapes = json.loads(REAL_TENSORS.read_text())[model]
    return {k: SourceTensor(Path("x"), k, tuple(v), torch.bfloat16) for k, v in shapes.items()}


@pytest.mark.parametrize("model", ["wan2.1-t2v-1.3b", "wan2.1-i2v-14b"])
def test_fixture_is_what_diffusers_reads_as_wan(model):
    """The recorded names are Wan2.1's: diffusers' own converter maps them onto exactly the
    tensors of its WanTransformer3DModel of that size (built on the meta device)."""
    tensors = real_tensors(model)
    as_meta = {k: torch.empty(s.shape, device="meta") for k, s in tensors.items()}
    converted = {
        k: tuple(v.shape) for k, v in convert_wan_transformer_to_diffusers(as_meta).items()
    }
    image = model.startswith("wan2.1-i2v")
    dims = dit_dimensions(tensors, {})
    with torch.device("meta"):
        ref = WanTransformer3DModel(
            num_attention_heads=dims["num_heads"],
            in_channels=dims["in_dim"],
            ffn_dim=dims["ffn_dim"],
            num_layers=dims["num_layers"],
            image_dim=1280 if image else None,
            added_kv_proj_dim=dims["dim"] if image else None,
        )
    assert converted == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


@pytest.mark.parametrize(
    ("model", "preset"), [("wan2.1-t2v-1.3b", None), ("wan2.1-i2v-14b", "wan2.1-14b-audio")]
)
def test_real_tensor_sets_are_accepted_exactly(model, preset):
    tensors = real_tensors(model)
    dims = dit_dimensions(tensors, {})
    template = PRESETS[preset or "wan2.1-1.3b-audio"]
    cfg = model_config(dims, WAN21_VAE, template.audio_encoder, template, preset, 512)
    expected = expected_shapes(cfg)
    found = {k: s.shape for k, s in tensors.items()}
    check_sources(model, "dit.", expected, found)  # accepted as is
    name = sorted(found)[len(found) // 2]
    with pytest.raises(ConversionError, match=f"1 missing: {name}"):
        check_sources(model, "dit.", expected, {k: v for k, v in found.items() if k != name})
    with pytest.raises(ConversionError, match="1 unexpected: blocks.0.extra"):
        check_sources(model, "dit.", expected, {**found, "blocks.0.extra": (1,)})
    with pytest.raises(ConversionError, match="1 wrong shape: head.head.weight"):
        check_sources(model, "dit.", expected, {**found, "head.head.weight": (1, 1)})


def test_wan21_vae_dimensions_come_from_shapes():
    with torch.device("meta"):
        vae = AutoencoderKLWan()  # Wan2.1's VAE
    tensors = {
        vae_diffusers_to_wan(k, 2): SourceTensor(Path("x"), k, tuple(v.shape), torch.float32)
        for k, v in vae.state_dict().items()
    }
    assert vae_config_from_tensors(tensors, {}) == WAN21_VAE
