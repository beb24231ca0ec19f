"""Wan2.1's conditioning encoders, run once per render (the embedding cache):

    portrait (B, 3, H, W) in [-1, 1] --ImageEncoder--> clip_fea (B, 257, 1280)   (I2V-14B)
    prompt (str) --TextEncoder.encode--> context (1, L <= text_len, 4096)        (every Wan)

Both are `transformers` classes built from the model config (never a hub download), with
the weights of the converted checkpoint:

- `ImageEncoder`: a `CLIPVisionModel` of ViT-H/14 dimensions. As Wan2.1's
  `CLIPModel.visual` (wan/modules/clip.py): the image is resized to 224 x 224 (bicubic,
  no antialias), mapped to [0, 1] and normalised with CLIP's mean / std; the features are
  the hidden states after all blocks but the last (Wan's `use_31_block`, diffusers'
  `hidden_states[-2]`), before any final norm.
- `TextEncoder`: a `UMT5EncoderModel`. Its token embedding lives once, as `umt5.shared`:
  the encoder stack's tied alias is removed, so a checkpoint holds the 1 GB table once and
  loading it on the meta device cannot untie it. The tokenizer travels inside the
  checkpoint as a uint8 buffer holding its `tokenizers` JSON (one file to copy, checksum
  and load; no sentencepiece at render time). A prompt is cleaned as Wan does (HTML
  entities, runs of whitespace), tokenised with its end-of-sequence token, cut to
  `text_len` tokens and encoded without padding: Wan pads to `text_len` and masks, which
  leaves the hidden states of the real tokens unchanged and then drops the rest; the DiT
  pads the context with zeros to `text_len` itself.
"""

from __future__ import annotations

import html
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from tmrender.config import ImageEncoderConfig, TextEncoderConfig
from tmrender.errors import UserInputError

DEFAULT_PROMPT = "a person talking to the camera"

# ---- image ---------------------------------------------------------------------------------


def clip_config(cfg: ImageEncoderConfig) -> CLIPVisionConfig:
    """The CLIPVisionConfig of an ImageEncoderConfig (inference settings: no dropout)."""
    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act,
        attention_dropout=0.0,
    )


def vision_tower(model: CLIPVisionModel) -> nn.Module:
    """The module holding embeddings / encoder / norms: CLIPVisionModel itself in
    transformers 5, its `vision_model` in 4 (so checkpoint names are the same in both)."""
    return getattr(model, "vision_model", model)


class ImageEncoder(nn.Module):
    """CLIP image features of Wan2.1 I2V. State-dict names: `clip.` + the tower's."""

    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip = vision_tower(CLIPVisionModel(clip_config(cfg)))
        self.register_load_state_dict_post_hook(_restore_position_ids)

    def preprocess(self, image: Tensor) -> Tensor:
        """image (B, 3, H, W) in [-1, 1] -> CLIP pixels (B, 3, S, S) float32, S = image_size."""
        assert image.ndim == 4 and image.shape[1] == 3, f"got {tuple(image.shape)}"
        size = (self.cfg.image_size, self.cfg.image_size)
        x = F.interpolate(image.float(), size=size, mode="bicubic", align_corners=False)
        mean = torch.tensor(self.cfg.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.image_std, device=x.device).view(1, 3, 1, 1)
        return (x * 0.5 + 0.5 - mean) / std

    def forward(self, image: Tensor) -> Tensor:
        """image (B, 3, H, W) in [-1, 1] -> clip_fea (B, tokens, hidden_size)."""
        dtype = self.clip.embeddings.patch_embedding.weight.dtype
        pixels = self.preprocess(image).to(dtype)
        out = self.clip(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[self.cfg.feature_layer]


def _restore_position_ids(module: ImageEncoder, incompatible_keys) -> None:
    """After loading: rebuild CLIP's non-persistent `position_ids` (left on the meta device
    when the model was built there) beside the position table."""
    embeddings = module.clip.embeddings
    ids = getattr(embeddings, "position_ids", None)
    table = embeddings.position_embedding.weight
    if ids is not None and ids.is_meta and not table.is_meta:
        fresh = torch.arange(table.shape[0], device=table.device).expand(1, -1)
        embeddings.register_buffer("position_ids", fresh, persistent=False)


# ---- text ----------------------------------------------------------------------------------


def umt5_config(cfg: TextEncoderConfig) -> UMT5Config:
    """The UMT5Config of a TextEncoderConfig (inference settings: no dropout, no cache)."""
    return UMT5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.d_kv,
        d_ff=cfg.d_ff,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
        feed_forward_proj=cfg.feed_forward_proj,
        dropout_rate=0.0,
        use_cache=False,
    )


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning without ftfy: HTML entities (twice), whitespace runs -> one
    space, stripped."""
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class TextEncoder(nn.Module):
    """umT5 text context of Wan2.1. State-dict names: `umt5.` + UMT5EncoderModel's (without
    `umt5.encoder.embed_tokens`, the alias of `umt5.shared`) and `tokenizer` (uint8)."""

    def __init__(self, cfg: TextEncoderConfig, max_tokens: int) -> None:
        """max_tokens: the DiT's text_len (512 for Wan): longer prompts are cut there."""
        super().__init__()
        self.cfg = cfg
        self.max_tokens = max_tokens
        self.umt5 = UMT5EncoderModel(umt5_config(cfg))
        self.umt5.encoder.embed_tokens = None  # the alias of `shared`, see the docstring
        self.register_buffer("tokenizer", torch.zeros(cfg.tokenizer_bytes, dtype=torch.uint8))
        self._parsed: tuple[tuple[int, int], object] | None = None

    def _backend(self):
        """The `tokenizers.Tokenizer` of the stored JSON (parsed once per buffer)."""
        from tokenizers import Tokenizer

        key = (id(self.tokenizer), self.tokenizer.data_ptr())
        if self._parsed is None or self._parsed[0] != key:
            if self.tokenizer.numel() == 0:
                raise UserInputError("this model's text encoder holds no tokenizer: no prompts")
            text = bytes(self.tokenizer.cpu().numpy()).decode("utf-8")
            backend = Tokenizer.from_str(text)
            backend.no_padding()
            backend.enable_truncation(max_length=self.max_tokens)
            self._parsed = (key, backend)
        return self._parsed[1]

    def tokenize(self, prompt: str) -> Tensor:
        """prompt -> token ids (1, L) int64, L <= max_tokens, end-of-sequence included."""
        ids = self._backend().encode(clean_prompt(prompt), add_special_tokens=True).ids
        return torch.tensor([ids], dtype=torch.long, device=self.umt5.shared.weight.device)

    def forward(self, ids: Tensor) -> Tensor:
        """ids (B, L) int64 (no padding) -> hidden states (B, L, d_model)."""
        embeds = self.umt5.shared(ids)
        return self.umt5(inputs_embeds=embeds).last_hidden_state

    def encode(self, prompt: str) -> Tensor:
        """prompt -> context (1, L, d_model): Wan's text context before zero padding."""
        return self(self.tokenize(prompt))


def tokenizer_tensor(tokenizer_json: str) -> Tensor:
    """A `tokenizers` JSON -> the uint8 tensor stored as `text_encoder.tokenizer`."""
    return torch.frombuffer(bytearray(tokenizer_json.encode("utf-8")), dtype=torch.uint8)
