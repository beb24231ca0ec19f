"""`tmrender convert`: a Wan2.1 release + a wav2vec2 folder -> one audio-ready tmrender model.

Steps (`convert_wan`):
1. Find the layout of the Wan folder: the original release (DiT safetensors shards with
   their index JSON, `Wan2.1_VAE.pth`, the CLIP and umT5 `.pth` files and the umT5
   tokenizer folder `google/umt5-xxl`) or diffusers' (`transformer/`, `vae/`,
   `image_encoder/`, `text_encoder/`, `tokenizer/`). The CLIP image encoder is read when
   the DiT has Wan's image branch (I2V), the umT5 text encoder when it has text
   cross-attention (every Wan2.1).
2. List every source tensor (name, shape, dtype) without reading data, rename it to
   tmrender's names (diffusers -> Wan2.1 -> ours, Wan2.1 -> transformers for the encoders;
   `tmrender.convert.names`), and derive the model's dimensions from the shapes (and
   config.json where shapes cannot tell, e.g. the number of heads). `--preset` only checks
   them.
3. Check the sources strictly against the model built from those dimensions on the meta
   device: a missing, extra or mis-shaped tensor is a one-line error.
4. Plan the output: source tensors, the wav2vec2 encoder, the umT5 tokenizer (its
   `tokenizers` JSON as a uint8 tensor, so the model stays one file), and the new audio
   layers (Wan init, output projections at zero, so the model starts as its base).
5. Stream it into one safetensors file, one source at a time (memory-mapped reads), under
   a temporary name renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from tmrender.config import ImageEncoderConfig, ModelConfig, TextEncoderConfig, VAEConfig
from tmrender.convert.names import (
    T5_HF_ALIAS,
    clip_hf_to_ours,
    clip_wan_to_hf,
    dit_diffusers_to_wan,
    t5_wan_to_hf,
    vae_diffusers_to_wan,
)
from tmrender.convert.stream_write import (
    CODE_DTYPES,
    Getter,
    PlannedTensor,
    ProgressFn,
    TensorGroup,
    dict_getter,
    write_streaming,
)
from tmrender.errors import UserInputError
from tmrender.files import atomic_write
from tmrender.models.attention import AudioCrossAttention, LayerNorm
from tmrender.models.checkpoint import checkpoint_metadata, compare_keys
from tmrender.models.conditioning import tokenizer_tensor
from tmrender.models.presets import PRESETS, WAN_1_3B_AUDIO
from tmrender.models.talking import TalkingModel
from tmrender.models.wan_vae import WAN21_LATENT_MEAN, WAN21_LATENT_STD

ORIGINAL_VAE = "Wan2.1_VAE.pth"
ORIGINAL_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
ORIGINAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER = "google/umt5-xxl"
DIT_STEM = "diffusion_pytorch_model"  # diffusers' weight files: STEM.safetensors[.index.json]
HF_STEM = "model"  # transformers' weight files (image_encoder/, text_encoder/)
DIT_FILE = f"{DIT_STEM}.safetensors"
DIT_INDEX = f"{DIT_STEM}.safetensors.index.json"
WAN_HEAD_DIM = 128  # every Wan2.1 DiT; used only when no config.json names the head count
CLIP_HEAD_DIM = 80  # open-clip ViT-H/14; used when no config.json names the head count
AUDIO_PARTS = (".audio_cross_attn.", ".norm_audio.")


class ConversionError(UserInputError):
    """A Wan / wav2vec2 folder that cannot be converted (one line, user-fixable)."""


@dataclass(frozen=True)
class SourceTensor:
    """Where one output tensor comes from: `file` (safetensors or .pth) and its name there;
    `shape` is the output's. `part`: which third (q, k, v) of a fused tensor's rows."""

    file: Path
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    part: int | None = None

    def take(self, tensor: Tensor) -> Tensor:
        """The source tensor as read -> the output tensor (its part, in `shape`)."""
        if self.part is not None:
            tensor = tensor.chunk(3, dim=0)[self.part]
        return tensor.reshape(self.shape)


# ---- 1. layout ---------------------------------------------------------------------------


def detect_layout(root: Path) -> str:
    """ "original" or "diffusers"; ConversionError naming what is missing otherwise."""
    if not root.is_dir():
        raise ConversionError(f"Wan folder not found: {root}")
    if (root / "transformer").is_dir() and (root / "vae").is_dir():
        return "diffusers"
    has_dit = (root / DIT_INDEX).is_file() or (root / DIT_FILE).is_file()
    if has_dit and (root / ORIGINAL_VAE).is_file():
        return "original"
    if has_dit:
        raise ConversionError(f"{root}: original Wan2.1 layout without {ORIGINAL_VAE}")
    raise ConversionError(
        f"{root} is not a Wan2.1 folder: expected {DIT_INDEX} (or {DIT_FILE}) and "
        f"{ORIGINAL_VAE} (original layout), or transformer/ and vae/ (diffusers layout)"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ConversionError(f"missing file: {path}") from err
    except (OSError, ValueError) as err:
        raise ConversionError(f"unreadable JSON {path}: {err}") from err


def _optional_json(path: Path) -> dict[str, Any]:
    return _read_json(path) if path.is_file() else {}


# ---- 2. source tensors -------------------------------------------------------------------


def safetensors_files(folder: Path, stem: str = DIT_STEM) -> list[Path]:
    """The weight files `stem.safetensors` of a folder: the shards of its index JSON, or the
    one file."""
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index} has no weight_map")
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        files = [folder / f"{stem}.safetensors"]
    for file in files:
        if not file.is_file():
            raise ConversionError(f"missing file: {file}")
    return files


def list_safetensors(files: list[Path]) -> dict[str, SourceTensor]:
    """{source name: SourceTensor} of safetensors files, from their headers only."""
    found: dict[str, SourceTensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                    piece = f.get_slice(name)
                    dtype = CODE_DTYPES.get(piece.get_dtype())
                    if dtype is None:
                        raise ConversionError(f"{file}: {name} has dtype {piece.get_dtype()}")
                    if name in found:
                        raise ConversionError(f"{name} appears in {found[name].file} and {file}")
                    found[name] = SourceTensor(file, name, tuple(piece.get_shape()), dtype)
        except (SafetensorError, OSError) as err:
            raise ConversionError(f"{file} is not a readable safetensors file ({err})") from err
    return found


def _load_pth(file: Path) -> dict[str, Tensor]:
    """A `.pth` state dict, memory-mapped (its tensors are read when touched)."""
    try:
        state = torch.load(str(file), map_location="cpu", mmap=True, weights_only=True)
    except FileNotFoundError as err:
        raise ConversionError(f"missing file: {file}") from err
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise ConversionError(f"{file} is not a readable PyTorch state dict ({err})") from err
    if not isinstance(state, dict):
        raise ConversionError(f"{file} does not hold a state dict")
    return state


def list_pth(file: Path) -> dict[str, SourceTensor]:
    state = _load_pth(file)
    return {k: SourceTensor(file, k, tuple(v.shape), v.dtype) for k, v in state.items()}


def _renamed(
    tensors: dict[str, SourceTensor], rename: Callable[[str], str | None]
) -> dict[str, SourceTensor]:
    out = {}
    for name, src in tensors.items():
        new = rename(name)
        if new is not None:
            out[new] = src
    return out


def wan_dit_tensors(root: Path, layout: str) -> tuple[dict[str, SourceTensor], dict[str, Any]]:
    """{Wan2.1 DiT name: source} and the DiT's config.json (may be empty)."""
    folder = root / "transformer" if layout == "diffusers" else root
    tensors = list_safetensors(safetensors_files(folder))
    config = _optional_json(folder / "config.json")
    if layout == "diffusers":
        tensors = _renamed(tensors, dit_diffusers_to_wan)
    return tensors, config


