"""The latent cache of the DiT stages (`teacher`, `ode`, `dmd`): every clip of a corpus
split encoded once by the frozen VAE and audio encoder, kept as tensors that can live on
the training device, and the window batches cut from it.

Per clip (T video frames, `Tl = 1 + (T - 1) // 4` latent frames; trailing frames that do
not fill a latent frame are dropped):

- latents: the VAE's encoding of the whole clip `1 + 4k` frames (as `vae.encode` returns
  them), so that latent frame `j >= 1` covers video frames `4j - 3 .. 4j` and carries the
  VAE's causal context exactly as a stream does;
- audio: per latent frame the audio window the renderer gives it (its 4 video frames
  plus `window` frames either side of features from the frozen audio encoder, encoded
  with the renderer's own segment framing, `tmrender.render.features.FeatureProducer`);
- voiced: per latent frame, whether the renderer's voice activity marks any frame of that
  window voiced (a chunk speaks when any of its latent frames does, as in
  `tmrender.render.pipeline.chunk_is_speaking`);
- boxes: mouth and face box of each latent frame on the latent grid (union over its
  video frames, in latent cells, x1/y1 exclusive);
- opening: the true mouth opening of each latent frame's video frames (validation only);
- refs: `refs_per_clip` reference latents, single frames spread over the clip encoded
  alone (as the renderer encodes the user's image); a window takes its anchor from a
  reference outside itself, so the model cannot copy the reference mouth.

The frames of all clips are stored one clip after another (`clip_start` offsets). A
window of `L` latent frames starts at a clip's latent frame `j >= 1` (latent 0 is the
clip's first frame encoded alone, an anchor, not a chunk). File: one `torch.save`d dict
in the run folder, rebuilt when missing or when its key (the frozen networks' weights,
the corpus and the cache layout) no longer matches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tmrender.data.corpus import list_clips, read_clip
from tmrender.data.visemes import PARAMS
from tmrender.errors import UserInputError
from tmrender.files import atomic_write
from tmrender.models.audio import audio_windows
from tmrender.models.talking import TalkingModel
from tmrender.render.features import FeatureProducer
from tmrender.train.framing import ArrayStream

CACHE_VERSION = 1
OPEN = PARAMS.index("open")
MOUTH, FACE = 0, 1  # box rows of the corpus `boxes.npy` and of `LatentCache.boxes`


# ---- the cache -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentCache:
    """Encoded clips. F = total latent frames of all clips, N = clips, R = refs per clip.

    latents (F, C, h, w) float; audio (F, W, L, D) float, W = 4 + 2 window (a clip's
    latent 0 has zeros); voiced (F,) bool; boxes (F, 2, 4) int64 [mouth, face] x0, y0, x1,
    y1 in latent cells; opening (F, 4) float32 (latent 0: its one frame repeated);
    clip_start (N + 1,) int64 offsets into F; refs (N, R, C, h, w) float; ref_frames
    (N, R) int64 video frame of each reference; clip_ids the clip folder names.
    """

    key: str
    latents: Tensor
    audio: Tensor
    voiced: Tensor
    boxes: Tensor
    opening: Tensor
    clip_start: Tensor
    refs: Tensor
    ref_frames: Tensor
    clip_ids: tuple[str, ...]

    @property
    def clips(self) -> int:
        return len(self.clip_ids)

    @property
    def device(self) -> torch.device:
        return self.latents.device

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LatentCache:
        """Move the tensors (cast floating ones to `dtype` if given); indices stay int64."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                cast = dtype if dtype is not None and value.is_floating_point() else None
                value = value.to(device=device, dtype=cast)
            moved[f.name] = value
        return LatentCache(**moved)

    def state(self) -> dict:
        """A plain dict for `torch.save` (tensors on the CPU)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in out.items()}
        out["clip_ids"] = list(self.clip_ids)
        return out

    @classmethod
    def from_state(cls, state: dict) -> LatentCache:
        return cls(**{**state, "clip_ids": tuple(state["clip_ids"])})


def frozen_digest(model: TalkingModel) -> str:
    """SHA-256 of what the cache depends on in a model: the frame size and rate, the VAE
    and the audio encoder (configs and tensors) and the audio window. The DiT side (DiT,
    audio path, sampler) may change freely: a student that reads the mouth head instead
    of the features still shares its teacher's cache."""
    cfg = model.cfg
    parts = {
        "frames": [cfg.height, cfg.width, cfg.fps],
        "vae": asdict(cfg.vae),
        "audio_encoder": asdict(cfg.audio_encoder),
        "audio_window": cfg.audio_proj.window,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    for prefix in ("vae", "audio_encoder"):
        for name, tensor in sorted(getattr(model, prefix).state_dict().items()):
            digest.update(f"{prefix}.{name}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def corpus_digest(clips: Sequence[Path]) -> str:
    """SHA-256 over the clip ids and their meta.json bytes (a regenerated clip with other
    content has other phonemes or appearance; the same seed gives identical files)."""
    digest = hashlib.sha256()
    for path in clips:
        digest.update(path.name.encode())
        digest.update((path / "meta.json").read_bytes())
    return digest.hexdigest()


def cache_key(model: TalkingModel, clips: Sequence[Path], refs_per_clip: int) -> str:
    """The key a cache file must carry to be used for `model` and `clips`."""
    parts = {
        "version": CACHE_VERSION,
        "model": frozen_digest(model),
        "corpus": corpus_digest(clips),
        "refs": refs_per_clip,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def load_or_build_cache(
    path: Path,
    model: TalkingModel,
    data: Path,
    split: str = "train",
    refs_per_clip: int = 8,
    on_clip=None,
) -> LatentCache:
    """The cache of `split` of corpus `data` for `model`, read from `path` when its key
    matches, else built (with `model` on its current device) and written there. Returned
    on the CPU."""
    clips = list_clips(data, split)
    if not clips:
        raise UserInputError(f"no clips in {data}/{split}")
    key = cache_key(model, clips, refs_per_clip)
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("key") == key:
            return LatentCache.from_state(state)
    cache = build_cache(model, clips, key, refs_per_clip, on_clip)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as partial:
        torch.save(cache.state(), partial)
    return cache


@torch.no_grad()
def build_cache(
    model: TalkingModel, clips: Sequence[Path], key: str, refs_per_clip: int, on_clip=None
) -> LatentCache:
    """Encode every clip (see the module docstring). `on_clip(i, n)` after each clip."""
    parts = []
    for i, path in enumerate(clips):
        parts.append(encode_clip(model, path, refs_per_clip))
        if on_clip is not None:
            on_clip(i + 1, len(clips))
    lengths = torch.tensor([p["latents"].shape[0] for p in parts])
    return LatentCache(
        key=key,
        latents=torch.cat([p["latents"] for p in parts]),
        audio=torch.cat([p["audio"] for p in parts]),
        voiced=torch.cat([p["voiced"] for p in parts]),
        boxes=torch.cat([p["boxes"] for p in parts]),
        opening=torch.cat([p["opening"] for p in parts]),
        clip_start=torch.cat((torch.zeros(1, dtype=torch.long), lengths.cumsum(0))),
        refs=torch.stack([p["refs"] for p in parts]),
        ref_frames=torch.stack([p["ref_frames"] for p in parts]),
        clip_ids=tuple(p.name for p in clips),
    )


def encode_clip(model: TalkingModel, path: Path, refs_per_clip: int) -> dict[str, Tensor]:
    """One clip's entries of the cache (CPU tensors, shapes as in `LatentCache`)."""
    cfg = model.cfg
    fpl = cfg.frames_per_latent
    clip = read_clip(path)
    frames = clip.frames
    if frames.shape[1:3] != (cfg.height, cfg.width):
        raise UserInputError(
            f"{path.name} is {frames.shape[2]}x{frames.shape[1]} but the model works at "
            f"{cfg.width}x{cfg.height}; synthesize the corpus with --size {cfg.width}"
        )
    n_latent = 1 + (len(frames) - 1) // fpl
    used = 1 + (n_latent - 1) * fpl
    if n_latent < 2:
        raise UserInputError(f"{path.name} is too short: {len(frames)} frames")
    latents = encode_video(model, frames[:used])[0].permute(1, 0, 2, 3)
    ref_frames = np.linspace(0, used - 1, refs_per_clip).round().astype(np.int64)
    refs = encode_video(model, frames[ref_frames][:, None])[:, :, 0]
    feats, voiced = clip_audio_features(model, clip.audio, n_latent)
    boxes = torch.from_numpy(clip.boxes[:used].astype(np.int64))
    opening = torch.from_numpy(clip.mouth[:used, OPEN].astype(np.float32))
    return {
        "latents": latents.cpu().float(),
        "audio": feats,
        "voiced": voiced,
        "boxes": latent_boxes(boxes, fpl, cfg.vae.spatial_stride),
        "opening": per_latent(opening, fpl),
        "refs": refs.cpu().float(),
        "ref_frames": torch.from_numpy(ref_frames),
    }


def encode_video(model: TalkingModel, frames: np.ndarray) -> Tensor:
    """uint8 (T, H, W, 3) -> latents (1, C, 1 + (T-1)/4, h, w), or for frames (B, 1, H, W,
    3) one single-frame latent each (B, C, 1, h, w). B, C, T, H, W layout."""
    device = next(model.vae.parameters()).device
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    video = pixels[None] if pixels.ndim == 4 else pixels  # (B, T, H, W, 3)
    video = video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    return model.vae.encode(video)


def clip_audio_features(
    model: TalkingModel, samples: np.ndarray, n_latent: int
) -> tuple[Tensor, Tensor]:
    """Audio windows and voice activity of a clip's latent frames, with the renderer's
    framing (`FeatureProducer`: segments with margins, silence beyond the audio), from
    video frame `1 - window`, where latent 1's window starts.

    samples (N,) float32 16 kHz -> windows (n_latent, 4 + 2w, L, D) float32 (latent 0:
    zeros) and voiced (n_latent,) bool (latent 0: False)."""
    cfg = model.cfg
    fpl, window = cfg.frames_per_latent, cfg.audio_proj.window
    last = (n_latent - 1) * fpl + window + 1  # one past the last frame any window reads
    device = next(model.audio_encoder.parameters()).device
    producer = FeatureProducer(
        ArrayStream(samples),
        model.audio_encoder,
        cfg.samples_per_frame,
        needed_frames=lambda total: max(total, last),
        device=device,
        start=1 - window,  # latent 1's window starts at video frame 1 - window
    )
    feats, voiced = [], []
    for segment in producer.segments():
        feats.append(segment.features[0].cpu())
        voiced.append(torch.from_numpy(segment.voiced))
    span = last - (1 - window)
    feats_all = torch.cat(feats)[:span]
    voiced_all = torch.cat(voiced)[:span]
    windows = audio_windows(feats_all[None], window, fpl, pad="none")[0]
    voiced_windows = audio_windows(voiced_all[None, :, None, None], window, fpl, pad="none")
    head = torch.zeros(1, *windows.shape[1:])
    return (
        torch.cat((head, windows)).float(),
        torch.cat((torch.zeros(1, dtype=torch.bool), voiced_windows[0].flatten(1).any(1))),
    )


def latent_boxes(boxes: Tensor, fpl: int, stride: int) -> Tensor:
    """Pixel boxes (T, 2, 4) of `1 + (Tl - 1) fpl` frames -> latent-cell boxes (Tl, 2, 4):
    the union over each latent frame's video frames, floor/ceil to cells."""
    first = boxes[:1]  # latent 0: frame 0 alone
    rest = boxes[1:].unflatten(0, (-1, fpl))
    lo = torch.cat((first[:, :, :2], rest[..., :2].amin(1)))
    hi = torch.cat((first[:, :, 2:], rest[..., 2:].amax(1)))
    return torch.cat(
        (lo.div(stride, rounding_mode="floor"), -(-hi).div(stride, rounding_mode="floor")), -1
    )


def per_latent(values: Tensor, fpl: int) -> Tensor:
    """Per-frame values (1 + (Tl - 1) fpl,) -> (Tl, fpl); latent 0 repeats its one frame."""
    return torch.cat((values[:1].expand(1, fpl), values[1:].view(-1, fpl)))


# ---- windows -------------------------------------------------------------------------------


def window_starts(cache: LatentCache, clips: Sequence[int], length: int) -> Tensor:
    """Global latent indices (CPU int64) of every window of `length` latent frames inside
    the given clips (starting at a clip's latent 1 or later)."""
    starts = []
    bounds = cache.clip_start.cpu()
    for c in clips:
        lo, hi = int(bounds[c]) + 1, int(bounds[c + 1]) - length
        if hi >= lo:
            starts.append(torch.arange(lo, hi + 1))
    if not starts:
        raise UserInputError(f"no clip is long enough for windows of {length} latent frames")
    return torch.cat(starts)


def clip_of_frames(cache: LatentCache, index: Tensor) -> Tensor:
    """Clip number of global latent frames `index` (any shape, CPU int64)."""
    return torch.searchsorted(cache.clip_start.cpu(), index, right=True) - 1


def pick_references(
    cache: LatentCache, starts: Tensor, length: int, gen: torch.Generator, fpl: int
) -> Tensor:
    """For windows starting at global latents `starts` (B,), a reference number (B,) of
    their clip whose frame lies outside the window (any reference when none does)."""
    clip = clip_of_frames(cache, starts)
    local = starts - cache.clip_start.cpu()[clip]
    first, last = (local - 1) * fpl + 1, (local + length - 1) * fpl  # video frames
    frames = cache.ref_frames.cpu()[clip]  # (B, R)
    outside = (frames < first[:, None]) | (frames > last[:, None])
    weights = torch.where(
        outside.any(1, keepdim=True), outside.float(), torch.ones_like(frames, dtype=torch.float)
    )
    return torch.multinomial(weights, 1, generator=gen)[:, 0]


@dataclass(frozen=True)
class WindowBatch:
    """Training windows with their conditioning, on the cache's device. L latent frames.

    latents (B, C, 1 + L, h, w): the reference latent (anchor), then the window's clean
    latents; audio (B, L, W, Ld, D) windows; speaking (B, L) bool, one value per chunk of
    C frames (the renderer's rule); face (B, h, w) float face mask (union of the window's
    face boxes); mouth (B, 1, L, h, w) float mouth-box mask per latent frame; opening
    (B, 4 L) true mouth opening of the window's video frames; starts/refs (B,) the window
    (global latent index) and reference number it came from (CPU).
    """

    latents: Tensor
    audio: Tensor
    speaking: Tensor
    face: Tensor
    mouth: Tensor
    opening: Tensor
    starts: Tensor
    refs: Tensor

    @property
    def anchor(self) -> Tensor:
        """(B, C, 1, h, w) the reference latent."""
        return self.latents[:, :, :1]

    @property
    def x0(self) -> Tensor:
        """(B, C, L, h, w) the window's clean latents."""
        return self.latents[:, :, 1:]

    def with_face(self, face: Tensor) -> WindowBatch:
        return replace(self, face=face)


def gather_windows(
    cache: LatentCache, starts: Tensor, refs: Tensor, length: int, chunk_frames: int
) -> WindowBatch:
    """The windows of `length` latent frames at global latents `starts` (B,) with
    reference numbers `refs` (B,) of their clips (see `WindowBatch`)."""
    assert length % chunk_frames == 0, f"window of {length} is not whole chunks of {chunk_frames}"
    device = cache.device
    clip = clip_of_frames(cache, starts)
    index = (starts[:, None] + torch.arange(length)).to(device)  # (B, L)
    window = cache.latents[index].permute(0, 2, 1, 3, 4)  # (B, C, L, h, w)
    anchor = cache.refs[clip.to(device), refs.to(device)][:, :, None]
    voiced = cache.voiced[index].view(len(starts), -1, chunk_frames).any(2)
    speaking = voiced.repeat_interleave(chunk_frames, 1)
    boxes = cache.boxes[index]  # (B, L, 2, 4)
    h, w = cache.latents.shape[-2:]
    face_box = torch.cat((boxes[:, :, FACE, :2].amin(1), boxes[:, :, FACE, 2:].amax(1)), 1)
    return WindowBatch(
        latents=torch.cat((anchor, window), dim=2),
        audio=cache.audio[index],
        speaking=speaking,
        face=box_masks(face_box, h, w),
        mouth=box_masks(boxes[:, :, MOUTH], h, w)[:, None],
        opening=cache.opening[index].flatten(1),
        starts=starts,
        refs=refs,
    )


def box_masks(boxes: Tensor, h: int, w: int) -> Tensor:
    """Boxes (..., 4) x0, y0, x1, y1 in cells (x1, y1 exclusive) -> float masks (..., h, w)."""
    ys = torch.arange(h, device=boxes.device).view(h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, w)
    b = boxes[..., None, None]
    inside = (
        (xs >= b[..., 0, :, :])
        & (xs < b[..., 2, :, :])
        & (ys >= b[..., 1, :, :])
        & (ys < b[..., 3, :, :])
    )
    return inside.float()


def sample_windows(
    cache: LatentCache,
    starts_table: Tensor,
    batch: int,
    length: int,
    chunk_frames: int,
    fpl: int,
    gen: torch.Generator,
) -> WindowBatch:
    """`batch` random windows from `starts_table` (from `window_starts`), each with a random
    reference from another moment of its clip. `gen` is a CPU generator."""
    pick = torch.randint(len(starts_table), (batch,), generator=gen)
    starts = starts_table[pick]
    refs = pick_references(cache, starts, length, gen, fpl)
    return gather_windows(cache, starts, refs, length, chunk_frames)


def split_clips(cache: LatentCache, val_clips: int) -> tuple[list[int], list[int]]:
    """(training clip numbers, held-out clip numbers): the last `val_clips` clips are held
    out (at most half of the clips, at least one left for training)."""
    n = cache.clips
    held = min(val_clips, n // 2)
    return list(range(n - held)), list(range(n - held, n))
