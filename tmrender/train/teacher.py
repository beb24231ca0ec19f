"""Training recipe of the teacher (`tmrender train teacher`): the bidirectional
audio-conditioned DiT, by flow matching on cached VAE latents (`tmrender.train.latents`).

Model input per training window of L = chunks x C latent frames (`WindowBatch`):
    [reference latent (anchor, clean, t = 0) | x_t of the window's L latents]
with x_t = (1 - t) x0 + t eps and t = shift(u), u ~ U(0, 1) (flow matching with the
preset's timestep shift, `tmrender.diffusion.flow`); the DiT runs bidirectionally
(`WanDiT.forward`, causal=False) and is trained to predict the velocity eps - x0.

Conditioning, as the paper's: the reference comes from another moment of the same clip
(the mouth cannot be copied); audio tokens per latent frame from its ±window audio
features (`TalkingModel.audio_tokens`), the learned silence embedding on chunks that
voice activity marks silent (the renderer's per-chunk rule); audio cross-attention gated
by the face mask (the window's face box on the latent grid). Classifier-free guidance on
audio: with probability `audio_drop` a sample's face mask is all zero, which removes the
audio term altogether; the sampler's unconditional branch does exactly that. (Dropping to
the silence embedding instead would teach the model that the silence embedding sometimes
comes with a talking mouth, and silence mode must keep the lips closed.)

Loss: squared velocity error weighted by `1 + mouth_weight` inside the mouth box of each
latent frame (lip sync lives in ~2 latent cells). Trained: the DiT, the audio projection
and the silence embedding; the VAE and the audio encoder are frozen (the cache holds
their outputs).

Starting point, "base" vs "direct": this stage trains the teacher in one go from the
`--init` checkpoint's DiT, whose audio output projections are zero (Wan init, what
`WanDiT.zero_audio_output` gives a converted model, so the conversion path's starting
point is still what this stage starts from). An audio-free `base` stage first (this stage
with `audio_drop=1`) sees the same corpus, so it can only learn what the teacher learns
anyway, without the audio; measured on an H100 at equal steps (1500 direct vs 750 base +
750 teacher, tm-mini, batch 64), direct ended with the lower held-out loss (0.226 vs
0.233), mouth loss (0.380 vs 0.384) and the larger audio gain (0.020 vs 0.017).

Sampling (`sample_teacher`): Euler on the probability-flow ODE with audio CFG
(`tmrender.diffusion.samplers.sample_euler_cfg`), 12 steps x 2 = 24 network evaluations,
both branches in one forward of a doubled batch.

Validation on held-out train clips: the flow-matching loss at fixed timesteps with and
without audio (whole frame and mouth region; `audio_gain` = how much the audio lowers the
mouth loss), and every `sample_every` rounds the lip sync of decoded teacher samples read
by the mouth reader (`sync_r`, with `sync_r_vae` of plain VAE reconstructions of the same
windows as the ceiling). The mouth reader is an instrument: it never enters a loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tmrender.diffusion.flow import interpolate, sampling_timesteps, shift_timesteps
from tmrender.diffusion.samplers import sample_euler_cfg
from tmrender.eval.metrics import pearson
from tmrender.files import atomic_write
from tmrender.models.checkpoint import load_checkpoint, save_checkpoint
from tmrender.models.dit import WanDiT
from tmrender.models.talking import TalkingModel
from tmrender.train.latents import (
    LatentCache,
    WindowBatch,
    gather_windows,
    load_or_build_cache,
    sample_windows,
    split_clips,
    window_starts,
)

# ---- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherOptions:
    """What the teacher stage trains on and how it is validated (LoopOptions: the loop)."""

    # data
    batch: int = 8  # windows per step (use 64-256 on a GPU)
    chunks: int = 4  # chunks of C latent frames per window (L = chunks * C)
    refs_per_clip: int = 8
    val_clips: int = 8  # the last clips of the train split, never trained on
    # conditioning and loss
    audio_drop: float = 0.1  # probability of no audio term (CFG dropout, face mask zero)
    mouth_weight: float = 4.0  # extra loss weight inside the mouth box
    # validation
    val_windows: int = 16
    val_timesteps: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    sample_every: int = 2  # validation rounds between lip-sync checks by sampling; 0 = never
    sample_windows: int = 8
    sample_steps: int = 12  # Euler steps; with CFG 2 evaluations each (24 NFE)
    reader: str = ""  # mouth reader weights ("" = the shipped ones, if present)


# ---- conditioning --------------------------------------------------------------------------


def window_tokens(model: TalkingModel, windows: WindowBatch) -> Tensor:
    """Audio tokens (B, L, N, audio_dim) of a window batch: projected audio, the silence
    embedding on silent chunks (the renderer's rule)."""
    return model.audio_tokens(windows.audio, windows.speaking)


def drop_audio(face: Tensor, drop: Tensor) -> Tensor:
    """face (B, h, w) masks, drop (B,) bool -> masks with the dropped rows all zero (no
    audio term for those samples: the CFG-unconditional model)."""
    return face * (~drop).to(face.dtype)[:, None, None]


def mouth_weights(windows: WindowBatch, mouth_weight: float) -> Tensor:
    """Loss weights (B, 1, L, h, w): 1 everywhere plus `mouth_weight` in the mouth box."""
    return 1.0 + mouth_weight * windows.mouth


def weighted_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted squared error, normalised per sample then averaged over the batch;
    pred/target (B, C, L, h, w), weight broadcast to them: mean_b sum(w err) / sum(w).
    A mean over samples, so a batch split across ranks averages back to the same loss."""
    err = (pred.float() - target.float()).pow(2)
    w = weight.float().expand_as(err).flatten(1)
    return ((err.flatten(1) * w).sum(1) / w.sum(1)).mean()


def window_velocity(
    dit: WanDiT, anchor: Tensor, x_t: Tensor, t: Tensor, tokens: Tensor, face: Tensor | None
) -> Tensor:
    """Bidirectional DiT on [anchor | x_t]: anchor (B, C, 1, h, w), x_t (B, C, L, h, w),
    t (B,), tokens (B, L, N, D), face (B, h, w) or None -> velocity (B, C, L, h, w)."""
    x = torch.cat((anchor.to(x_t.dtype), x_t), dim=2)
    return dit(x, t, tokens, face)[:, :, anchor.shape[2] :]


# ---- loss ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowBatch:
    """A teacher training batch: windows, timesteps t (B,) (shifted), noise eps like x0."""

    windows: WindowBatch
    t: Tensor
    eps: Tensor


def flow_matching_loss(
    model: TalkingModel, batch: FlowBatch, mouth_weight: float
) -> tuple[Tensor, dict[str, float]]:
    """Velocity regression (SD3 eq. 6 target eps - x0 on x_t = (1 - t) x0 + t eps),
    weighted in the mouth box. Returns (loss, {"mouth": mouth-region error})."""
    w = batch.windows
    x_t = interpolate(w.x0, batch.eps, batch.t)
    tokens = window_tokens(model, w)
    v = window_velocity(model.dit, w.anchor, x_t, batch.t, tokens, w.face)
    target = batch.eps - w.x0
    loss = weighted_mse(v, target, mouth_weights(w, mouth_weight))
    mouth = weighted_mse(v.detach(), target, w.mouth + 1e-6)
    return loss, {"mouth": mouth.detach()}


def make_flow_batch(
    windows: WindowBatch, gen: torch.Generator, shift: float, audio_drop: float
) -> FlowBatch:
    """Timesteps t = shift(u), u ~ U(0, 1), noise and the audio dropout for `windows`;
    every random number from the CPU generator `gen`."""
    b = windows.latents.shape[0]
    device = windows.latents.device
    t = shift_timesteps(torch.rand(b, generator=gen), shift).to(device)
    drop = (torch.rand(b, generator=gen) < audio_drop).to(device)
    eps = device_noise(windows.x0.shape, gen, device)
    return FlowBatch(windows.with_face(drop_audio(windows.face, drop)), t, eps)


def device_noise(shape: Sequence[int], gen: torch.Generator, device: torch.device) -> Tensor:
    """Standard normal noise of `shape` on `device`, from a device generator seeded by the
    CPU generator `gen` (deterministic, and no large CPU->GPU copy)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    device_gen = torch.Generator(device).manual_seed(seed)
    return torch.randn(tuple(shape), generator=device_gen, device=device)


# ---- sampling ------------------------------------------------------------------------------


class GuidedVelocity:
    """`denoise_fn(x_t, t, conditional)` of `sample_euler_cfg` for the teacher on a window
    batch. With guidance, the conditional call evaluates both branches in one forward of
    a doubled batch (the unconditional with the face mask at zero: no audio term, as in
    training's dropout) and the unconditional call that follows returns that half."""

    def __init__(
        self, dit: WanDiT, anchor: Tensor, tokens: Tensor, face: Tensor, guided: bool
    ) -> None:
        self.dit, self.guided = dit, guided
        if guided:
            self.anchor = torch.cat((anchor, anchor))
            self.tokens = torch.cat((tokens, tokens))
            self.face = torch.cat((face, torch.zeros_like(face)))
        else:
            self.anchor, self.tokens, self.face = anchor, tokens, face
        self._uncond: tuple[Tensor, Tensor] | None = None

    def __call__(self, x: Tensor, t: Tensor, conditional: bool) -> Tensor:
        if not conditional:
            assert self._uncond is not None and self._uncond[0] is x, "conditional call first"
            v = self._uncond[1]
            self._uncond = None
            return v
        if not self.guided:
            return window_velocity(self.dit, self.anchor, x, t, self.tokens, self.face).float()
        both = window_velocity(
            self.dit, self.anchor, torch.cat((x, x)), torch.cat((t, t)), self.tokens, self.face
        ).float()
        v_cond, v_uncond = both.chunk(2)
        self._uncond = (x, v_uncond)
        return v_cond


def teacher_timesteps(steps: int, shift: float, include: Sequence[float] = ()) -> list[float]:
    """The Euler grid `flow.sampling_timesteps(steps, shift)` (1 -> 0) with the timesteps of
    `include` added where missing (to record the trajectory there), decreasing."""
    grid = [float(t) for t in sampling_timesteps(steps, shift)]
    for t in include:
        if min(abs(t - g) for g in grid) > 1e-9:
            grid.append(float(t))
    return sorted(grid, reverse=True)


def sample_teacher(
    model: TalkingModel,
    windows: WindowBatch,
    noise: Tensor,
    steps: int,
    cfg_scale: float | None = None,
    record: Sequence[float] = (),
) -> tuple[Tensor, dict[float, Tensor]]:
    """Sample the window latents with the teacher (Euler + audio CFG, 2 x steps network
    evaluations), from `noise` (B, C, L, h, w) at t = 1, conditioned on `windows`' anchor,
    audio and face mask. Returns (x0 (B, C, L, h, w) float32, {t: x at t} for every t in
    `record` (in (0, 1]), the probability-flow trajectory at those timesteps)."""
    sampler = model.cfg.sampler
    scale = sampler.cfg_scale if cfg_scale is None else cfg_scale
    tokens = window_tokens(model, windows)
    fn = GuidedVelocity(model.dit, windows.anchor, tokens, windows.face, scale != 1.0)
    grid = teacher_timesteps(steps, sampler.shift, record)
    x, trajectory, position = noise.float(), {}, 0
    for t in sorted(record, reverse=True):
        stop = min(range(len(grid)), key=lambda i: abs(grid[i] - t))
        if stop > position:
            x = sample_euler_cfg(fn, x, grid[position : stop + 1], scale)
            position = stop
        trajectory[t] = x
    if position < len(grid) - 1:
        x = sample_euler_cfg(fn, x, grid[position:], scale)
    return x, trajectory


def sample_clip(
    model: TalkingModel,
    cache: LatentCache,
    clip: int,
    ref: int,
    chunks: int,
    steps: int,
    seed: int = 0,
) -> Tensor:
    """A whole cached clip sampled by the teacher from one of its references and its
    audio: its latent frames 1.. cut into windows of `chunks` chunks (the last one
    shorter, whole chunks only), each sampled bidirectionally on its own. Returns latents
    (1, C, 1 + L, h, w), the reference first (`decode_windows` drops it)."""
    c = model.cfg.chunk_latent_frames
    lo, hi = int(cache.clip_start[clip]) + 1, int(cache.clip_start[clip + 1])
    end = lo + (hi - lo) // c * c
    gen = torch.Generator().manual_seed(seed)
    pieces = []
    for start in range(lo, end, chunks * c):
        length = min(chunks * c, end - start)
        w = gather_windows(cache, torch.tensor([start]), torch.tensor([ref]), length, c)
        noise = device_noise(w.x0.shape, gen, w.x0.device)
        pieces.append(sample_teacher(model, w, noise, steps)[0])
    return torch.cat([w.anchor.float(), *pieces], dim=2)


# ---- validation helpers --------------------------------------------------------------------


def decode_windows(model: TalkingModel, anchor: Tensor, x0: Tensor) -> np.ndarray:
    """Decode windows as the renderer does (the decoder primed with the anchor, which is
    dropped): anchor (B, C, 1, h, w), x0 (B, C, L, h, w) -> uint8 (B, 4L, H, W, 3)."""
    dtype = next(model.vae.parameters()).dtype
    frames = model.vae.decode(torch.cat((anchor, x0), dim=2).to(dtype))[:, :, 1:]
    pixels = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 4, 1).cpu().numpy()