def wan_vae_tensors(root: Path, layout: str) -> tuple[dict[str, SourceTensor], dict[str, Any]]:
    """{Wan2.1 VAE name: source} and the diffusers VAE config.json (empty for original)."""
    if layout == "original":
        return list_pth(root / ORIGINAL_VAE), {}
    folder = root / "vae"
    config = _read_json(folder / "config.json")
    for key, ok in (("is_residual", False), ("patch_size", None), ("attn_scales", [])):
        if config.get(key, ok) != ok:
            raise ConversionError(f"{folder}: {key}={config[key]} is not a Wan2.1 VAE")
    blocks = int(config.get("num_res_blocks", 2))
    tensors = list_safetensors(safetensors_files(folder))
    return _renamed(tensors, lambda n: vae_diffusers_to_wan(n, blocks)), config


def _required(path: Path, what: str) -> Path:
    if not path.exists():
        raise ConversionError(f"missing {what}: {path}")
    return path


def rename_wan_clip(tensors: dict[str, SourceTensor]) -> dict[str, SourceTensor]:
    """Wan2.1 CLIP sources -> {CLIPVisionModel tower name: source} (split q|k|v, squeezed
    class token and position table; the text tower and head dropped)."""
    out = {}
    for name, src in tensors.items():
        for target in clip_wan_to_hf(name):
            shape = src.shape
            if target.part is not None:
                shape = (shape[0] // 3, *shape[1:])
            if target.keep_dims is not None:
                shape = shape[-target.keep_dims :]
            out[target.name] = dataclasses.replace(src, shape=shape, part=target.part)
    return out


def clip_tensors(root: Path, layout: str) -> tuple[dict[str, SourceTensor], dict[str, Any]]:
    """{CLIPVisionModel tower name: source} of the CLIP image encoder, and its config.json
    (diffusers layout; empty for the original `.pth`)."""
    if layout == "original":
        file = _required(root / ORIGINAL_CLIP, "Wan2.1 CLIP image encoder (I2V)")
        return rename_wan_clip(list_pth(file)), {}
    folder = _required(root / "image_encoder", "CLIP image encoder folder (I2V)")
    config = _read_json(folder / "config.json")
    config = config.get("vision_config", config)
    tensors = list_safetensors(safetensors_files(folder, HF_STEM))
    return _renamed(tensors, clip_hf_to_ours), config


def t5_tensors(root: Path, layout: str) -> tuple[dict[str, SourceTensor], dict[str, Any]]:
    """{UMT5EncoderModel name: source} of the umT5 text encoder, and its config.json
    (diffusers layout; empty for the original `.pth`)."""
    if layout == "original":
        file = _required(root / ORIGINAL_T5, "Wan2.1 umT5 text encoder")
        return _renamed(list_pth(file), t5_wan_to_hf), {}
    folder = _required(root / "text_encoder", "umT5 text encoder folder")
    tensors = list_safetensors(safetensors_files(folder, HF_STEM))
    for alias, name in T5_HF_ALIAS.items():
        if alias in tensors:
            source = tensors.pop(alias)
            tensors.setdefault(name, source)
    return tensors, _read_json(folder / "config.json")


def read_tokenizer(root: Path, layout: str) -> str:
    """The umT5 tokenizer of the Wan folder as a `tokenizers` JSON string (what the
    transformers fast tokenizer of that folder runs)."""
    from transformers import AutoTokenizer

    name = ORIGINAL_TOKENIZER if layout == "original" else "tokenizer"
    folder = _required(root / name, "umT5 tokenizer folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, ImportError, KeyError) as err:
        raise ConversionError(f"cannot read the tokenizer in {folder}: {err}") from err
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConversionError(f"{folder}: no fast tokenizer (tokenizer.json) to store")
    return backend.to_str()


# ---- 2b. dimensions from shapes ----------------------------------------------------------


def _shape(tensors: dict[str, SourceTensor], name: str, where: str) -> tuple[int, ...]:
    if name not in tensors:
        raise ConversionError(f"{where}: tensor {name} is missing")
    return tensors[name].shape


def dit_dimensions(tensors: dict[str, SourceTensor], config: dict[str, Any]) -> dict[str, Any]:
    """DiTConfig fields of the base DiT, from tensor shapes (+ config.json for the heads)."""
    where = "Wan DiT"
    patch = _shape(tensors, "patch_embedding.weight", where)
    dim, in_dim, *patch_size = patch
    head = _shape(tensors, "head.head.weight", where)
    layers = {int(m[1]) for n in tensors if (m := re.match(r"blocks\.(\d+)\.", n))}
    dims: dict[str, Any] = dict(
        patch_size=tuple(patch_size),
        in_dim=in_dim,
        out_dim=head[0] // math.prod(patch_size),
        dim=dim,
        ffn_dim=_shape(tensors, "blocks.0.ffn.0.weight", where)[0],
        freq_dim=_shape(tensors, "time_embedding.0.weight", where)[1],
        num_layers=max(layers) + 1 if layers else 0,
        qk_norm="blocks.0.self_attn.norm_q.weight" in tensors,
        cross_attn_norm="blocks.0.norm3.weight" in tensors,
        eps=float(config.get("eps", 1e-6)),
    )
    heads = config.get("num_heads", config.get("num_attention_heads"))
    dims["num_heads"] = int(heads) if heads else dim // WAN_HEAD_DIM
    if "text_embedding.0.weight" in tensors:
        dims["text_dim"] = tensors["text_embedding.0.weight"].shape[1]
        dims["text_len"] = int(config.get("text_len", 512))
    else:
        dims["text_len"] = 0
    dims["image_embedding"] = "img_emb.proj.1.weight" in tensors
    if dims["image_embedding"]:
        dims["image_dim"] = tensors["img_emb.proj.1.weight"].shape[1]
    return dims


def vae_config_from_tensors(tensors: dict[str, SourceTensor], config: dict[str, Any]) -> VAEConfig:
    """The Wan VAE's VAEConfig from its tensor shapes (latent statistics: diffusers'
    config.json, else Wan2.1's)."""
    where = "Wan VAE"
    conv_in = _shape(tensors, "encoder.conv1.weight", where)
    base, image_channels = conv_in[0], conv_in[1]
    z = _shape(tensors, "conv2.weight", where)[0]
    mults, counts, temporal = [], [0], []
    i, width = 0, base
    while any(n.startswith(f"encoder.downsamples.{i}.") for n in tensors):
        prefix = f"encoder.downsamples.{i}."
        if prefix + "residual.2.weight" in tensors:
            width = tensors[prefix + "residual.2.weight"].shape[0]
            counts[-1] += 1
        elif prefix + "resample.1.weight" in tensors:
            mults.append(width // base)
            temporal.append(prefix + "time_conv.weight" in tensors)
            counts.append(0)
        i += 1
    mults.append(width // base)
    if len(set(counts)) != 1 or counts[0] == 0:
        raise ConversionError(f"{where}: residual blocks per level {counts} are not Wan2.1's")
    mean = tuple(config.get("latents_mean", WAN21_LATENT_MEAN if z == 16 else ()))
    std = tuple(config.get("latents_std", WAN21_LATENT_STD if z == 16 else ()))
    try:
        return VAEConfig(
            kind="wan",
            image_channels=image_channels,
            latent_channels=z,
            spatial_stride=2 ** (len(mults) - 1),
            temporal_stride=2 ** sum(temporal),
            base_dim=base,
            dim_mult=tuple(mults),
            num_res_blocks=counts[0],
            temporal_downsample=tuple(temporal),
            latent_mean=mean,
            latent_std=std,
        )
    except AssertionError as err:
        raise ConversionError(f"{where}: unsupported dimensions ({err})") from err


def _layers(tensors: dict[str, SourceTensor], pattern: str) -> int:
    found = {int(m[1]) for n in tensors if (m := re.match(pattern, n))}
    return max(found) + 1 if found else 0


def image_encoder_config(
    tensors: dict[str, SourceTensor], config: dict[str, Any]
) -> ImageEncoderConfig:
    """The CLIP tower's ImageEncoderConfig from its tensor shapes (+ config.json for the
    heads, norm eps and activation; open-clip ViT-H/14's otherwise)."""
    where = "CLIP image encoder"
    dim, _, patch, _ = _shape(tensors, "embeddings.patch_embedding.weight", where)
    positions = _shape(tensors, "embeddings.position_embedding.weight", where)[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ConversionError(f"{where}: {positions} positions is not 1 + a square grid")
    heads = config.get("num_attention_heads") or dim // CLIP_HEAD_DIM
    try:
        return ImageEncoderConfig(
            hidden_size=dim,
            intermediate_size=_shape(tensors, "encoder.layers.0.mlp.fc1.weight", where)[0],
            num_hidden_layers=_layers(tensors, r"encoder\.layers\.(\d+)\."),
            num_attention_heads=int(heads),
            image_size=grid * patch,
            patch_size=patch,
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-5)),
            hidden_act=str(config.get("hidden_act", "gelu")),
        )
    except AssertionError as err:
        raise ConversionError(f"{where}: unsupported dimensions ({err})") from err


def text_encoder_config(
    tensors: dict[str, SourceTensor], config: dict[str, Any], tokenizer_bytes: int
) -> TextEncoderConfig:
    """The umT5 encoder's TextEncoderConfig from its tensor shapes (heads and buckets from
    the relative position table; config.json or umT5's values for the rest)."""
    where = "umT5 text encoder"
    vocab, dim = _shape(tensors, "shared.weight", where)
    attention = "encoder.block.0.layer.0.SelfAttention."
    buckets, heads = _shape(tensors, attention + "relative_attention_bias.weight", where)
    inner = _shape(tensors, attention + "q.weight", where)[0]
    ffn = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
    return TextEncoderConfig(
        vocab_size=vocab,
        d_model=dim,
        d_kv=inner // heads,
        d_ff=_shape(tensors, ffn, where)[0],
        num_layers=_layers(tensors, r"encoder\.block\.(\d+)\."),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=int(config.get("relative_attention_max_distance", 128)),
        layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-6)),
        feed_forward_proj=str(config.get("feed_forward_proj", "gated-gelu")),
        tokenizer_bytes=tokenizer_bytes,
    )


def check_encoders_fit(
    dims: dict[str, Any], image: ImageEncoderConfig | None, text: TextEncoderConfig | None
) -> None:
    """ConversionError when an encoder's output width does not match the DiT's input."""
    if image is not None and image.hidden_size != dims["image_dim"]:
        raise ConversionError(
            f"CLIP image encoder width {image.hidden_size} does not match the DiT's "
            f"image_dim {dims['image_dim']}"
        )
    if text is not None and text.d_model != dims["text_dim"]:
        raise ConversionError(
            f"umT5 text encoder width {text.d_model} does not match the DiT's "
            f"text_dim {dims['text_dim']}"
        )


# ---- 3. model config and strict checks ---------------------------------------------------


def _template(preset: str | None, dim: int) -> ModelConfig:
    """The preset that supplies the audio parts: the named one, else the Wan preset of the
    same width, else the 1.3B one."""
    if preset is not None:
        if preset not in PRESETS:
            raise ConversionError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[preset]
    for cfg in PRESETS.values():
        if cfg.name.startswith("wan") and cfg.dit.dim == dim:
            return cfg
    return WAN_1_3B_AUDIO


CHECKED_DIT_FIELDS = (
    "dim", "ffn_dim", "num_heads", "num_layers", "out_dim", "freq_dim", "patch_size",
    "text_dim", "image_embedding",
)  # fmt: skip


def encoder_mismatches(
    image: ImageEncoderConfig | None, text: TextEncoderConfig | None
) -> list[str]:
    """The dimensions of the encoders that differ from Wan2.1's (ViT-H/14, umT5-XXL)."""
    pairs = []
    if image is not None:
        pairs.append(("CLIP", image, ImageEncoderConfig()))
    if text is not None:
        pairs.append(("umT5", text, TextEncoderConfig(tokenizer_bytes=text.tokenizer_bytes)))
    return [
        f"{label} {f.name} {getattr(ours, f.name)} (Wan2.1 {getattr(wan, f.name)})"
        for label, ours, wan in pairs
        for f in dataclasses.fields(ours)
        if getattr(ours, f.name) != getattr(wan, f.name)
    ]


def check_against_preset(
    dims: dict[str, Any],
    audio_hidden: int,
    preset: ModelConfig,
    image: ImageEncoderConfig | None = None,
    text: TextEncoderConfig | None = None,
) -> None:
    """ConversionError listing every dimension that differs from the preset's (and, for
    the encoders, from Wan2.1's)."""
    wrong = [
        f"{k} {dims[k]} (preset {getattr(preset.dit, k)})"
        for k in CHECKED_DIT_FIELDS
        if k in dims and dims[k] != getattr(preset.dit, k)
    ]
    if preset.dit.in_dim not in (dims["in_dim"], 2 * dims["out_dim"] + preset.vae.temporal_stride):
        wrong.append(f"in_dim {dims['in_dim']} (preset {preset.dit.in_dim})")
    if audio_hidden != preset.audio_encoder.hidden_size:
        wrong.append(
            f"wav2vec2 hidden_size {audio_hidden} (preset {preset.audio_encoder.hidden_size})"
        )
    wrong += encoder_mismatches(image, text)
    if wrong:
        raise ConversionError(f"does not match preset {preset.name}: {'; '.join(wrong)}")


def model_config(
    dims: dict[str, Any],
    vae: VAEConfig,
    audio_encoder,
    template: ModelConfig,
    preset: str | None,
    size: int,
    image_encoder: ImageEncoderConfig | None = None,
    text_encoder: TextEncoderConfig | None = None,
) -> ModelConfig:
    """ModelConfig of the converted model: the source's DiT, VAE and encoders, the
    template's audio parts and sampler; with a preset asking for I2V input, `in_dim` is the
    preset's."""
    dit_fields = dict(dims)
    if preset is not None:
        dit_fields["in_dim"] = template.dit.in_dim
    dit = dataclasses.replace(template.dit, **dit_fields)
    try:
        return dataclasses.replace(
            template,
            name=preset or f"wan2.1-converted-{dims['dim']}x{dims['num_layers']}",
            height=size,
            width=size,
            vae=vae,
            dit=dit,
            audio_encoder=audio_encoder,
            image_encoder=image_encoder,
            text_encoder=text_encoder,
        )
    except AssertionError as err:
        raise ConversionError(f"cannot build the model config: {err}") from err


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of the TalkingModel of `cfg`, built on the meta device."""
    with torch.device("meta"):
        model = TalkingModel(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def is_audio_layer(name: str) -> bool:
    return any(part in name for part in AUDIO_PARTS)


def check_sources(
    what: str, prefix: str, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> None:
    """Strict: the source holds exactly the tensors of `expected` under `prefix` (audio
    layers excluded) with their shapes; ConversionError naming the differences."""
    wanted = {
        k[len(prefix) :]: v
        for k, v in expected.items()
        if k.startswith(prefix) and not is_audio_layer(k)
    }
    report = compare_keys(wanted, found)
    if not report.ok:
        raise ConversionError(f"{what} does not match its own dimensions: {report.describe()}")


# ---- 4. plan -----------------------------------------------------------------------------


def _planned(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> PlannedTensor:
    return PlannedTensor(name, tuple(shape), dtype)


def widen_patch_embedding(weight: Tensor, in_dim: int) -> Tensor:
    """A T2V patch embedding `dim, C, 1, ph, pw` -> I2V `dim, in_dim, 1, ph, pw`: the new
    mask and reference channels start at zero (the model starts as its T2V base)."""
    out = weight.new_zeros(weight.shape[0], in_dim, *weight.shape[2:])
    out[:, : weight.shape[1]] = weight
    return out


def source_groups(
    prefix: str,
    sources: dict[str, SourceTensor],
    expected: dict[str, tuple[int, ...]],
    label: str,
) -> list[TensorGroup]:
    """One group per source file, tensors in file order, named `prefix + Wan name`."""
    by_file: dict[Path, list[tuple[str, SourceTensor]]] = {}
    for name, src in sources.items():
        by_file.setdefault(src.file, []).append((prefix + name, src))
    groups = []
    for file, items in by_file.items():
        planned = tuple(_planned(n, expected[n], s.dtype) for n, s in items)
        wanted = {n: s for n, s in items}
        groups.append(TensorGroup(f"{label} {file.name}", planned, _file_getter(file, wanted)))
    return groups


def _file_getter(file: Path, wanted: dict[str, SourceTensor]):
    @contextmanager
    def opened() -> Iterator[Getter]:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                yield lambda name: wanted[name].take(f.get_tensor(wanted[name].name))
        else:
            state = _load_pth(file)
            yield lambda name: wanted[name].take(state[wanted[name].name])
            del state

    return opened


def audio_layer_state(cfg: ModelConfig, block: int, seed: int) -> dict[str, Tensor]:
    """The new audio layers of DiT block `block` (float32): Wan's init (xavier linears, zero
    biases, unit norms) with the output projection at zero; seeded per block."""
    d = cfg.dit
    torch.manual_seed(seed * 100_003 + block)
    norm = LayerNorm(d.dim, d.eps, True) if d.cross_attn_norm else nn.Identity()
    attn = AudioCrossAttention(
        d.dim, d.audio_dim, d.audio_attn_dim, d.audio_num_heads, d.qk_norm, d.eps
    )
    for m in attn.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.zeros_(attn.o.weight)
    nn.init.zeros_(attn.o.bias)
    state = {f"dit.blocks.{block}.norm_audio.{k}": v for k, v in norm.state_dict().items()}
    state.update(
        {f"dit.blocks.{block}.audio_cross_attn.{k}": v for k, v in attn.state_dict().items()}
    )
    return state


def audio_layer_groups(
    cfg: ModelConfig, expected: dict[str, tuple[int, ...]], dtype: torch.dtype, seed: int
) -> list[TensorGroup]:
    """One group per DiT block with its new audio layers, stored in the DiT's dtype."""
    groups = []
    for block in range(cfg.dit.num_layers):
        prefix = f"dit.blocks.{block}."
        names = [k for k in expected if k.startswith(prefix) and is_audio_layer(k)]
        planned = tuple(_planned(n, expected[n], dtype) for n in names)

        @contextmanager
        def opened(block: int = block) -> Iterator[Getter]:
            yield audio_layer_state(cfg, block, seed).pop

        groups.append(TensorGroup(f"audio layers {block}", planned, opened))
    return groups


