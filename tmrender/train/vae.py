"""Training recipe of the causal VAE (`tmrender train vae`), run by `tmrender.train.loop`.

Data: the frames of the train split, decoded once into `frames.pt` in the run folder
(uint8, moved to the training device as a whole). The last `val_clips` clips are held out
for validation; the test split is never read here.

Curriculum (each part measured on CPU probes, see `docs/EXPERIMENTS.md`):
1. short windows of `crop_frames = 1 + 4k` frames cut to random `crop` x `crop` squares
   (half of them on the mouth; the network is fully convolutional): many mouths per
   second of compute. Single frames (`crop_frames = 1`, encoded alone like the reference
   image) train only the first-frame path of the time pooling and expansion, and whole
   clips then start far behind, so windows of 5 frames are the default;
2. a share `clip_share` of the steps, spread evenly among the others, on clips of
   `clip_frames` whole frames (the frame borders, longer time context). Interleaved
   rather than last, so that a run stopped by `--max-minutes` has seen both kinds.

Loss (`reconstruction_loss`): per-pixel L1 + `mse_weight` x MSE on [-1, 1] pixels, weighted
`1 + mouth_weight` inside the mouth box grown by `mouth_margin` px (the mouth is ~13 px tall
at 128 px, two latent cells, and lip sync lives there), + `temporal_weight` x the weighted
L1 of the frame-to-frame changes (`temporal_loss`: flicker the truth does not have). A
decoder-only fine-tune may decode noisy latents (`latent_noise`), so that a generator's
latent jitter does not come out as flicker. The autoencoder is deterministic
(posterior mean); its per-channel latent mean and std are measured at export and stored in
the config (`VAEConfig.latent_mean / latent_std`), so `encode` hands the DiT unit-scale
latents and `decode` undoes it.

Adversarial decoder (off by default: `gan_weight`, `fm_weight`): from step
`gan_start - disc_lead` on, a `models.discriminator.PatchDiscriminator` ("disc", its own
optimizer, updated after the VAE at each step) learns to tell frames from reconstructions
with the hinge loss (`hinge_discriminator_loss`: real = a fresh batch, fake = the VAE
update's reconstructions), and from `gan_start` the VAE adds `gan_weight` x the generator
hinge loss (`hinge_generator_loss`) and `fm_weight` x feature matching
(`feature_matching_loss`: L1 between the discriminator's features of reconstruction and
truth, pix2pixHD). The discriminator is saved in the run checkpoint (resume stays
bit-identical) and never exported.

Extra data (`extra_data`): the train clips of other corpora (`synth --textured`,
`synth --textures-only`) join the fit clips; validation stays on the main corpus.

Validation (`evaluate_vae`): whole-clip reconstructions of held-out clips: PSNR of the
whole frame and of the mouth box (pooled MSE, uint8 frames as the renderer writes them),
the mouth reader's Pearson r of the mouth opening read off the reconstructions and off
the originals (the reader is an instrument: it never enters a loss), and the sharpness
ratio (`laplacian_energy` of reconstructions over originals: 1 keeps all detail).

Export: a full tmrender inference checkpoint (`save_checkpoint`) whose `vae` is trained
(other networks at their initialisation), `trained=False`, figures in `extra`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tmrender.config import ModelConfig
from tmrender.data.corpus import list_clips
from tmrender.errors import UserInputError
from tmrender.eval.metrics import (
    box_mask,
    frame_motion,
    laplacian_energy,
    masked_mse,
    pearson,
    psnr_from_mse,
)
from tmrender.files import atomic_write
from tmrender.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from tmrender.models.mouth_reader import MouthReader
from tmrender.models.vae import DECODER_PREFIX, CausalVAE
from tmrender.train.loop import seeded

FRAME_CACHE = "frames.pt"


@dataclass(frozen=True)
class VAEOptions:
    """What the VAE stage trains on and how (the loop's options are `LoopOptions`)."""

    # data
    val_clips: int = 4  # last train clips held out for validation
    val_frames: int = 97  # 1 + 4k frames of each held-out clip are reconstructed
    max_clips: int = 0  # train on at most this many clips (0: all but the held-out ones)
    # curriculum: short windows cut to random crops, and on a share clip_share of the steps
    # (spread evenly) clips of whole frames. Crops: multiples of 8, 0 = whole frames
    crop_batch: int = 8
    crop_frames: int = 5  # 1 + 4k; 1 = single frames (they train only the first-frame path)
    crop: int = 64
    mouth_crop_share: float = 0.5  # share of crops centred on the mouth
    clip_batch: int = 4
    clip_frames: int = 9  # 1 + 4k
    clip_crop: int = 0
    clip_share: float = 0.25
    # loss
    mouth_weight: float = 4.0
    mouth_margin: int = 2  # px added around the mouth box
    mse_weight: float = 1.0
    # weight of the L1 between the frame-to-frame changes of reconstruction and original:
    # a decoder free of it flickers by a level or two where the truth holds still
    temporal_weight: float = 0.0
    # std of Gaussian noise added to the (unit-scale) latents before decoding, decoder
    # only: a generator's latents jitter more than the encoder's, and the decoder should
    # not turn that jitter into flicker
    latent_noise: float = 0.0
    # fine-tune the decoder only: the encoder, and with it the latent space and its
    # statistics, stay as they are (stages trained on these latents remain valid)
    decoder_only: bool = False
    # latent statistics at export: windows of clip_frames frames from this many fit clips
    stats_clips: int = 32
    # adversarial decoder: on when gan_weight or fm_weight > 0, from step gan_start on
    gan_weight: float = 0.0  # generator hinge loss
    fm_weight: float = 0.0  # feature matching (L1 of discriminator features)
    gan_start: int = 0  # steps of reconstruction alone before the discriminator's losses
    disc_lead: int = 0  # the discriminator trains this many steps before gan_start
    disc_width: int = 32  # channels of the discriminator's first stage (then x2, x4)

    @property
    def gan(self) -> bool:
        return self.gan_weight > 0 or self.fm_weight > 0


# -- data ------------------------------------------------------------------------------------


@dataclass
class FrameCache:
    """Frames of a list of clips, concatenated: frames uint8 (N, 3, H, W), mouth boxes
    int32 (N, 4) (x0, y0, x1, y1 px), mouth opening float32 (N,), clip k's frames are
    `starts[k]:starts[k + 1]` (starts int64 (clips + 1,)), clip folder names `names`."""

    frames: Tensor
    boxes: Tensor
    opening: Tensor
    starts: Tensor
    names: list[str]

    @property
    def clips(self) -> int:
        return len(self.names)

    def clip(self, k: int) -> slice:
        return slice(int(self.starts[k]), int(self.starts[k + 1]))

    def to(self, device: torch.device) -> FrameCache:
        """The same cache with its frames on `device` (the small tensors stay on the CPU,
        where the batch indices are drawn: no device synchronisation per batch)."""
        return dataclasses.replace(self, frames=self.frames.to(device))


def load_frames(clips: list[Path], workers: int = 4) -> FrameCache:
    """Decode the frames, mouth boxes and mouth opening of `clips` into a FrameCache."""
    if not clips:
        raise UserInputError("no clips to read frames from")
    with ThreadPoolExecutor(max(1, workers)) as pool:  # ffmpeg decodes in subprocesses
        parts = list(pool.map(_read_frames, clips))
    lengths = torch.tensor([0] + [len(p[0]) for p in parts])
    return FrameCache(
        frames=torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2),
        boxes=torch.from_numpy(np.concatenate([p[1] for p in parts])),
        opening=torch.from_numpy(np.concatenate([p[2] for p in parts])),
        starts=torch.cumsum(lengths, 0),
        names=[p.name for p in clips],
    )


