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

Starting point: this stage trains the teacher in one go from the `--init` checkpoint's
DiT, whose audio output projections are zero (Wan init, what `WanDiT.zero_audio_output`
gives a converted model, so the conversion path's starting point is still what this stage
starts from). An audio-free "base" stage first (this stage with `audio_drop=1`) was
measured and did no better (docs/RECIPE.md, "(base)").

Sampling (`tmrender.train.windows.sample_teacher`): Euler on the probability-flow ODE with
audio CFG, both branches in one forward of a doubled batch.

Validation on held-out train clips: the flow-matching loss at fixed timesteps with and
without audio (whole frame and mouth region; `audio_gain` = how much the audio lowers the
mouth loss), and every `sample_every` rounds the lip sync of decoded teacher samples read
by the mouth reader (`sync_r`, with `sync_r_vae` of plain VAE reconstructions of the same
windows as the ceiling). The mouth reader is an instrument: it never enters a loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tmrender.diffusion.flow import interpolate, shift_timesteps
from tmrender.files import atomic_write
from tmrender.models.checkpoint import load_checkpoint, save_checkpoint
from tmrender.models.talking import TalkingModel
from tmrender.train.latents import (
    LatentCache,
    WindowBatch,
    load_or_build_cache,
    sample_windows,
    split_clips,
    window_starts,
)
from tmrender.train.windows import (
    DiffusionStage,
    autocast_for,
    decode_windows,
    device_noise,
    fixed_windows,
    lip_sync_r,
    load_reader,
    mouth_weights,
    sample_teacher,
    weighted_mse,
    window_tokens,
    window_velocity,
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


def drop_audio(face: Tensor, drop: Tensor) -> Tensor:
    """face (B, h, w) masks, drop (B,) bool -> masks with the dropped rows all zero (no
    audio term for those samples: the CFG-unconditional model)."""
    return face * (~drop).to(face.dtype)[:, None, None]


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


# ---- the stage -----------------------------------------------------------------------------


class TeacherStage(DiffusionStage):
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

    # -- Stage protocol (networks, optimizers, updates: DiffusionStage)
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