def small_networks_group(
    cfg: ModelConfig, audio_encoder: nn.Module, expected: dict[str, tuple[int, ...]], seed: int
) -> TensorGroup:
    """wav2vec2 (as loaded), the audio projection and the silence embedding (new)."""
    from tmrender.models.audio import AudioProjection, SilenceEmbedding

    torch.manual_seed(seed)
    proj = AudioProjection(
        cfg.audio_proj, cfg.audio_window_frames, cfg.audio_feature_dim, cfg.dit.audio_dim
    )
    silence = SilenceEmbedding(cfg.audio_proj.tokens, cfg.dit.audio_dim)
    tensors: dict[str, Tensor] = {}
    for prefix, module in (
        ("audio_encoder.", audio_encoder),
        ("audio_proj.", proj),
        ("silence.", silence),
    ):
        tensors.update({prefix + k: v for k, v in module.state_dict().items()})
    planned = tuple(_planned(n, expected[n], t.dtype) for n, t in tensors.items())
    return TensorGroup("wav2vec2 and audio projection", planned, dict_getter(tensors))


# ---- 5. the command ----------------------------------------------------------------------


def load_wav2vec2(folder: Path, samples_per_frame: int):
    """AudioEncoder of a local transformers wav2vec2 folder; ConversionError if unreadable."""
    from tmrender.models.audio import AudioEncoder

    if not (folder / "config.json").is_file():
        raise ConversionError(f"{folder} is not a transformers wav2vec2 folder (no config.json)")
    try:
        return AudioEncoder.from_pretrained(folder, samples_per_frame)
    except (OSError, ValueError) as err:
        raise ConversionError(f"cannot load wav2vec2 from {folder}: {err}") from err