def _read_frames(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames uint8 (T, H, W, 3), mouth boxes int32 (T, 4), opening float32 (T,))."""
    from tmrender.data.corpus import read_clip
    from tmrender.data.visemes import PARAMS

    clip = read_clip(path)
    opening = clip.mouth[:, PARAMS.index("open")].astype(np.float32)
    return clip.frames, clip.boxes[:, 0].astype(np.int32), opening


def cached_frames(path: Path, clips: list[Path], extra: list[Path] | None = None) -> FrameCache:
    """`load_frames(extra + clips)`, kept in `path` (torch file) and reused while the clips
    match (`extra` clips first, named by their full paths in the key)."""
    key = json.dumps([p.name for p in clips])
    if extra:
        key = json.dumps([str(p) for p in extra] + [p.name for p in clips])
    clips = list(extra or []) + list(clips)
    if path.exists():
        state = torch.load(path, weights_only=False)
        if state["key"] == key:
            return FrameCache(**state["cache"])
    cache = load_frames(clips)
    with atomic_write(path) as partial:
        torch.save({"key": key, "cache": dataclasses.asdict(cache)}, partial)
    return cache


def window_starts(cache: FrameCache, clips: range, frames: int) -> Tensor:
    """Every global frame index where a window of `frames` frames starts inside one of
    `clips`; int64 (M,)."""
    starts = [
        torch.arange(int(cache.starts[k]), int(cache.starts[k + 1]) - frames + 1) for k in clips
    ]
    starts = torch.cat(starts) if starts else torch.zeros(0, dtype=torch.int64)
    if not len(starts):
        raise UserInputError(f"no clip is {frames} frames long")
    return starts


def mouth_weight_map(boxes: Tensor, height: int, width: int, weight: float, margin: int) -> Tensor:
    """Loss weights `1 + weight` inside the mouth boxes grown by `margin`, 1 elsewhere.

    boxes: (B, T, 4) x0, y0, x1, y1 in the pixels of the (cropped) frames -> (B, 1, T, H, W).
    """
    b, t, _ = boxes.shape
    ys = torch.arange(height, device=boxes.device).view(1, 1, height, 1)
    xs = torch.arange(width, device=boxes.device).view(1, 1, 1, width)
    x0, y0, x1, y1 = (boxes[..., i].view(b, t, 1, 1) for i in range(4))
    inside = (ys >= y0 - margin) & (ys < y1 + margin) & (xs >= x0 - margin) & (xs < x1 + margin)
    inside &= x1 > x0  # an empty box (texture clips): no mouth
    return (1.0 + weight * inside.float()).unsqueeze(1)


def to_video(frames: Tensor) -> Tensor:
    """uint8 frames (B, T, 3, H, W) -> float video (B, 3, T, H, W) in [-1, 1]."""
    return frames.permute(0, 2, 1, 3, 4).float() / 127.5 - 1.0


def video_batch(
    cache: FrameCache,
    starts: Tensor,
    batch: int,
    frames: int,
    crop: int,
    opts: VAEOptions,
    gen: torch.Generator,
    device: torch.device,
) -> dict[str, Tensor]:
    """`batch` windows of `frames` consecutive frames starting at random entries of
    `starts`, each cut to a random `crop` x `crop` square (0: whole frames; a share
    `opts.mouth_crop_share` of them centred on the mouth, corners on the 8-px latent grid).

    Returns {"video": (B, 3, T, c, c) in [-1, 1], "weight": (B, 1, T, c, c)}.
    """
    h, w = cache.frames.shape[-2:]
    store = cache.frames.device
    pick = starts[torch.randint(len(starts), (batch,), generator=gen)]
    idx = pick[:, None] + torch.arange(frames)  # B, T (CPU)
    boxes = cache.boxes[idx]  # B, T, 4
    if not crop or (crop >= h and crop >= w):
        video = to_video(cache.frames[idx.to(store)].to(device))
        weight = mouth_weight_map(boxes.to(device), h, w, opts.mouth_weight, opts.mouth_margin)
        return {"video": video, "weight": weight}
    # 1. corners (x, y): on the mouth of the middle frame for a share of the batch, else anywhere
    mid = boxes[:, frames // 2]
    centre = torch.stack([mid[:, 0] + mid[:, 2], mid[:, 1] + mid[:, 3]], 1) // 2
    on_mouth = torch.rand(batch, generator=gen) < opts.mouth_crop_share
    anywhere = torch.rand(batch, 2, generator=gen) * torch.tensor([w - crop + 1, h - crop + 1])
    corner = torch.where(on_mouth[:, None], (centre - crop // 2).float(), anywhere.floor()).long()
    corner = (corner.clamp(min=0) // 8 * 8).minimum(torch.tensor([w - crop, h - crop]) // 8 * 8)
    # 2. one gather: (B, T, 1, 1) frames x (B, 1, c, 1) rows x (B, 1, 1, c) columns
    rows = corner[:, 1, None] + torch.arange(crop)
    cols = corner[:, 0, None] + torch.arange(crop)
    pixels = cache.frames[
        idx[:, :, None, None].to(store), :, rows[:, None, :, None].to(store),
        cols[:, None, None, :].to(store),
    ]  # fmt: skip  # B, T, c, c, 3
    video = to_video(pixels.permute(0, 1, 4, 2, 3).to(device))
    shifted = (boxes - corner.repeat(1, 2)[:, None]).to(device)
    weight = mouth_weight_map(shifted, crop, crop, opts.mouth_weight, opts.mouth_margin)
    return {"video": video, "weight": weight}


# -- loss --------------------------------------------------------------------------------------


def reconstruction_loss(
    recon: Tensor, target: Tensor, weight: Tensor, mse_weight: float
) -> tuple[Tensor, dict[str, float]]:
    """Weighted L1 + `mse_weight` x weighted MSE, each normalised by the mean weight.

    recon, target: (B, 3, T, H, W) in [-1, 1]; weight: (B, 1, T, H, W). Returns the scalar
    loss and {"l1", "mse"} (unweighted, for the log)."""
    assert recon.shape == target.shape, f"{tuple(recon.shape)} vs {tuple(target.shape)}"
    diff = recon.float() - target
    norm = weight.mean()
    l1 = (diff.abs() * weight).mean() / norm
    mse = (diff.square() * weight).mean() / norm
    with torch.no_grad():
        figures = {"l1": diff.abs().mean(), "mse": diff.square().mean()}
    return l1 + mse_weight * mse, figures


def hinge_discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Hinge loss of a discriminator (Lim and Ye 2017, "Geometric GAN"; SAGAN eq. 3):
    mean(relu(1 - D(real))) + mean(relu(1 + D(fake))); logits of any shapes."""
    return torch.relu(1 - real.float()).mean() + torch.relu(1 + fake.float()).mean()


