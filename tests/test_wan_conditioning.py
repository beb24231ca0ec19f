"""Wan2.1's image and text conditioning after `tmrender convert`: tiny random CLIP and umT5
encoders in both layouts (tests/tiny_wan.py) must give what transformers' own classes give
through diffusers' and Wan2.1's recipes (~1e-5 relative); the real CLIP and umT5 tensor
sets (tests/data/wan21_encoder_tensors.json, recorded from Wan2.1's modules on the meta
device) convert exactly onto ViT-H/14 and umT5-XXL."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPVisionModelWithProjection, UMT5EncoderModel

from tmrender.config import ImageEncoderConfig, TextEncoderConfig
from tmrender.convert.names import t5_wan_to_hf
from tmrender.convert.wan import (
    ORIGINAL_CLIP,
    ORIGINAL_T5,
    ConversionError,
    SourceTensor,
    check_sources,
    convert_wan,
    expected_shapes,
    image_encoder_config,
    rename_wan_clip,
    text_encoder_config,
)
from tmrender.models.checkpoint import load_checkpoint
from tmrender.models.conditioning import clean_prompt
from tmrender.models.presets import PRESETS

from .tiny_wan import write_tiny_wan

REAL_TENSORS = Path(__file__).parent / "data" / "wan21_encoder_tensors.json"
REL_TOL = 1e-5
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPT = "  a person &amp;amp; talking\n\tto the   camera, hello unknown-word  "


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_wan(tmp_path_factory.mktemp("wan"))


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory) -> dict[str, torch.nn.Module]:
    """The tiny release converted from each layout, loaded."""
    out = tmp_path_factory.mktemp("converted")
    models = {}
    for layout in ("diffusers", "original"):
        path = out / f"{layout}.safetensors"
        convert_wan(tiny[layout], tiny["wav2vec2"], path, size=32)
        models[layout] = load_checkpoint(path)[0]
    return models


# ---- references: transformers' classes through Wan's / diffusers' recipes ----------------


def reference_clip_features(folder: Path, image: torch.Tensor, drop_last: bool = False):
    """Wan2.1's `CLIPModel.visual`: bicubic to 224 (here the tiny 28), [-1, 1] -> [0, 1],
    CLIP normalisation; diffusers' `hidden_states[-2]` of the vision model."""
    model = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    size = model.config.image_size
    x = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    pixels = (x.mul(0.5).add(0.5) - mean) / std
    if drop_last:  # the same features as the output of all blocks but the last
        model.vision_model.encoder.layers = model.vision_model.encoder.layers[:-1]
        return model(pixel_values=pixels).last_hidden_state
    return model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]