@dataclass(frozen=True)
class ConversionPlan:
    config: ModelConfig
    layout: str
    groups: list[TensorGroup]
    extra: dict[str, Any]


def image_encoder_sources(
    root: Path, layout: str, dims: dict[str, Any]
) -> tuple[dict[str, SourceTensor], ImageEncoderConfig | None]:
    """The CLIP image encoder's sources and config; none for a DiT without `img_emb`."""
    if not dims["image_embedding"]:
        return {}, None
    tensors, config = clip_tensors(root, layout)
    return tensors, image_encoder_config(tensors, config)


def text_encoder_sources(
    root: Path, layout: str, dims: dict[str, Any]
) -> tuple[dict[str, SourceTensor], TextEncoderConfig | None, str]:
    """The umT5 encoder's sources, config and tokenizer JSON; none for a DiT without text
    cross-attention."""
    if dims["text_len"] == 0:
        return {}, None, ""
    tensors, config = t5_tensors(root, layout)
    tokenizer = read_tokenizer(root, layout)
    return tensors, text_encoder_config(tensors, config, len(tokenizer.encode())), tokenizer


def tokenizer_group(tokenizer_json: str) -> TensorGroup:
    """The tokenizer JSON as the uint8 tensor `text_encoder.tokenizer`."""
    name = "text_encoder.tokenizer"
    tensor = tokenizer_tensor(tokenizer_json)
    planned = (PlannedTensor(name, tuple(tensor.shape), torch.uint8),)
    return TensorGroup("umT5 tokenizer", planned, dict_getter({name: tensor}))


