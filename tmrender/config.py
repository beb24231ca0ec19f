"""Frozen dataclasses with the dimensions of every network. A checkpoint stores its
`ModelConfig` as JSON in its safetensors metadata, so loading needs nothing else.

Sections: VAE (owned by tmrender/models/vae.py), then the DiT, audio encoder, audio
projection, sampler, Wan's image and text encoders, and the `ModelConfig` that bundles them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, get_args, get_type_hints

from tmrender.errors import UserInputError


class ConfigError(UserInputError, ValueError):
    """A config value that does not fit (a preset, a checkpoint's metadata, an option):
    shown by the CLI as one line."""


def require(ok: bool, message: str) -> None:
    """Raise `ConfigError(message)` unless `ok` (validation that survives `python -O`)."""
    if not ok:
        raise ConfigError(message)


# ---- VAE ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig:
    """Causal video autoencoder (`tmrender.models.vae.CausalVAE`), TAEHV-like and light.

    Stride (temporal_stride, spatial_stride, spatial_stride) = (4, 8, 8), Wan convention:
    `1 + 4k` frames <-> `1 + k` latent frames, the first frame encoded alone. Widths are
    listed in processing order; with `n` levels, level `i` of the decoder runs at spatial
    stride `spatial_stride / 2**i` and level `i` of the encoder at `spatial_stride /
    2**(n - 1 - i)`. The finest level talks to pixels through a pixel (un)shuffle by its
    stride (no convolution at full resolution when that stride is > 1). Defaults: tm-mini.
    """

    # interface
    image_channels: int = 3
    latent_channels: int = 16
    temporal_stride: int = 4
    spatial_stride: int = 8
    # encoder: widths and residual blocks per level, fine -> coarse, at frame rate;
    # then blocks at latent rate after the time pooling
    enc_channels: tuple[int, ...] = (32, 48, 64)
    enc_blocks: tuple[int, ...] = (1, 1, 1)
    enc_latent_blocks: int = 1
    # decoder: blocks on the latents, then widths per level, coarse -> fine; time
    # is expanded x temporal_stride at the start of level dec_expand_level (after its x2
    # upsample; level 0: after the latent blocks): levels before it run at the latent rate
    dec_latent_blocks: int = 2
    dec_channels: tuple[int, ...] = (64, 48, 32)
    dec_expand_level: int = 1
    # every residual block is causal in time: it sees this many frames (itself + past)
    temporal_kernel: int = 2
    # per-channel statistics of the raw latents (set by `tmrender train vae`): `encode`
    # returns (raw - latent_mean) / latent_std, so the DiT sees unit-scale latents, and
    # `decode` undoes it; empty = identity (an untrained VAE)
    latent_mean: tuple[float, ...] = ()
    latent_std: tuple[float, ...] = ()
    # which autoencoder: "mini" (the fields above) or "wan" (Wan2.1's causal 3-D conv VAE,
    # `tmrender.models.wan_vae.WanVAE`, with the fields below; Wan's `WanVAE_` arguments
    # dim, dim_mult, num_res_blocks, temperal_downsample; the mini fields are then unused)
    kind: str = "mini"
    base_dim: int = 96
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim_mult", tuple(int(v) for v in self.dim_mult))
        object.__setattr__(
            self, "temporal_downsample", tuple(bool(v) for v in self.temporal_downsample)
        )
        require(self.kind in ("mini", "wan"), f"unknown VAE kind {self.kind!r}")
        if self.kind == "wan":
            levels = len(self.dim_mult)
            require(
                len(self.temporal_downsample) == levels - 1,
                "Wan VAE: one temporal_downsample flag per downsample",
            )
            require(
                self.spatial_stride == 2 ** (levels - 1),
                "Wan VAE: spatial_stride = 2 ** (len(dim_mult) - 1)",
            )
            require(
                self.temporal_stride == 2 ** sum(self.temporal_downsample),
                "Wan VAE: temporal_stride must be 2 ** (number of temporal downsamples)",
            )
        for name in ("enc_channels", "enc_blocks", "dec_channels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        for name in ("latent_mean", "latent_std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
            require(
                len(getattr(self, name)) in (0, self.latent_channels),
                f"{name}: none or one value per latent channel ({self.latent_channels})",
            )
        require(all(s > 0 for s in self.latent_std), "latent_std must be positive")
        levels = len(self.dec_channels)
        require(levels >= 1 and len(self.enc_channels) >= 1, "VAE: need at least one level")
        for n in (len(self.enc_channels), levels):
            require(
                self.spatial_stride % 2 ** (n - 1) == 0,
                f"{n} levels (x2 each) do not fit spatial_stride {self.spatial_stride}",
            )
        require(len(self.enc_blocks) == len(self.enc_channels), "enc_blocks: one per level")
        require(
            self.temporal_stride >= 1 and self.temporal_kernel >= 1,
            "temporal_stride and temporal_kernel must be at least 1",
        )
        require(0 <= self.dec_expand_level < levels, "dec_expand_level must name a level")


# ---- DiT, audio encoder, audio projection, sampler, ModelConfig --------------------------


@dataclass(frozen=True)
class DiTConfig:
    """Wan2.1-style diffusion transformer (`tmrender.models.dit.WanDiT`).

    Field names follow `WanModel.__init__` of Wan2.1 (wan/modules/model.py) so that its
    checkpoints map in. Image-to-video input channels are Wan's: `in_dim = out_dim` (noisy
    latent) `+ mask_channels` (one per video frame of a latent frame) `+ out_dim`
    (reference latent); `in_dim == out_dim` means no image conditioning. Defaults: tm-mini.
    """

    # patchify and channels
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_dim: int = 36
    out_dim: int = 16
    # transformer
    dim: int = 128
    ffn_dim: int = 512
    freq_dim: int = 64
    num_heads: int = 2
    num_layers: int = 4
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    # text / CLIP-image context of Wan's `cross_attn`; text_len == 0: no cross_attn at all
    text_len: int = 0
    text_dim: int = 4096
    image_embedding: bool = False  # Wan I2V: `img_emb` + k_img/v_img/norm_k_img per block
    image_tokens: int = 257
    image_dim: int = 1280
    # timestep embedding and 3-D RoPE
    num_train_timesteps: int = 1000  # the network sees t * num_train_timesteps (Wan)
    rope_theta: float = 10000.0
    # audio cross-attention added to every block (output projection zero-initialised)
    audio_layers: bool = True
    audio_dim: int = 64  # width of the incoming audio tokens
    audio_attn_dim: int = 64  # inner width of q/k/v
    audio_num_heads: int = 1
    # streaming: latent frames of the anchor (the reference image) at the start of a clip
    anchor_frames: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        require(
            len(self.patch_size) == 3 and self.patch_size[0] == 1,
            "patch_size must be (1, ph, pw): one latent frame per token frame",
        )
        require(
            self.dim % self.num_heads == 0 and self.head_dim % 2 == 0,
            f"DiT dim {self.dim} must split into num_heads {self.num_heads} of even width",
        )
        require(
            self.audio_attn_dim % self.audio_num_heads == 0,
            f"audio_attn_dim {self.audio_attn_dim} must split into {self.audio_num_heads} heads",
        )
        require(
            self.in_dim == self.out_dim or self.in_dim > 2 * self.out_dim,
            f"in_dim {self.in_dim}: either out_dim (no image) or 2*out_dim + mask channels",
        )
        require(not self.image_embedding or self.text_len > 0, "img_emb lives in cross_attn")
        require(self.anchor_frames >= 1, "anchor_frames must be at least 1")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def mask_channels(self) -> int:
        """Wan I2V mask channels (one per video frame of a latent frame); 0 without image."""
        return 0 if self.in_dim == self.out_dim else self.in_dim - 2 * self.out_dim

    @property
    def has_context(self) -> bool:
        return self.text_len > 0


@dataclass(frozen=True)
class AudioEncoderConfig:
    """A `transformers.Wav2Vec2Config` subset (`tmrender.models.audio.AudioEncoder`).

    Field names are Wav2Vec2Config's. `layers` picks entries of `hidden_states` (0 = the
    feature projection, i = output of transformer layer i). Defaults: tm-mini's tiny encoder.
    """

    # transformer
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 128
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = False
    # convolutional feature encoder: 16 kHz -> 50 Hz with wav2vec2's kernels and strides
    conv_dim: tuple[int, ...] = (32, 32, 32, 32, 32, 32, 32)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    num_conv_pos_embeddings: int = 16
    num_conv_pos_embedding_groups: int = 4
    # input and output
    sample_rate: int = 16000
    normalize_input: bool = False  # zero mean, unit variance per call (wav2vec2-large style)
    layers: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        for name in ("conv_dim", "conv_kernel", "conv_stride", "layers"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        require(
            len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride),
            "conv_dim, conv_kernel and conv_stride: one value per convolution",
        )
        require(
            self.feat_extract_norm in ("group", "layer"),
            f"unknown feat_extract_norm {self.feat_extract_norm!r}",
        )
        require(
            bool(self.layers) and all(0 <= i <= self.num_hidden_layers for i in self.layers),
            f"audio encoder layers {self.layers} must be in 0..{self.num_hidden_layers}",
        )

    @property
    def total_stride(self) -> int:
        """Input samples per output feature (320 for wav2vec2: 16 kHz -> 50 Hz)."""
        return math.prod(self.conv_stride)

    @property
    def receptive_field(self) -> int:
        """Input samples seen by one output feature (400 for wav2vec2)."""
        field, jump = 1, 1
        for k, s in zip(self.conv_kernel, self.conv_stride, strict=True):
            field += (k - 1) * jump
            jump *= s
        return field


MOUTH_PARAMS = 7  # the mouth parameters per frame (`tmrender.data.visemes.PARAMS`)


@dataclass(frozen=True)
class AudioProjConfig:
    """Audio projection (`tmrender.models.audio.AudioProjection`): the features of a latent
    frame's own video frames plus `window` frames either side -> `tokens` audio tokens of
    width `DiTConfig.audio_dim`. Input and output widths are derived in `ModelConfig`."""

    window: int = 2
    tokens: int = 8
    hidden_dim: int = 256


# the temporal filter a render applies (`RenderOptions.temporal`): the model's zero-lag
# one, which holds frames back, or a causal one that holds none (live use)
TEMPORAL_FILTERS = ("centred", "causal")


def symmetric_taps(taps: tuple[float, ...]) -> bool:
    """Whether FIR taps make a zero-lag smoothing filter: odd length, symmetric, sum > 0."""
    return len(taps) % 2 == 1 and taps == taps[::-1] and sum(taps) > 0


def retime_weights(weights: tuple[float, ...]) -> bool:
    """Whether re-timing weights are () or (back, forward), each in 0..0.5."""
    return len(weights) == 0 or (len(weights) == 2 and all(0.0 <= w <= 0.5 for w in weights))


def keep_levels(keep: tuple[float, ...]) -> bool:
    """Whether edge-keeping levels are a pair (lo, hi) with 0 <= lo < hi."""
    return len(keep) == 2 and 0 <= keep[0] < keep[1]


@dataclass(frozen=True)
class SamplerConfig:
    """Rectified-flow sampling (`tmrender.diffusion`). Timesteps are in [0, 1], t = 1 noise."""

    shift: float = 3.0  # SD3/Wan timestep shift s: t' = s t / (1 + (s - 1) t)
    # teacher: classifier-free guidance scale on audio (its Euler step count is an option
    # of the stages that sample it)
    cfg_scale: float = 4.0
    # student: exactly 2 network evaluations; unshifted, see `student_sigmas`
    student_timesteps: tuple[float, float] = (1.0, 0.5)
    # timestep at which a clean chunk is re-run to refresh the KV cache
    context_timestep: float = 0.0
    # how a finished chunk becomes the next chunk's context: "refresh" re-runs it at
    # context_timestep (`WanDiT.commit_chunk`); "last_step" keeps the K/V of its last
    # denoising step (`commit_kv`: one forward less per chunk; the student must be
    # trained for it, `tmrender train dmd --context last_step`)
    context: str = "refresh"
    # symmetric taps of a zero-lag filter over the rendered frames' time axis
    # (`tmrender.render.temporal.TemporalFilter`), () = none. Generated latent frames
    # disagree a little with their neighbours, so the picture steps every
    # frames_per_latent frames; (1, 2, 2, 2, 1) cancels period 4 and 2 exactly
    deflicker_taps: tuple[float, ...] = ()
    # (lo, hi) in 0..255 levels, () = off: where a pixel's raw value is more than hi away
    # from the filtered one (mean over colour channels) the raw value is kept, below lo the
    # filtered one, a linear blend between. Flicker is a step of a few levels, a moving lip
    # edge tens: the filter then removes the one and leaves the other (and its timing) alone
    deflicker_keep: tuple[float, ...] = ()
    # (back, forward) in 0..0.5, () = off, applied before the filter
    # (`tmrender.render.temporal.Retimer`): the decoder shows about the same mouth on every
    # frame of a latent, so the first frame of each latent leans back towards the frame
    # before it by `back`, the last forward towards the frame after it by `forward`
    retime: tuple[float, ...] = ()
    # (lo, hi) in 0..255 levels, () = off, applied last (`tmrender.render.reference`):
    # where a frame's pixel (mean over colour channels) is within lo levels of the model's
    # steady drawing of the portrait it shows the portrait's value, beyond hi the portrait
    # plus the frame's departure from that drawing, a linear blend between. What does not
    # move (background, hair, a still cheek) shows the portrait's own detail; a moving
    # mouth or head edge differs by tens of levels
    keep_reference: tuple[float, ...] = ()
    # frames, 0 = off: the time constant with which the keeper's picture of the model's
    # steady drawing follows the render where it rests (it starts as the decoder's picture
    # of the anchor latent); the model drifts a few levels off that picture and keeps
    # to its own, which would otherwise count as motion
    keep_follow: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "student_timesteps", tuple(float(t) for t in self.student_timesteps)
        )
        taps = tuple(float(w) for w in self.deflicker_taps)
        object.__setattr__(self, "deflicker_taps", taps)
        keep = tuple(float(v) for v in self.deflicker_keep)
        object.__setattr__(self, "deflicker_keep", keep)
        require(
            not keep or keep_levels(keep),
            f"deflicker_keep must be () or (lo, hi) with 0 <= lo < hi: {keep}",
        )
        keep_ref = tuple(float(v) for v in self.keep_reference)
        object.__setattr__(self, "keep_reference", keep_ref)
        require(
            not keep_ref or keep_levels(keep_ref),
            f"keep_reference must be () or (lo, hi) with 0 <= lo < hi: {keep_ref}",
        )
        require(
            self.keep_follow == 0 or self.keep_follow >= 1,
            f"keep_follow must be 0 or >= 1 frame: {self.keep_follow}",
        )
        retime = tuple(float(v) for v in self.retime)
        object.__setattr__(self, "retime", retime)
        require(retime_weights(retime), f"retime must be () or (back, forward) in 0..0.5: {retime}")
        require(
            not taps or symmetric_taps(taps),
            f"deflicker_taps must be symmetric, of odd length, with a positive sum: {taps}",
        )
        require(len(self.student_timesteps) == 2, "the student takes exactly 2 steps")
        require(self.context in ("refresh", "last_step"), f"unknown context {self.context!r}")

    @property
    def student_sigmas(self) -> tuple[float, float]:
        """The student's timesteps after the shift: what the network sees."""
        s = self.shift
        return tuple(s * t / (1 + (s - 1) * t) for t in self.student_timesteps)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """CLIP vision tower of Wan2.1 I2V (`tmrender.models.conditioning.ImageEncoder`, a
    `transformers.CLIPVisionModel`); field names are CLIPVisionConfig's. Defaults: the
    open-clip XLM-RoBERTa ViT-H/14 visual tower (wan/modules/clip.py)."""

    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    # the features are `hidden_states[feature_layer]`: -2 = the output of all blocks but
    # the last (Wan's `use_31_block`, diffusers' `hidden_states[-2]`)
    feature_layer: int = -2
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)

    def __post_init__(self) -> None:
        for name in ("image_mean", "image_std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        require(
            self.hidden_size % self.num_attention_heads == 0,
            f"image encoder width {self.hidden_size} must split into "
            f"{self.num_attention_heads} heads",
        )
        require(
            self.image_size % self.patch_size == 0,
            f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}",
        )
        require(
            -self.num_hidden_layers - 1 <= self.feature_layer <= self.num_hidden_layers,
            f"feature_layer {self.feature_layer} names no hidden state",
        )

    @property
    def tokens(self) -> int:
        """Image tokens: the class token + one per patch (257 for ViT-H/14 at 224)."""
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class TextEncoderConfig:
    """umT5 encoder of Wan2.1 (`tmrender.models.conditioning.TextEncoder`, a
    `transformers.UMT5EncoderModel`); field names are UMT5Config's. Defaults: umT5-XXL
    (wan/modules/t5.py `umt5_xxl`). `tokenizer_bytes`: length of the tokenizer (the
    `tokenizers` JSON of umT5's tokenizer) stored in the checkpoint beside the weights."""

    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    tokenizer_bytes: int = 0

    def __post_init__(self) -> None:
        require(self.tokenizer_bytes >= 0, "tokenizer_bytes must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a `TalkingModel`; stored as JSON in every checkpoint."""

    name: str = "tm-mini"
    height: int = 128
    width: int = 128
    fps: int = 25
    chunk_latent_frames: int = 2  # C: latent frames generated per autoregressive step
    vae: VAEConfig = field(default_factory=VAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    audio_encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    audio_proj: AudioProjConfig = field(default_factory=AudioProjConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # Wan2.1's conditioning encoders, in converted large models only (tm-mini has none)
    image_encoder: ImageEncoderConfig | None = None
    text_encoder: TextEncoderConfig | None = None

    def __post_init__(self) -> None:
        ph, pw = self.dit.patch_size[1:]
        cell = self.vae.spatial_stride
        require(
            self.height % (cell * ph) == 0 and self.width % (cell * pw) == 0,
            f"{self.height}x{self.width} is not a multiple of VAE stride x patch",
        )
        require(
            self.dit.out_dim == self.vae.latent_channels,
            f"DiT out_dim {self.dit.out_dim} != VAE latent_channels {self.vae.latent_channels}",
        )
        require(
            self.dit.mask_channels in (0, self.vae.temporal_stride),
            "Wan I2V mask: one channel per video frame of a latent frame",
        )
        require(
            self.audio_encoder.sample_rate % self.fps == 0,
            f"audio sample rate {self.audio_encoder.sample_rate} is not a multiple of "
            f"fps {self.fps}",
        )
        require(
            self.samples_per_frame % self.audio_encoder.total_stride == 0,
            "audio features must tile video frames exactly",
        )
        require(self.chunk_latent_frames >= 1, "chunk_latent_frames must be at least 1")
        if self.image_encoder is not None:
            require(self.dit.image_embedding, "an image encoder needs the DiT's img_emb")
            require(
                self.image_encoder.hidden_size == self.dit.image_dim,
                f"image encoder width {self.image_encoder.hidden_size} != DiT image_dim "
                f"{self.dit.image_dim}",
            )
            require(
                self.image_encoder.tokens == self.dit.image_tokens,
                f"image encoder tokens {self.image_encoder.tokens} != DiT image_tokens "
                f"{self.dit.image_tokens}",
            )
        if self.text_encoder is not None:
            require(self.dit.has_context, "a text encoder needs the DiT's cross-attention")
            require(
                self.text_encoder.d_model == self.dit.text_dim,
                f"text encoder width {self.text_encoder.d_model} != DiT text_dim "
                f"{self.dit.text_dim}",
            )

    # ---- derived sizes
    @property
    def latent_height(self) -> int:
        return self.height // self.vae.spatial_stride

    @property
    def latent_width(self) -> int:
        return self.width // self.vae.spatial_stride

    @property
    def token_grid(self) -> tuple[int, int]:
        """DiT tokens per latent frame along (H, W)."""
        return (
            self.latent_height // self.dit.patch_size[1],
            self.latent_width // self.dit.patch_size[2],
        )

    @property
    def tokens_per_latent_frame(self) -> int:
        return math.prod(self.token_grid)

    @property
    def frames_per_latent(self) -> int:
        return self.vae.temporal_stride

    @property
    def frames_per_chunk(self) -> int:
        return self.frames_per_latent * self.chunk_latent_frames

    @property
    def samples_per_frame(self) -> int:
        return self.audio_encoder.sample_rate // self.fps

    @property
    def audio_window_frames(self) -> int:
        """Video frames of audio seen by one latent frame: its own plus `window` each side."""
        return self.frames_per_latent + 2 * self.audio_proj.window

    @property
    def audio_feature_dim(self) -> int:
        """Width of one video frame's audio features: selected layers x hidden size."""
        return len(self.audio_encoder.layers) * self.audio_encoder.hidden_size

    # ---- JSON (nested, round-trip exact)
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return _from_dict(cls, json.loads(text))


# Fields that checkpoints of earlier versions store and this version no longer has, per
# config class: field -> (whether a stored value means what this version does, what the
# field was). Such a value is dropped on load; any other names a removed feature.
REMOVED_FIELDS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "VAEConfig": {
        "dec_lookahead": (lambda v: v == 0, "the look-ahead decoder"),
        "dec_blocks": (lambda v: not any(v), "residual blocks in the decoder levels"),
    },
    "AudioProjConfig": {
        "source": (lambda v: v == "features", "the narrow audio path"),
        "head_hidden": (lambda v: True, "the narrow audio path's mouth head"),
        "head_context": (lambda v: True, "the narrow audio path's mouth head"),
    },
    "SamplerConfig": {"teacher_steps": (lambda v: True, "a teacher step count never read")},
}


def _drop_removed(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` without the `REMOVED_FIELDS` of `cls` whose values mean what this version
    does; a value that needs a removed feature raises `ConfigError`."""
    removed = REMOVED_FIELDS.get(cls.__name__, {})
    for name in sorted(set(data) & set(removed)):
        harmless, feature = removed[name]
        require(
            harmless(data[name]),
            f"{cls.__name__}.{name} = {data[name]!r} needs {feature}, removed from tmrender "
            "(git history keeps it)",
        )
    return {k: v for k, v in data.items() if k not in removed}


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from `asdict` output; lists become tuples.
    Fields removed since the data was written are dropped (`REMOVED_FIELDS`)."""
    data = _drop_removed(cls, data)
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        target = _config_class(hints[name])
        if target is not None and isinstance(value, dict):
            value = _from_dict(target, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _config_class(hint: Any) -> type | None:
    """The dataclass of a field typed `Config` or `Config | None`, else None."""
    if is_dataclass(hint):
        return hint
    found = [arg for arg in get_args(hint) if is_dataclass(arg)]
    return found[0] if len(found) == 1 else None