def reference_text_context(root: Path, prompt: str, text_len: int = 512):
    """diffusers' `_get_t5_prompt_embeds`: pad to text_len with a mask, encode, keep the
    real tokens. Returns (ids of the real tokens (1, L), context (1, L, d))."""
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    model = UMT5EncoderModel.from_pretrained(root / "text_encoder").eval()
    inputs = tokenizer(
        [clean_prompt(prompt)],
        padding="max_length",
        max_length=text_len,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    length = int(inputs.attention_mask.sum())
    hidden = model(inputs.input_ids, inputs.attention_mask).last_hidden_state
    return inputs.input_ids[:, :length], hidden[:, :length]


# ---- exactness -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_clip_features_match_transformers(tiny, converted, layout):
    model = converted[layout]
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        ours = model.image_encoder(image)
        ref = reference_clip_features(tiny["diffusers"] / "image_encoder", image)
    assert ours.shape == (2, model.cfg.dit.image_tokens, model.cfg.dit.image_dim) == (2, 5, 160)
    assert rel_err(ours, ref) < REL_TOL


def test_penultimate_features_are_all_blocks_but_the_last(tiny):
    """Wan's `use_31_block` and diffusers' `hidden_states[-2]` are the same features."""
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    folder = tiny["diffusers"] / "image_encoder"
    with torch.no_grad():
        penultimate = reference_clip_features(folder, image)
        truncated = reference_clip_features(folder, image, drop_last=True)
    assert rel_err(penultimate, truncated) < REL_TOL


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_text_context_matches_transformers(tiny, converted, layout):
    encoder = converted[layout].text_encoder
    ids, ref = reference_text_context(tiny["diffusers"], PROMPT)
    with torch.no_grad():
        ours = encoder.encode(PROMPT)
        ref = ref.detach()
    assert torch.equal(encoder.tokenize(PROMPT), ids)
    assert ids[0, -1].item() == 1 and (ids == 2).any(), "ends with </s>, has an unknown word"
    assert ours.shape == ref.shape and rel_err(ours, ref) < REL_TOL


def test_long_prompt_is_cut_at_text_len_as_transformers_does(tiny, converted):
    encoder = converted["original"].text_encoder
    prompt = " ".join(["hello world"] * 400)
    ids, ref = reference_text_context(tiny["diffusers"], prompt)
    with torch.no_grad():
        ours = encoder.encode(prompt)
    assert torch.equal(encoder.tokenize(prompt), ids) and ids.shape == (1, 512)
    assert rel_err(ours, ref.detach()) < REL_TOL


def test_text_encoder_stores_the_embedding_once(converted):
    model = converted["original"]
    names = [k for k in model.state_dict() if k.startswith("text_encoder.")]
    assert "text_encoder.umt5.shared.weight" in names and "text_encoder.tokenizer" in names
    assert not any("embed_tokens" in k for k in names)


@pytest.mark.parametrize(
    ("left_out", "message"),
    [
        (ORIGINAL_CLIP, "missing Wan2.1 CLIP image encoder"),
        (ORIGINAL_T5, "missing Wan2.1 umT5 text encoder"),
        ("google", "missing umT5 tokenizer folder"),
    ],
)
def test_a_missing_encoder_file_is_named(tiny, tmp_path, left_out, message):
    folder = tmp_path / "release"
    folder.mkdir()
    for entry in tiny["original"].iterdir():
        if entry.name != left_out:
            (folder / entry.name).symlink_to(entry)
    with pytest.raises(ConversionError, match=message):
        convert_wan(folder, tiny["wav2vec2"], tmp_path / "x.safetensors", size=32)
    assert not (tmp_path / "x.safetensors").exists()


# ---- the real tensor sets ------------------------------------------------------------------


def real_sources(model: str) -> dict[str, SourceTensor]:
    shapes = json.loads(REAL_TENSORS.read_text())[model]
    return {k: SourceTensor(Path("x"), k, tuple(v), torch.bfloat16) for k, v in shapes.items()}


@pytest.fixture(scope="module")
def wan14b_with_encoders() -> dict[str, tuple[int, ...]]:
    """{name: shape} of the 14B preset with Wan2.1's encoders (built on the meta device)."""
    cfg = dataclasses.replace(
        PRESETS["wan2.1-14b-audio"],
        image_encoder=ImageEncoderConfig(),
        text_encoder=TextEncoderConfig(tokenizer_bytes=1),
    )
    return expected_shapes(cfg)


def test_real_clip_converts_onto_vit_h14_exactly(wan14b_with_encoders):
    sources = real_sources("clip_xlm_roberta_vit_h_14")
    renamed = rename_wan_clip(sources)
    assert image_encoder_config(renamed, {}) == ImageEncoderConfig()
    found = {k: s.shape for k, s in renamed.items()}
    prefix = "image_encoder.clip."
    check_sources("CLIP", prefix, wan14b_with_encoders, found)
    # every visual tensor but Wan's unused output head is converted, none duplicated
    visual = [s for k, s in sources.items() if k.startswith("visual.") and k != "visual.head"]
    expected = [v for k, v in wan14b_with_encoders.items() if k.startswith(prefix)]
    assert sum(math.prod(s.shape) for s in visual) == sum(math.prod(v) for v in expected)
    with pytest.raises(ConversionError, match="1 missing: encoder.layers.31.mlp.fc2.bias"):
        del found["encoder.layers.31.mlp.fc2.bias"]
        check_sources("CLIP", prefix, wan14b_with_encoders, found)


def test_real_umt5_converts_onto_umt5_xxl_exactly(wan14b_with_encoders):
    sources = real_sources("umt5_xxl_encoder")
    renamed = {t5_wan_to_hf(k): s for k, s in sources.items()}
    assert text_encoder_config(renamed, {}, 1) == TextEncoderConfig(tokenizer_bytes=1)
    found = {k: s.shape for k, s in renamed.items()}
    check_sources("umT5", "text_encoder.umt5.", wan14b_with_encoders, found)
    extra = {**found, "encoder.block.0.extra": (1,)}
    with pytest.raises(ConversionError, match="1 unexpected: encoder.block.0.extra"):
        check_sources("umT5", "text_encoder.umt5.", wan14b_with_encoders, extra)