def _elements(sources: dict[str, SourceTensor]) -> int:
    return sum(math.prod(s.shape) for s in sources.values())


def plan_conversion(
    wan_dir: Path, wav2vec2_dir: Path, preset: str | None = None, size: int = 512, seed: int = 0
) -> ConversionPlan:
    """Steps 1-4: read every header, derive and check the dimensions, plan the output."""
    # 1. layout; 2. source tensors and dimensions
    layout = detect_layout(wan_dir)
    dit_src, dit_json = wan_dit_tensors(wan_dir, layout)
    vae_src, vae_json = wan_vae_tensors(wan_dir, layout)
    dims = dit_dimensions(dit_src, dit_json)
    vae_cfg = vae_config_from_tensors(vae_src, vae_json)
    clip_src, image_cfg = image_encoder_sources(wan_dir, layout, dims)
    t5_src, text_cfg, tokenizer = text_encoder_sources(wan_dir, layout, dims)
    check_encoders_fit(dims, image_cfg, text_cfg)
    if image_cfg is not None:
        dims["image_tokens"] = image_cfg.tokens
    template = _template(preset, dims["dim"])
    samples_per_frame = template.samples_per_frame
    audio_encoder = load_wav2vec2(wav2vec2_dir, samples_per_frame)
    if preset is not None:
        check_against_preset(dims, audio_encoder.cfg.hidden_size, template, image_cfg, text_cfg)
    cfg = model_config(
        dims, vae_cfg, audio_encoder.cfg, template, preset, size, image_cfg, text_cfg
    )
    # 3. strict checks against the model of those dimensions
    expected = expected_shapes(cfg)
    widen = cfg.dit.in_dim != dims["in_dim"]
    dit_found = {k: s.shape for k, s in dit_src.items()}
    if widen:
        dit_found["patch_embedding.weight"] = expected["dit.patch_embedding.weight"]
    check_sources(f"Wan DiT in {wan_dir}", "dit.", expected, dit_found)
    encoders = (
        ("vae.", vae_src, "Wan VAE", "VAE"),
        ("image_encoder.clip.", clip_src, "CLIP image encoder", "CLIP"),
        ("text_encoder.umt5.", t5_src, "umT5 text encoder", "umT5"),
    )
    for prefix, sources, what, _ in encoders:
        if sources:
            found = {k: s.shape for k, s in sources.items()}
            check_sources(f"{what} in {wan_dir}", prefix, expected, found)
    # 4. plan: small networks, tokenizer, VAE, encoders, DiT shards, audio layers
    dit_dtype = dit_src["patch_embedding.weight"].dtype
    groups = [small_networks_group(cfg, audio_encoder.eval(), expected, seed)]
    if tokenizer:
        groups.append(tokenizer_group(tokenizer))
    for prefix, sources, _, label in encoders:
        groups += source_groups(prefix, sources, expected, label)
    dit_groups = source_groups("dit.", dit_src, expected, "DiT")
    if widen:
        dit_groups = [_with_widening(g, cfg.dit.in_dim) for g in dit_groups]
    groups += dit_groups
    groups += audio_layer_groups(cfg, expected, dit_dtype, seed)
    planned = {t.name: t.shape for g in groups for t in g.tensors}
    report = compare_keys(expected, planned)
    assert report.ok, f"conversion plan incomplete: {report.describe()}"
    sourced = {
        "dit.base": _elements(dit_src),
        "vae": _elements(vae_src),
        "image_encoder": _elements(clip_src),
        "text_encoder": _elements(t5_src),
        "audio_encoder": sum(p.numel() for p in audio_encoder.parameters()),
    }
    sourced = {k: v for k, v in sourced.items() if v}
    extra = {
        "converted_from": {"layout": layout, "wan": str(wan_dir), "wav2vec2": str(wav2vec2_dir)},
        "preset_checked": preset,
        "source_parameters": sourced,
        "trained_parts": list(sourced),
        "untrained_parts": ["dit.audio", "audio_proj", "silence"],
        "i2v_input_added": widen,
        "seed": seed,
    }
    return ConversionPlan(cfg, layout, groups, extra)


