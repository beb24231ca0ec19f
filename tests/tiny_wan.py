"""Tiny Wan2.1 I2V releases written in both layouts that `tmrender convert` reads, from
diffusers' and transformers' own classes with random weights (no download):

    diffusers/  transformer/ vae/ image_encoder/ text_encoder/ tokenizer/
    original/   DiT shards + index JSON + config.json, Wan2.1_VAE.pth, the CLIP and umT5
                .pth files (Wan2.1's names, written here from Wan2.1's modules' layout:
                wan/modules/clip.py, t5.py), google/umt5-xxl/ (tokenizer)
    wav2vec2/   a transformers Wav2Vec2Model folder

Both layouts hold the same weights, so a converted model of either must reproduce the
reference classes below.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
)

from tmrender.convert.names import dit_diffusers_to_wan, vae_diffusers_to_wan
from tmrender.convert.wan import (
    DIT_INDEX,
    ORIGINAL_CLIP,
    ORIGINAL_T5,
    ORIGINAL_TOKENIZER,
    ORIGINAL_VAE,
)

TEXT_DIM = 16  # umT5 width = the DiT's text_dim
IMAGE_DIM = 160  # CLIP width = the DiT's image_dim (2 heads of open-clip's 80)
CLIP_LAYERS = 2
T5_LAYERS = 2
WORDS = (
    "a", "person", "talking", "to", "the", "camera", "hello", "world", "speaks", "softly",
    "and", "slowly",
)  # fmt: skip


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every weight random (norm gains near 1), so that a misplaced tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            gain = name.endswith("gamma") or ("norm" in name and name.endswith("weight"))
            p.copy_(1 + 0.1 * noise if gain else 0.2 * noise)


def tiny_diffusers_models() -> tuple[WanTransformer3DModel, AutoencoderKLWan]:
    torch.manual_seed(0)
    dit = WanTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        image_dim=IMAGE_DIM,
        added_kv_proj_dim=24,
    ).eval()
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1).eval()
    randomise(dit, 1)
    randomise(vae, 2)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.02)
    return dit, vae


def tiny_image_encoder() -> CLIPVisionModelWithProjection:
    """What diffusers' Wan I2V holds as `image_encoder` (ViT-H/14 layout, tiny)."""
    config = CLIPVisionConfig(
        hidden_size=IMAGE_DIM,
        intermediate_size=64,
        num_hidden_layers=CLIP_LAYERS,
        num_attention_heads=IMAGE_DIM // 80,
        image_size=28,
        patch_size=14,
        hidden_act="gelu",
        projection_dim=8,
    )
    model = CLIPVisionModelWithProjection(config).eval()
    randomise(model, 3)
    return model


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that, as umT5's, ends every sequence with </s>."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_text_encoder() -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=32,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=32,
        num_layers=T5_LAYERS,
        num_heads=2,
        dropout_rate=0.0,
    )
    model = UMT5EncoderModel(config).eval()
    randomise(model, 4)
    return model


# ---- the original layout's names (Wan2.1's modules) ----------------------------------------


def wan_clip_state(clip: CLIPVisionModelWithProjection) -> dict[str, torch.Tensor]:
    """The state dict of Wan2.1's XLMRobertaCLIP with this visual tower (plus a token text
    tower and head, which conversion must skip)."""
    sd = {k.removeprefix("vision_model."): v for k, v in clip.state_dict().items()}
    d = clip.config.hidden_size
    out = {
        "log_scale": torch.tensor(2.6),
        "textual.token_embedding.weight": torch.randn(12, 8),
        "visual.head": torch.randn(d, 8),
        "visual.patch_embedding.weight": sd["embeddings.patch_embedding.weight"],
        "visual.cls_embedding": sd["embeddings.class_embedding"].view(1, 1, d),
        "visual.pos_embedding": sd["embeddings.position_embedding.weight"][None],
    }
    for leaf in ("weight", "bias"):
        out[f"visual.pre_norm.{leaf}"] = sd[f"pre_layrnorm.{leaf}"]
        out[f"visual.post_norm.{leaf}"] = sd[f"post_layernorm.{leaf}"]
        for i in range(clip.config.num_hidden_layers):
            hf, wan = f"encoder.layers.{i}.", f"visual.transformer.{i}."
            qkv = [sd[f"{hf}self_attn.{x}_proj.{leaf}"] for x in "qkv"]
            out[f"{wan}attn.to_qkv.{leaf}"] = torch.cat(qkv)
            out[f"{wan}attn.proj.{leaf}"] = sd[f"{hf}self_attn.out_proj.{leaf}"]
            out[f"{wan}norm1.{leaf}"] = sd[f"{hf}layer_norm1.{leaf}"]
            out[f"{wan}norm2.{leaf}"] = sd[f"{hf}layer_norm2.{leaf}"]
            out[f"{wan}mlp.0.{leaf}"] = sd[f"{hf}mlp.fc1.{leaf}"]
            out[f"{wan}mlp.2.{leaf}"] = sd[f"{hf}mlp.fc2.{leaf}"]
    return {k: v.clone() for k, v in out.items()}