def lip_sync_r(reader, frames: np.ndarray, opening: Tensor) -> float:
    """Pearson r of the reader's opening on frames (B, F, H, W, 3) with the truth (B, F)."""
    from tmrender.eval.mouth import read_mouth

    read = read_mouth(reader, frames.reshape(-1, *frames.shape[2:]))
    column = reader.cfg.outputs.index("open")
    return pearson(read[:, column], opening.float().cpu().numpy().ravel())


def load_reader(path: str):
    """The mouth reader (an instrument for validation only), or None when no weights."""
    from tmrender.eval.mouth import DEFAULT_WEIGHTS, load_mouth_reader

    weights = Path(path) if path else DEFAULT_WEIGHTS
    return load_mouth_reader(weights) if weights.is_file() else None


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (as the loop trains), nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fixed_windows(
    cache: LatentCache, clips: list[int], count: int, chunks: int, c: int, fpl: int, seed: int
) -> WindowBatch:
    """`count` windows of held-out `clips`, the same at every call (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    starts = window_starts(cache, clips, chunks * c)
    return sample_windows(cache, starts, count, chunks * c, c, fpl, gen)


# ---- the stage -----------------------------------------------------------------------------


def diffusion_networks(model: TalkingModel) -> dict[str, nn.Module]:
    """What a DiT stage checkpoints: the trained DiT side and the frozen VAE."""
    m = model
    return {"dit": m.dit, "audio_proj": m.audio_proj, "silence": m.silence, "vae": m.vae}


def diffusion_parameters(model: TalkingModel) -> list[nn.Parameter]:
    """What a DiT stage trains: the DiT, the audio projection and the silence embedding."""
    m = model
    return [*m.dit.parameters(), *m.audio_proj.parameters(), *m.silence.parameters()]


class TeacherStage:
    """`tmrender train teacher`: see the module docstring. `init`: a tmrender checkpoint
    holding the trained VAE and audio encoder (the audio stage's export)."""

    name = "teacher"
    VAL_SEED = 1234

    def __init__(
        self,
        data: Path,
        out_dir: Path,
        init: Path,
        opts: TeacherOptions,
        device: str = "cpu",
        cache_path: Path | None = None,
        on_progress=None,
    ) -> None:
        self.opts = opts
        self.init = Path(init)
        self.model, self.init_meta = load_checkpoint(self.init, device=device)
        cfg = self.model.cfg
        self.c, self.fpl = cfg.chunk_latent_frames, cfg.frames_per_latent
        self.length = opts.chunks * self.c
        path = cache_path or Path(out_dir) / "latents.pt"
        self.cache = load_or_build_cache(
            path, self.model, data, refs_per_clip=opts.refs_per_clip, on_clip=on_progress
        )
        train_clips, self.val_clips = split_clips(self.cache, opts.val_clips)
        self.train_starts = window_starts(self.cache, train_clips, self.length)
        self.reader = load_reader(opts.reader)
        self.rounds = 0
        self.last_val: dict[str, float] = {}

    # -- Stage protocol
    def networks(self) -> dict[str, nn.Module]:
        return diffusion_networks(self.model)

    def optimizers(self) -> dict[str, list[nn.Parameter]]:
        return {"main": diffusion_parameters(self.model)}

    def updates(self, step: int) -> list[str]:
        return ["main"]

    def batch(self, gen: torch.Generator, device: torch.device) -> FlowBatch:
        cache = self._cache_on(device)
        w = sample_windows(
            cache, self.train_starts, self.opts.batch, self.length, self.c, self.fpl, gen
        )
        return make_flow_batch(w, gen, self.model.cfg.sampler.shift, self.opts.audio_drop)

    def loss(self, opt_name: str, batch: FlowBatch) -> tuple[Tensor, dict[str, float]]:
        return flow_matching_loss(self.model, batch, self.opts.mouth_weight)

    def validate(self) -> dict[str, float]:
        device = next(self.model.dit.parameters()).device
        cache = self._cache_on(device)
        o = self.opts
        w = fixed_windows(
            cache, self.val_clips, o.val_windows, o.chunks, self.c, self.fpl, self.VAL_SEED
        )
        with autocast_for(device):
            figures = validation_losses(self.model, w, o.val_timesteps, o.mouth_weight)
            self.rounds += 1
            if (
                self.reader is not None
                and o.sample_every
                and (self.rounds - 1) % o.sample_every == 0
            ):
                figures.update(self.sampled_sync(cache))
        self.last_val = figures
        return figures

    def sampled_sync(self, cache: LatentCache) -> dict[str, float]:
        """Lip sync of decoded teacher samples of held-out windows (and of their VAE
        reconstructions, the ceiling)."""
        o = self.opts
        w = fixed_windows(
            cache, self.val_clips, o.sample_windows, o.chunks, self.c, self.fpl, self.VAL_SEED + 1
        )
        gen = torch.Generator().manual_seed(self.VAL_SEED)
        noise = device_noise(w.x0.shape, gen, w.x0.device)
        x0, _ = sample_teacher(self.model, w, noise, o.sample_steps)
        return {
            "sync_r": lip_sync_r(self.reader, decode_windows(self.model, w.anchor, x0), w.opening),
            "sync_r_vae": lip_sync_r(
                self.reader, decode_windows(self.model, w.anchor, w.x0), w.opening
            ),
        }

    def export(self, path: Path) -> dict:
        extra = {
            "stage": "teacher",
            "init": self.init.name,
            "cache": self.cache.key[:16],
            "clips": self.cache.clips,
            "validation": self.last_val,
        }
        with atomic_write(path) as partial:
            save_checkpoint(self.model, partial, trained=True, extra_meta=extra)
        return extra

    def _cache_on(self, device: torch.device) -> LatentCache:
        if self.cache.device != device:
            self.cache = self.cache.to(device)
        return self.cache


def validation_losses(
    model: TalkingModel, windows: WindowBatch, timesteps: Sequence[float], mouth_weight: float
) -> dict[str, float]:
    """Flow-matching losses of fixed windows at fixed timesteps (noise seeded): "loss"
    (weighted, as trained), "mouth" with audio, "mouth_noaudio" without, and "audio_gain"
    = mouth_noaudio - mouth (> 0: the audio explains the mouth)."""
    gen = torch.Generator().manual_seed(0)
    device = windows.latents.device
    sums = {"loss": 0.0, "mouth": 0.0, "mouth_noaudio": 0.0}
    silent = windows.with_face(torch.zeros_like(windows.face))
    for t_value in timesteps:
        t = torch.full((windows.latents.shape[0],), float(t_value), device=device)
        eps = device_noise(windows.x0.shape, gen, device)
        loss, fig = flow_matching_loss(model, FlowBatch(windows, t, eps), mouth_weight)
        _, fig_silent = flow_matching_loss(model, FlowBatch(silent, t, eps), mouth_weight)
        sums["loss"] += float(loss)
        sums["mouth"] += float(fig["mouth"])
        sums["mouth_noaudio"] += float(fig_silent["mouth"])
    out = {k: v / len(timesteps) for k, v in sums.items()}
    out["audio_gain"] = out["mouth_noaudio"] - out["mouth"]
    return out