def hinge_generator_loss(fake: Tensor) -> Tensor:
    """The generator's side of the hinge loss: -mean(D(fake))."""
    return -fake.float().mean()


def feature_matching_loss(fake: list[Tensor], real: list[Tensor]) -> Tensor:
    """Mean over the discriminator's stages of the L1 between features of reconstructions
    and of truth (pix2pixHD, Wang et al. 2018, eq. 4); `real` is detached."""
    assert len(fake) == len(real), f"{len(fake)} vs {len(real)} stages"
    terms = [(f.float() - r.detach().float()).abs().mean() for f, r in zip(fake, real, strict=True)]
    return torch.stack(terms).mean()


def temporal_loss(recon: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted L1 between the frame-to-frame changes of recon and target, normalised by
    the mean weight (0 for single frames).

    recon, target: (B, 3, T, H, W); weight: (B, 1, T, H, W), the later frame's counts."""
    if recon.shape[2] < 2:
        return recon.float().sum() * 0.0
    change = recon.float().diff(dim=2) - target.diff(dim=2)
    later = weight[:, :, 1:]
    return (change.abs() * later).mean() / later.mean()


# -- validation and statistics -----------------------------------------------------------------


def usable_frames(frames: int, limit: int, stride: int = 4) -> int:
    """The longest `1 + stride * k` <= min(frames, limit)."""
    n = min(frames, limit)
    assert n >= 1, "a clip needs at least one frame"
    return 1 + (n - 1) // stride * stride


@torch.no_grad()
def reconstruct_clip(vae: CausalVAE, frames: Tensor) -> Tensor:
    """uint8 frames (T, 3, H, W), T = 1 + 4k -> reconstructed uint8 frames (T, H, W, 3) on
    the CPU, through the whole-clip encode and decode in float32."""
    device = next(vae.parameters()).device
    video = to_video(frames[None].to(device))
    out = vae.decode(vae.encode(video))[0]  # 3, T, H, W
    pixels = ((out.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu()


@torch.no_grad()
def evaluate_vae(
    vae: CausalVAE,
    cache: FrameCache,
    clips: range,
    reader: MouthReader,
    max_frames: int,
    mouth_margin: int = 2,
    original_r: float | None = None,
) -> dict[str, float]:
    """Reconstruct the first `1 + 4k <= max_frames` frames of `clips` of the cache.

    Returns {"psnr", "psnr_mouth"} (dB of the pooled MSE, whole frame and mouth box grown
    by `mouth_margin`), {"reader_r", "reader_r_original"} (Pearson r of the opening the
    reader sees on reconstructions / originals vs the truth; `original_r` skips the
    latter's computation), "motion_ratio" (frame-to-frame change of the reconstructions
    over the originals', pooled), "sharpness_ratio" (`laplacian_energy` of the
    reconstructions over the originals', pooled) and "frames".
    """
    from tmrender.eval.mouth import read_mouth

    column = reader.cfg.outputs.index("open")
    mse, mse_mouth, read, read_orig, truth = [], [], [], [], []
    motion, motion_orig, sharp, sharp_orig = [], [], [], []
    for k in clips:
        span = cache.clip(k)
        n = usable_frames(span.stop - span.start, max_frames)
        frames = cache.frames[span][:n]
        original = frames.permute(0, 2, 3, 1).cpu().numpy()
        recon = reconstruct_clip(vae, frames).numpy()
        boxes = cache.boxes[span][:n].cpu().numpy()
        inside = ~box_mask(boxes, *original.shape[1:3], dilate=mouth_margin)
        mse.append(masked_mse(recon, original))
        mse_mouth.append(masked_mse(recon, original, inside))
        motion.append(frame_motion(recon))
        motion_orig.append(frame_motion(original))
        sharp.append(laplacian_energy(recon))
        sharp_orig.append(laplacian_energy(original))
        read.append(read_mouth(reader, recon)[:, column])
        if original_r is None:
            read_orig.append(read_mouth(reader, original)[:, column])
        truth.append(cache.opening[span][:n].cpu().numpy())
    truth_all = np.concatenate(truth)
    return {
        "psnr": round(float(psnr_from_mse(np.concatenate(mse).mean())), 3),
        "psnr_mouth": round(float(psnr_from_mse(np.concatenate(mse_mouth).mean())), 3),
        "reader_r": round(pearson(np.concatenate(read), truth_all), 4),
        "reader_r_original": (
            round(pearson(np.concatenate(read_orig), truth_all), 4)
            if original_r is None
            else original_r
        ),
        "motion_ratio": round(
            float(np.concatenate(motion).mean() / max(np.concatenate(motion_orig).mean(), 1e-9)),
            3,
        ),
        "sharpness_ratio": round(float(np.mean(sharp) / max(np.mean(sharp_orig), 1e-9)), 3),
        "frames": int(len(truth_all)),
    }


@torch.no_grad()
def latent_statistics(
    vae: CausalVAE, cache: FrameCache, clips: range, frames: int, normalised: bool = False
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the raw posterior means (`normalised`: of `encode`'s
    latents) of one window of `1 + 4k <= frames` frames from the middle of each of `clips`
    -> (mean, std), each latent_channels long."""
    device = next(vae.parameters()).device
    picks = []
    for k in clips:
        span = cache.clip(k)
        n = usable_frames(span.stop - span.start, frames)
        first = span.start + (span.stop - span.start - n) // 2
        picks.append(cache.frames[first : first + n])
    n = min(len(p) for p in picks)
    video = to_video(torch.stack([p[:n] for p in picks]).to(device))
    encode = vae.encode if normalised else (lambda v: vae.encode_dist(v)[0])
    raw = torch.cat([encode(v[None]) for v in video]).double()  # B, C, t, h, w
    mean = raw.mean(dim=(0, 2, 3, 4))
    std = raw.std(dim=(0, 2, 3, 4)).clamp_min(1e-6)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


# -- the stage ---------------------------------------------------------------------------------


class VAEStage:
    """`tmrender.train.loop.Stage` of the VAE: one network, one optimizer ("vae"); with the
    adversarial decoder (`VAEOptions.gan`) a second network and optimizer ("disc")."""

    name = "vae"

    def __init__(
        self,
        data: Path,
        out: Path,
        cfg: ModelConfig,
        opts: VAEOptions,
        vae: CausalVAE | None = None,
        reader_path: Path | None = None,
        seed: int = 0,
        extra_data: tuple[Path, ...] = (),
    ) -> None:
        """cfg: the model whose VAE is trained (`vae`: start weights, else a fresh one
        initialised from `seed`); reader_path: mouth reader weights for validation
        (default: the shipped ones); extra_data: corpora whose train clips are fit too."""
        from tmrender.eval.mouth import load_mouth_reader

        _check_options(opts)
        self.cfg, self.opts = cfg, opts
        if vae is None:
            if opts.decoder_only:
                raise UserInputError("--decoder-only fine-tunes a trained VAE: give --init")
            with seeded(seed):
                vae = CausalVAE(cfg.vae)
        self.vae = vae
        self.disc: PatchDiscriminator | None = None
        if opts.gan:
            with seeded(seed + 1):
                self.disc = PatchDiscriminator(DiscriminatorConfig(width=opts.disc_width))
        if opts.decoder_only:
            for name, param in vae.named_parameters():
                param.requires_grad_(name.startswith(DECODER_PREFIX))
        self.reader = load_mouth_reader(reader_path)
        # 1. frames of the train split, the last val_clips held out
        clips = list_clips(data, "train")
        if len(clips) <= opts.val_clips:
            raise UserInputError(f"need more than {opts.val_clips} train clips in {data}/train")
        fit = clips[: -opts.val_clips] if opts.val_clips else clips
        if opts.max_clips:
            fit = fit[: opts.max_clips]
        held_out = clips[len(clips) - opts.val_clips :]
        extra = [clip for folder in extra_data for clip in list_clips(folder, "train")]
        out.mkdir(parents=True, exist_ok=True)
        self.cache = cached_frames(out / FRAME_CACHE, fit + held_out, extra)
        fit = extra + fit  # the cache holds the extra clips first
        if tuple(self.cache.frames.shape[-2:]) != (cfg.height, cfg.width):
            raise UserInputError(
                f"corpus frames are {tuple(self.cache.frames.shape[-2:])} px, the model "
                f"{cfg.name} takes {(cfg.height, cfg.width)}"
            )
        self.fit_clips = range(len(fit))
        self.val_clips = range(len(fit), len(fit) + len(held_out))
        self.fit_frames = int(self.cache.starts[len(fit)])
        self.crop_starts = window_starts(self.cache, self.fit_clips, opts.crop_frames)
        self.clip_starts = window_starts(self.cache, self.fit_clips, opts.clip_frames)
        self.step = 0
        self.val: dict[str, float] = {}
        self.extra_clips = len(extra)
        self._original_r: float | None = None
        self._device_cache: FrameCache | None = None
        self._fake: Tensor | None = None  # the last VAE update's reconstructions (detached)

    # -- Stage protocol
    def networks(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae} | ({"disc": self.disc} if self.disc is not None else {})

    def optimizers(self) -> dict[str, list[torch.nn.Parameter]]:
        groups = {"vae": [p for p in self.vae.parameters() if p.requires_grad]}
        if self.disc is not None:
            groups["disc"] = list(self.disc.parameters())
        return groups

    def updates(self, step: int) -> list[str]:
        self.step = step  # the curriculum phase of the batches that follow
        return ["vae", "disc"] if self.trains_disc(step) else ["vae"]

    def trains_disc(self, step: int) -> bool:
        """True where `step` updates the discriminator (from gan_start - disc_lead)."""
        return self.disc is not None and step >= self.opts.gan_start - self.opts.disc_lead

    def adversarial(self, step: int) -> bool:
        """True where `step` adds the discriminator's losses to the VAE's (from gan_start)."""
        return self.disc is not None and step >= self.opts.gan_start

    def on_clips(self, step: int) -> bool:
        """True where `step` trains on whole clips: a share `clip_share` of the steps,
        evenly spread (step s where floor((s + 1) share) > floor(s share))."""
        share = self.opts.clip_share
        return math.floor((step + 1) * share) > math.floor(step * share)

    def batch(self, gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        cache, o = self._on(device), self.opts
        if self.on_clips(self.step):
            out = video_batch(
                cache, self.clip_starts, o.clip_batch, o.clip_frames, o.clip_crop, o, gen, device
            )
        else:
            out = video_batch(
                cache, self.crop_starts, o.crop_batch, o.crop_frames, o.crop, o, gen, device
            )
        if o.latent_noise:
            out["latent_noise"] = o.latent_noise * latent_noise_like(self.vae, out["video"], gen)
        return out

    def loss(self, opt_name: str, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        if opt_name == "disc":
            return self._disc_loss(batch["video"])
        video, weight = batch["video"], batch["weight"]
        if "latent_noise" in batch:  # decoder only (checked): the encoder needs no graph
            with torch.no_grad():
                latent = self.vae.encode(video)
            recon = self.vae.decode(latent + batch["latent_noise"].to(latent))
        else:
            recon = self.vae(video)
        loss, figures = reconstruction_loss(recon, video, weight, self.opts.mse_weight)
        if self.opts.temporal_weight:
            flicker = temporal_loss(recon, video, weight)
            loss = loss + self.opts.temporal_weight * flicker
            figures["temporal"] = flicker.detach()
        if self.trains_disc(self.step):
            self._fake = recon.detach()  # what the disc update of this step sees as fake
        if self.adversarial(self.step):
            loss = loss + self._adversarial_loss(recon, video, figures)
        return loss, figures

    def _adversarial_loss(self, recon: Tensor, video: Tensor, figures: dict) -> Tensor:
        """gan_weight x the generator hinge loss + fm_weight x feature matching of `recon`
        (B, 3, T, H, W) against `video`."""
        logits, fake_features = self.disc(recon)
        with torch.no_grad():
            _, real_features = self.disc(video)
        adversarial = hinge_generator_loss(logits)
        matching = feature_matching_loss(fake_features, real_features)
        figures["gan"], figures["fm"] = adversarial.detach(), matching.detach()
        return self.opts.gan_weight * adversarial + self.opts.fm_weight * matching

    def _disc_loss(self, real: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Hinge loss of the discriminator: `real` frames (a fresh batch) against the
        reconstructions of this step's VAE update."""
        assert self._fake is not None, "the disc update follows a VAE update"
        real_logits, _ = self.disc(real)
        fake_logits, _ = self.disc(self._fake)
        self._fake = None
        loss = hinge_discriminator_loss(real_logits, fake_logits)
        figures = {
            "real": real_logits.detach().float().mean(),
            "fake": fake_logits.detach().float().mean(),
        }
        return loss, figures

    def validate(self) -> dict[str, float]:
        self.val = evaluate_vae(
            self.vae, self.cache, self.val_clips, self.reader, self.opts.val_frames,
            self.opts.mouth_margin, self._original_r,
        )  # fmt: skip
        self._original_r = self.val["reader_r_original"]
        return self.val

    def export(self, path: Path) -> dict:
        if self.opts.decoder_only:  # same encoder: the statistics the DiT was trained with
            mean, std = self.vae.cfg.latent_mean, self.vae.cfg.latent_std
        else:
            # the main corpus's clips (what the DiT will see), not the extra ones
            stats_clips = self.fit_clips[self.extra_clips :][: self.opts.stats_clips]
            mean, std = latent_statistics(self.vae, self.cache, stats_clips, self.opts.clip_frames)
        extra = {
            "stage": "vae",
            "vae_steps": self.step + 1,
            "vae_validation": self.val,
            "vae_options": dataclasses.asdict(self.opts),
            "vae_fit_clips": len(self.fit_clips),
            "vae_extra_clips": self.extra_clips,
        }
        export_vae(self.vae, self.cfg, mean, std, path, extra)
        return {"latent_mean": mean, "latent_std": std, **extra}

    def _on(self, device: torch.device) -> FrameCache:
        """The frame cache on the training device (moved there once)."""
        if self._device_cache is None or self._device_cache.frames.device != device:
            self._device_cache = self.cache.to(device)
        return self._device_cache


def latent_noise_like(vae: CausalVAE, video: Tensor, gen: torch.Generator) -> Tensor:
    """Unit Gaussian noise (B, C, t, h, w) shaped like `vae.encode(video)`, drawn on the CPU
    from `gen` (the same draws on every device), on video's device."""
    b, _, frames, height, width = video.shape
    s = vae.cfg.spatial_stride
    shape = (b, vae.cfg.latent_channels, vae.latent_frames(frames), height // s, width // s)
    return torch.randn(shape, generator=gen).to(video.device)


def _check_options(opts: VAEOptions) -> None:
    if opts.crop % 8 or opts.clip_crop % 8:
        raise UserInputError("--crop and --clip-crop must be multiples of 8")
    if opts.clip_frames < 1 or (opts.clip_frames - 1) % 4:
        raise UserInputError(f"--clip-frames must be 1 + 4k, got {opts.clip_frames}")
    if not 0 <= opts.clip_share <= 1:
        raise UserInputError(f"--clip-share must be in [0, 1], got {opts.clip_share}")
    if opts.crop_frames < 1 or (opts.crop_frames - 1) % 4:
        raise UserInputError(f"--crop-frames must be 1 + 4k, got {opts.crop_frames}")
    if min(opts.crop_batch, opts.clip_batch) < 1:
        raise UserInputError("batch sizes must be at least 1")
    if opts.temporal_weight < 0 or opts.latent_noise < 0:
        raise UserInputError("--temporal-weight and --latent-noise must be >= 0")
    if opts.latent_noise and not opts.decoder_only:
        raise UserInputError("--latent-noise trains the decoder alone: add --decoder-only")
    if min(opts.gan_weight, opts.fm_weight, opts.gan_start, opts.disc_lead) < 0:
        raise UserInputError("--gan-weight, --fm-weight, --gan-start and --disc-lead must be >= 0")
    if opts.disc_width < 1:
        raise UserInputError(f"--disc-width must be at least 1, got {opts.disc_width}")
    size = 2 ** DiscriminatorConfig().stages
    if opts.gan and (opts.crop % size or opts.clip_crop % size):
        raise UserInputError(f"with the discriminator, crops must be multiples of {size} px")


def export_vae(
    vae: CausalVAE,
    cfg: ModelConfig,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    path: Path,
    extra: dict,
) -> ModelConfig:
    """Write a full inference checkpoint: `cfg` with the latent statistics, this VAE's
    weights, the other networks at their (seeded) initialisation; `trained=False`.
    Returns the config written."""
    from tmrender.models.checkpoint import save_checkpoint
    from tmrender.models.talking import TalkingModel

    vae_cfg = dataclasses.replace(vae.cfg, latent_mean=mean, latent_std=std)
    full_cfg = dataclasses.replace(cfg, vae=vae_cfg)
    with seeded(0):
        model = TalkingModel(full_cfg)
    model.vae.load_state_dict({k: v.cpu() for k, v in vae.state_dict().items()})
    with atomic_write(path) as partial:
        save_checkpoint(model, partial, trained=False, extra_meta=extra)
    return full_cfg


def test_figures(
    checkpoint: Path, data: Path, device: str = "cpu", reader_path: Path | None = None
) -> dict:
    """`evaluate_vae` of an exported checkpoint's VAE on every clip of DATA/test (whole
    clips, up to 1 + 4k frames): {"split", "clips", "psnr", "psnr_mouth", "reader_r", ...}."""
    from tmrender.eval.mouth import load_mouth_reader
    from tmrender.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint, device=device)
    cache = load_frames(list_clips(data, "test"))
    reader = load_mouth_reader(reader_path)
    figures = evaluate_vae(model.vae, cache, range(cache.clips), reader, max_frames=1 << 30)
    return {"split": "test", "clips": cache.clips, **figures}
