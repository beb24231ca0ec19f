"""Tensor-name maps, kept as data (cf. diffusers' `scripts/convert_wan_to_diffusers.py`).

DiT and VAE, two steps, each a pure function of one name:
- diffusers -> Wan2.1 original (`WanModel` of wan/modules/model.py, `WanVAE_` of
  wan/modules/vae.py): `dit_diffusers_to_wan`, `vae_diffusers_to_wan`;
- Wan2.1 original -> tmrender: our modules carry Wan's names, so only the network prefix
  is added (`dit.`, `vae.`).
Image and text encoders are `transformers` classes, so their target names are
transformers': Wan2.1 original -> transformers (`clip_wan_to_hf`, `t5_wan_to_hf`), while
diffusers' folders already hold transformers names (`clip_hf_to_ours`, `T5_HF_ALIAS`).
A name that no rule knows raises `UnknownTensorError`: conversions are strict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tmrender.errors import UserInputError


class UnknownTensorError(UserInputError):
    """A tensor name that the conversion does not know (wrong layout or model family)."""


# ---- DiT: diffusers WanTransformer3DModel -> Wan2.1 WanModel ------------------------------

# (regex on the whole diffusers name, replacement); the first full match wins.
DIT_DIFFUSERS_TO_WAN: tuple[tuple[str, str], ...] = (
    (r"patch_embedding\.(weight|bias)", r"patch_embedding.\1"),
    (r"condition_embedder\.time_embedder\.linear_1\.(\w+)", r"time_embedding.0.\1"),
    (r"condition_embedder\.time_embedder\.linear_2\.(\w+)", r"time_embedding.2.\1"),
    (r"condition_embedder\.time_proj\.(\w+)", r"time_projection.1.\1"),
    (r"condition_embedder\.text_embedder\.linear_1\.(\w+)", r"text_embedding.0.\1"),
    (r"condition_embedder\.text_embedder\.linear_2\.(\w+)", r"text_embedding.2.\1"),
    (r"condition_embedder\.image_embedder\.norm1\.(\w+)", r"img_emb.proj.0.\1"),
    (r"condition_embedder\.image_embedder\.ff\.net\.0\.proj\.(\w+)", r"img_emb.proj.1.\1"),
    (r"condition_embedder\.image_embedder\.ff\.net\.2\.(\w+)", r"img_emb.proj.3.\1"),
    (r"condition_embedder\.image_embedder\.norm2\.(\w+)", r"img_emb.proj.4.\1"),
    (r"blocks\.(\d+)\.scale_shift_table", r"blocks.\1.modulation"),
    (r"blocks\.(\d+)\.attn1\.to_(q|k|v)\.(\w+)", r"blocks.\1.self_attn.\2.\3"),
    (r"blocks\.(\d+)\.attn1\.to_out\.0\.(\w+)", r"blocks.\1.self_attn.o.\2"),
    (r"blocks\.(\d+)\.attn1\.norm_(q|k)\.(\w+)", r"blocks.\1.self_attn.norm_\2.\3"),
    (r"blocks\.(\d+)\.attn2\.to_(q|k|v)\.(\w+)", r"blocks.\1.cross_attn.\2.\3"),
    (r"blocks\.(\d+)\.attn2\.to_out\.0\.(\w+)", r"blocks.\1.cross_attn.o.\2"),
    (r"blocks\.(\d+)\.attn2\.norm_(q|k)\.(\w+)", r"blocks.\1.cross_attn.norm_\2.\3"),
    (r"blocks\.(\d+)\.attn2\.add_(k|v)_proj\.(\w+)", r"blocks.\1.cross_attn.\2_img.\3"),
    (r"blocks\.(\d+)\.attn2\.norm_added_k\.(\w+)", r"blocks.\1.cross_attn.norm_k_img.\2"),
    # diffusers' norm2 is Wan's cross-attention norm (norm3); its FFN norm has no weights
    (r"blocks\.(\d+)\.norm2\.(\w+)", r"blocks.\1.norm3.\2"),
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj\.(\w+)", r"blocks.\1.ffn.0.\2"),
    (r"blocks\.(\d+)\.ffn\.net\.2\.(\w+)", r"blocks.\1.ffn.2.\2"),
    (r"scale_shift_table", r"head.modulation"),
    (r"proj_out\.(\w+)", r"head.head.\1"),
)
# diffusers names that hold nothing Wan uses (diffusers ignores them on load too)
DIT_DIFFUSERS_IGNORED = (r"blocks\.\d+\.attn2\.norm_added_q\.\w+",)

_DIT_RULES = tuple((re.compile(p), r) for p, r in DIT_DIFFUSERS_TO_WAN)
_DIT_IGNORED = tuple(re.compile(p) for p in DIT_DIFFUSERS_IGNORED)


def dit_diffusers_to_wan(name: str) -> str | None:
    """diffusers WanTransformer3DModel tensor name -> Wan2.1 name (None: to be dropped)."""
    for pattern, replacement in _DIT_RULES:
        if pattern.fullmatch(name):
            return pattern.sub(replacement, name)
    if any(p.fullmatch(name) for p in _DIT_IGNORED):
        return None
    raise UnknownTensorError(f"unknown diffusers transformer tensor {name!r}")


# ---- VAE: diffusers AutoencoderKLWan -> Wan2.1 WanVAE_ -----------------------------------

# leaves of a residual block: diffusers -> Wan's `residual` Sequential indices / `shortcut`
VAE_RESNET_LEAVES: dict[str, str] = {
    "norm1.gamma": "residual.0.gamma",
    "conv1.weight": "residual.2.weight",
    "conv1.bias": "residual.2.bias",
    "norm2.gamma": "residual.3.gamma",
    "conv2.weight": "residual.6.weight",
    "conv2.bias": "residual.6.bias",
    "conv_shortcut.weight": "shortcut.weight",
    "conv_shortcut.bias": "shortcut.bias",
}
# whole-name renames outside the residual blocks
VAE_DIFFUSERS_TO_WAN: tuple[tuple[str, str], ...] = (
    (r"quant_conv\.(\w+)", r"conv1.\1"),
    (r"post_quant_conv\.(\w+)", r"conv2.\1"),
    (r"(encoder|decoder)\.conv_in\.(\w+)", r"\1.conv1.\2"),
    (r"(encoder|decoder)\.norm_out\.gamma", r"\1.head.0.gamma"),
    (r"(encoder|decoder)\.conv_out\.(\w+)", r"\1.head.2.\2"),
    (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", r"\1.middle.1.\2"),
    (
        r"encoder\.down_blocks\.(\d+)\.(resample\.1|time_conv)\.(\w+)",
        r"encoder.downsamples.\1.\2.\3",
    ),
)
_VAE_RULES = tuple((re.compile(p), r) for p, r in VAE_DIFFUSERS_TO_WAN)
_VAE_RESNETS = re.compile(
    r"(?P<prefix>encoder\.down_blocks\.(?P<down>\d+)"
    r"|(?P<side>encoder|decoder)\.mid_block\.resnets\.(?P<mid>\d+)"
    r"|decoder\.up_blocks\.(?P<up>\d+)\.resnets\.(?P<res>\d+))\.(?P<leaf>.+)"
)
_VAE_UPSAMPLER = re.compile(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)")


def vae_diffusers_to_wan(name: str, num_res_blocks: int) -> str:
    """diffusers AutoencoderKLWan tensor name -> Wan2.1 `Wan2.1_VAE.pth` name.

    Decoder up-block `b` of diffusers holds `num_res_blocks + 1` residual blocks and one
    upsampler; Wan numbers them flat: `upsamples.{b * (num_res_blocks + 2) + i}`."""
    for pattern, replacement in _VAE_RULES:
        if pattern.fullmatch(name):
            return pattern.sub(replacement, name)
    per_block = num_res_blocks + 2
    up = _VAE_UPSAMPLER.fullmatch(name)
    if up:
        return f"decoder.upsamples.{int(up[1]) * per_block + num_res_blocks + 1}.{up[2]}"
    m = _VAE_RESNETS.fullmatch(name)
    if m and m["leaf"] in VAE_RESNET_LEAVES:
        leaf = VAE_RESNET_LEAVES[m["leaf"]]
        if m["down"] is not None:
            return f"encoder.downsamples.{m['down']}.{leaf}"
        if m["mid"] is not None:
            return f"{m['side']}.middle.{2 * int(m['mid'])}.{leaf}"
        return f"decoder.upsamples.{int(m['up']) * per_block + int(m['res'])}.{leaf}"
    raise UnknownTensorError(f"unknown diffusers VAE tensor {name!r}")


# ---- CLIP visual tower: Wan2.1 original -> transformers CLIPVisionModel ------------------
# The original `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` holds the whole
# XLM-RoBERTa CLIP (wan/modules/clip.py `XLMRobertaCLIP`); only `visual.*` is used. Target
# names are those of the CLIPVisionModel tower (`tmrender.models.conditioning`).


@dataclass(frozen=True)
class Renamed:
    """One target tensor made from a source tensor: its name, which third of a fused
    q|k|v tensor it is (None: all of it), and how many trailing dimensions it keeps
    (None: the shape as is; 1 or 2 drop Wan's leading size-1 dimensions)."""

    name: str
    part: int | None = None
    keep_dims: int | None = None


_CLIP_LAYER = r"visual\.transformer\.(\d+)\."
CLIP_WAN_TO_HF: tuple[tuple[str, str], ...] = (
    (r"visual\.patch_embedding\.weight", r"embeddings.patch_embedding.weight"),
    (r"visual\.pre_norm\.(weight|bias)", r"pre_layrnorm.\1"),
    (r"visual\.post_norm\.(weight|bias)", r"post_layernorm.\1"),
    (_CLIP_LAYER + r"norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (_CLIP_LAYER + r"norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (_CLIP_LAYER + r"attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.out_proj.\2"),
    (_CLIP_LAYER + r"mlp\.0\.(weight|bias)", r"encoder.layers.\1.mlp.fc1.\2"),
    (_CLIP_LAYER + r"mlp\.2\.(weight|bias)", r"encoder.layers.\1.mlp.fc2.\2"),
)
# Wan's (1, 1, D) class token and (1, N, D) position table -> (D,) and (N, D)
CLIP_WAN_SQUEEZED: dict[str, tuple[str, int]] = {
    "visual.cls_embedding": ("embeddings.class_embedding", 1),
    "visual.pos_embedding": ("embeddings.position_embedding.weight", 2),
}
# Wan's fused `to_qkv` (rows q | k | v: `to_qkv(x).view(b, s, 3, n, d)`) -> three linears
CLIP_WAN_FUSED_QKV = (_CLIP_LAYER + r"attn\.to_qkv\.(weight|bias)", "q", "k", "v")
# the text tower, the contrastive scale and the pooled-token projection: unused by Wan I2V
CLIP_WAN_IGNORED = (r"textual\..+", r"log_scale", r"visual\.head")
# diffusers' image_encoder/ (CLIPVisionModel or ...WithProjection, transformers 4 or 5)
CLIP_HF_PREFIX = "vision_model."
CLIP_HF_IGNORED = (r"visual_projection\.weight", r"(vision_model\.)?embeddings\.position_ids")

_CLIP_RULES = tuple((re.compile(p), r) for p, r in CLIP_WAN_TO_HF)
_CLIP_FUSED = re.compile(CLIP_WAN_FUSED_QKV[0])
_CLIP_WAN_IGNORED = tuple(re.compile(p) for p in CLIP_WAN_IGNORED)
_CLIP_HF_IGNORED = tuple(re.compile(p) for p in CLIP_HF_IGNORED)


def clip_wan_to_hf(name: str) -> tuple[Renamed, ...]:
    """Wan2.1 CLIP tensor name -> the CLIPVisionModel tensors made from it (none: unused)."""
    if name in CLIP_WAN_SQUEEZED:
        target, keep = CLIP_WAN_SQUEEZED[name]
        return (Renamed(target, keep_dims=keep),)
    for pattern, replacement in _CLIP_RULES:
        if pattern.fullmatch(name):
            return (Renamed(pattern.sub(replacement, name)),)
    fused = _CLIP_FUSED.fullmatch(name)
    if fused:
        layer, leaf = fused[1], fused[2]
        return tuple(
            Renamed(f"encoder.layers.{layer}.self_attn.{which}_proj.{leaf}", part=i)
            for i, which in enumerate(CLIP_WAN_FUSED_QKV[1:])
        )
    if any(p.fullmatch(name) for p in _CLIP_WAN_IGNORED):
        return ()
    raise UnknownTensorError(f"unknown Wan2.1 CLIP tensor {name!r}")


def clip_hf_to_ours(name: str) -> str | None:
    """diffusers image_encoder tensor name -> CLIPVisionModel tower name (None: dropped)."""
    if any(p.fullmatch(name) for p in _CLIP_HF_IGNORED):
        return None
    return name.removeprefix(CLIP_HF_PREFIX)


# ---- umT5 encoder: Wan2.1 original -> transformers UMT5EncoderModel ---------------------
# `models_t5_umt5-xxl-enc-bf16.pth` is wan/modules/t5.py `T5Encoder` (every block has its
# own relative position table, `shared_pos=False`, as UMT5). Wan's gated FFN is
# `fc2(fc1(x) * gelu(gate(x)))`, transformers' `wo(act(wi_0(x)) * wi_1(x))`.

_T5_BLOCK = r"blocks\.(\d+)\."
_HF_BLOCK = r"encoder.block.\1.layer."
T5_WAN_TO_HF: tuple[tuple[str, str], ...] = (
    (r"token_embedding\.weight", "shared.weight"),
    (_T5_BLOCK + r"norm1\.weight", _HF_BLOCK + r"0.layer_norm.weight"),
    (_T5_BLOCK + r"attn\.(q|k|v|o)\.weight", _HF_BLOCK + r"0.SelfAttention.\2.weight"),
    (
        _T5_BLOCK + r"pos_embedding\.embedding\.weight",
        _HF_BLOCK + r"0.SelfAttention.relative_attention_bias.weight",
    ),
    (_T5_BLOCK + r"norm2\.weight", _HF_BLOCK + r"1.layer_norm.weight"),
    (_T5_BLOCK + r"ffn\.gate\.0\.weight", _HF_BLOCK + r"1.DenseReluDense.wi_0.weight"),
    (_T5_BLOCK + r"ffn\.fc1\.weight", _HF_BLOCK + r"1.DenseReluDense.wi_1.weight"),
    (_T5_BLOCK + r"ffn\.fc2\.weight", _HF_BLOCK + r"1.DenseReluDense.wo.weight"),
    (r"norm\.weight", "encoder.final_layer_norm.weight"),
)
# diffusers' text_encoder/ may also store the encoder's tied alias of `shared.weight`
T5_HF_ALIAS = {"encoder.embed_tokens.weight": "shared.weight"}

_T5_RULES = tuple((re.compile(p), r) for p, r in T5_WAN_TO_HF)


def t5_wan_to_hf(name: str) -> str:
    """Wan2.1 umT5 encoder tensor name -> UMT5EncoderModel name."""
    for pattern, replacement in _T5_RULES:
        if pattern.fullmatch(name):
            return pattern.sub(replacement, name)
    raise UnknownTensorError(f"unknown Wan2.1 umT5 tensor {name!r}")