def wan_t5_state(t5: UMT5EncoderModel) -> dict[str, torch.Tensor]:
    """The state dict of Wan2.1's T5Encoder (umT5: a position table in every block)."""
    sd = t5.state_dict()
    out = {
        "token_embedding.weight": sd["shared.weight"],
        "norm.weight": sd["encoder.final_layer_norm.weight"],
    }
    for i in range(t5.config.num_layers):
        hf, wan = f"encoder.block.{i}.layer.", f"blocks.{i}."
        out[f"{wan}norm1.weight"] = sd[f"{hf}0.layer_norm.weight"]
        for x in "qkvo":
            out[f"{wan}attn.{x}.weight"] = sd[f"{hf}0.SelfAttention.{x}.weight"]
        bias = sd[f"{hf}0.SelfAttention.relative_attention_bias.weight"]
        out[f"{wan}pos_embedding.embedding.weight"] = bias
        out[f"{wan}norm2.weight"] = sd[f"{hf}1.layer_norm.weight"]
        out[f"{wan}ffn.gate.0.weight"] = sd[f"{hf}1.DenseReluDense.wi_0.weight"]
        out[f"{wan}ffn.fc1.weight"] = sd[f"{hf}1.DenseReluDense.wi_1.weight"]
        out[f"{wan}ffn.fc2.weight"] = sd[f"{hf}1.DenseReluDense.wo.weight"]
    return {k: v.clone() for k, v in out.items()}


def write_original_dit(folder: Path, state: dict[str, torch.Tensor], num_heads: int) -> None:
    """The original layout's DiT: two shards + index JSON + Wan's config.json."""
    names = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[::2]}
    shards["diffusion_pytorch_model-00002-of-00002.safetensors"] = names[1::2]
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / file))
        weight_map.update(dict.fromkeys(keys, file))
    (folder / DIT_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"num_heads": num_heads, "text_len": 512}))


def original_dit_state() -> dict[str, torch.Tensor]:
    dit, _ = tiny_diffusers_models()
    return {dit_diffusers_to_wan(k): v.contiguous() for k, v in dit.state_dict().items()}


def write_original_encoders(folder: Path) -> None:
    """The original layout's VAE, CLIP, umT5 and tokenizer files."""
    _, vae = tiny_diffusers_models()
    torch.save({vae_diffusers_to_wan(k, 1): v for k, v in vae.state_dict().items()},
               folder / ORIGINAL_VAE)  # fmt: skip
    torch.save(wan_clip_state(tiny_image_encoder()), folder / ORIGINAL_CLIP)
    torch.save(wan_t5_state(tiny_text_encoder()), folder / ORIGINAL_T5)
    tiny_tokenizer().save_pretrained(folder / ORIGINAL_TOKENIZER)


def write_tiny_wan(root: Path) -> dict[str, Path]:
    """Write both layouts and a tiny wav2vec2 under `root`; returns their folders."""
    dit, vae = tiny_diffusers_models()
    diffusers_dir = root / "diffusers"
    dit.save_pretrained(diffusers_dir / "transformer")
    vae.save_pretrained(diffusers_dir / "vae")
    tiny_image_encoder().save_pretrained(diffusers_dir / "image_encoder")
    tiny_text_encoder().save_pretrained(diffusers_dir / "text_encoder")
    tiny_tokenizer().save_pretrained(diffusers_dir / "tokenizer")
    original = root / "original"
    original.mkdir()
    write_original_dit(original, original_dit_state(), num_heads=2)
    write_original_encoders(original)
    w2v = root / "wav2vec2"
    Wav2Vec2Model(
        Wav2Vec2Config(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            conv_dim=(8,) * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
        )
    ).save_pretrained(w2v)
    return {"diffusers": diffusers_dir, "original": original, "wav2vec2": w2v, "root": root}