def _with_widening(group: TensorGroup, in_dim: int) -> TensorGroup:
    name = "dit.patch_embedding.weight"
    if all(t.name != name for t in group.tensors):
        return group

    @contextmanager
    def opened() -> Iterator[Getter]:
        with group.open() as get:
            yield lambda n: widen_patch_embedding(get(n), in_dim) if n == name else get(n)

    return TensorGroup(group.label, group.tensors, opened)


def convert_wan(
    wan_dir: Path | str,
    wav2vec2_dir: Path | str,
    output: Path | str,
    preset: str | None = None,
    size: int = 512,
    seed: int = 0,
    on_progress: ProgressFn | None = None,
) -> ConversionPlan:
    """Convert and write `output` (renamed into place when complete). Returns the plan."""
    output = Path(output)
    if not output.parent.is_dir():
        raise ConversionError(f"output folder does not exist: {output.parent}")
    plan = plan_conversion(Path(wan_dir), Path(wav2vec2_dir), preset, size, seed)
    metadata = checkpoint_metadata(plan.config, trained=False, extra_meta=plan.extra)
    try:
        with atomic_write(output) as partial:
            write_streaming(partial, plan.groups, metadata, on_progress)
    except OSError as err:
        raise ConversionError(f"cannot write {output}: {err.strerror or err}") from err
    return plan
