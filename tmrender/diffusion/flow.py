"""Rectified flow (flow matching) schedule, pure functions. Timesteps t in [0, 1], t = 1 is
pure noise. Tensors are latents `B, C, T, H, W`; t is a float, (B,) or (B, T) per frame.

- Interpolation (Liu et al. 2022, "Flow Straight and Fast", eq. 1; Esser et al. 2024,
  SD3, eq. 3 with a_t = 1 - t, b_t = t):  x_t = (1 - t) x_0 + t eps.
- Velocity target (SD3 eq. 6 / Wan "flow matching"): v = dx_t/dt = eps - x_0.
- Timestep shift (SD3 section 5.3.2, Wan `sample_shift`): t' = s t / (1 + (s - 1) t).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _bcast(t: Tensor | float, like: Tensor) -> Tensor | float:
    """t float, (B,) or (B, T) -> broadcastable against `like` (B, C, T, H, W)."""
    if not isinstance(t, Tensor) or t.ndim == 0:
        return t
    assert like.ndim == 5, f"latents must be B, C, T, H, W; got {tuple(like.shape)}"
    if t.ndim == 1:
        return t.view(-1, 1, 1, 1, 1).to(like.dtype)
    assert t.ndim == 2, f"t must be a float, (B,) or (B, T); got {tuple(t.shape)}"
    return t.view(t.shape[0], 1, t.shape[1], 1, 1).to(like.dtype)


def interpolate(x0: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
    """x_t = (1 - t) x_0 + t eps."""
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """v = eps - x_0 (what the network is trained to predict)."""
    return eps - x0


def x0_from_velocity(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    """x_0 = x_t - t v (inverts the interpolation given the velocity)."""
    return x_t - _bcast(t, x_t) * v


def eps_from_velocity(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    """eps = x_t + (1 - t) v."""
    return x_t + (1 - _bcast(t, x_t)) * v


def shift_timesteps(t: Tensor | float, shift: float) -> Tensor | float:
    """t' = s t / (1 + (s - 1) t): s > 1 spends more steps at high noise (SD3 / Wan)."""
    return shift * t / (1 + (shift - 1) * t)


def sampling_timesteps(steps: int, shift: float) -> Tensor:
    """steps + 1 shifted timesteps from 1 down to 0 (uniform before the shift), float64."""
    assert steps >= 1
    return shift_timesteps(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)
