"""The toolkit every DiT stage shares (teacher, ode, dmd, the distillation-gap measurement):
conditioning and running the DiT on a window batch (`tmrender.train.latents.WindowBatch`),
noise drawn reproducibly on the device, the mouth-weighted loss, sampling windows with the
teacher (Euler + audio CFG), decoding and reading the lip sync of sampled windows, and
what a DiT stage checkpoints and trains.

Layout: latents `B, C, L, h, w` (L latent frames of a window), the anchor (the clip's
reference latent) `B, C, 1, h, w`, audio tokens `B, L, N, D`, face masks `B, h, w`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tmrender.diffusion.flow import sampling_timesteps
from tmrender.diffusion.samplers import sample_euler_cfg
from tmrender.eval.metrics import pearson
from tmrender.models.dit import WanDiT
from tmrender.models.talking import TalkingModel
from tmrender.train.latents import LatentCache, WindowBatch, sample_windows, window_starts

# ---- conditioning and the DiT on a window ---------------------------------------------------


def window_tokens(model: TalkingModel, windows: WindowBatch) -> Tensor:
    """Audio tokens (B, L, N, audio_dim) of a window batch: projected audio, the silence
    embedding on silent chunks (the renderer's rule)."""
    return model.audio_tokens(windows.audio, windows.speaking)


def mouth_weights(windows: WindowBatch, mouth_weight: float) -> Tensor:
    """Loss weights (B, 1, L, h, w): 1 everywhere plus `mouth_weight` in the mouth box."""
    return 1.0 + mouth_weight * windows.mouth


def window_velocity(
    dit: WanDiT, anchor: Tensor, x_t: Tensor, t: Tensor, tokens: Tensor, face: Tensor | None
) -> Tensor:
    """Bidirectional DiT on [anchor | x_t]: anchor (B, C, 1, h, w), x_t (B, C, L, h, w),
    t (B,), tokens (B, L, N, D), face (B, h, w) or None -> velocity (B, C, L, h, w)."""
    x = torch.cat((anchor.to(x_t.dtype), x_t), dim=2)
    return dit(x, t, tokens, face)[:, :, anchor.shape[2] :]


# ---- loss and noise -----------------------------------------------------------------------


def weighted_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted squared error, normalised per sample then averaged over the batch;
    pred/target (B, C, L, h, w), weight broadcast to them: mean_b sum(w err) / sum(w).
    A mean over samples, so a batch split across ranks averages back to the same loss."""
    err = (pred.float() - target.float()).pow(2)
    w = weight.float().expand_as(err).flatten(1)
    return ((err.flatten(1) * w).sum(1) / w.sum(1)).mean()


def device_noise(shape: Sequence[int], gen: torch.Generator, device: torch.device) -> Tensor:
    """Standard normal noise of `shape` on `device`, from a device generator seeded by the
    CPU generator `gen` (deterministic, and no large CPU->GPU copy)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    device_gen = torch.Generator(device).manual_seed(seed)
    return torch.randn(tuple(shape), generator=device_gen, device=device)


# ---- sampling with the teacher -------------------------------------------------------------


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


# ---- what a DiT stage checkpoints and trains --------------------------------------------


def diffusion_networks(model: TalkingModel) -> dict[str, nn.Module]:
    """What a DiT stage checkpoints: the trained DiT side and the frozen VAE."""
    m = model
    return {"dit": m.dit, "audio_proj": m.audio_proj, "silence": m.silence, "vae": m.vae}


def diffusion_parameters(model: TalkingModel) -> list[nn.Parameter]:
    """What a DiT stage trains: the DiT, the audio projection and the silence embedding."""
    m = model
    return [*m.dit.parameters(), *m.audio_proj.parameters(), *m.silence.parameters()]


class DiffusionStage:
    """The stage protocol's network side for a stage that trains one model's DiT side
    (`diffusion_parameters` of `self.model`) with one optimizer, "main" (teacher, ode)."""

    model: TalkingModel

    def networks(self) -> dict[str, nn.Module]:
        return diffusion_networks(self.model)

    def optimizers(self) -> dict[str, list[nn.Parameter]]:
        return {"main": diffusion_parameters(self.model)}

    def updates(self, step: int) -> list[str]:
        return ["main"]
