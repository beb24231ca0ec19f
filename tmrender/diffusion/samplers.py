"""Samplers, pure functions over a `denoise_fn` that returns the velocity.

`denoise_fn(x_t, t)` takes latents `B, C, T, H, W` and a timestep tensor (B,) and returns
the velocity eps - x_0 (tmrender.diffusion.flow). It closes over everything else (the
DiT, the KV cache state, audio tokens), so these functions do not know about networks.

- `sample_euler_cfg`: the teacher. Euler integration of dx/dt = v (the probability-flow
  ODE of rectified flow, Liu et al. 2022 eq. 1), x_{i+1} = x_i + (t_{i+1} - t_i) v_i, with
  classifier-free guidance on audio (Ho & Salimans 2022, eq. 6, on velocities):
  v = v_uncond + w (v_cond - v_uncond).
- `sample_chunk_student`: the distilled student, exactly one network evaluation per
  timestep (2 for the configured student), no guidance: at each t_i predict
  x0 = x_t - t_i v (flow.x0_from_velocity), then move to t_{i+1} either deterministically
  (Euler, the same as re-noising with the predicted eps) or, given fresh noise, by
  re-noising x0 as DMD / CausVid / Self-Forcing do: x_{t_{i+1}} = (1 - t_{i+1}) x0 +
  t_{i+1} eps'. The last prediction is x0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tmrender.diffusion.flow import interpolate, x0_from_velocity

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
GuidedDenoiseFn = Callable[[Tensor, Tensor, bool], Tensor]  # (x_t, t, conditional) -> v


def _t(value: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=torch.float32)


def sample_euler_cfg(
    denoise_fn: GuidedDenoiseFn,
    noise: Tensor,
    timesteps: Sequence[float] | Tensor,
    cfg_scale: float,
) -> Tensor:
    """Teacher: Euler from timesteps[0] (noise) to timesteps[-1] (0) with audio CFG.

    noise: x at timesteps[0], `B, C, T, H, W`; timesteps decreasing, e.g.
    `flow.sampling_timesteps(steps, shift)`; cfg_scale 1 = no guidance (one call per step),
    otherwise two calls (conditional, unconditional). Returns x at timesteps[-1]."""
    assert noise.ndim == 5, f"noise must be B, C, T, H, W; got {tuple(noise.shape)}"
    ts = [float(t) for t in timesteps]
    x = noise
    for t_cur, t_next in zip(ts[:-1], ts[1:], strict=True):
        t = _t(t_cur, x)
        v = denoise_fn(x, t, True)
        if cfg_scale != 1.0:
            v_uncond = denoise_fn(x, t, False)
            v = v_uncond + cfg_scale * (v - v_uncond)
        x = x + (t_next - t_cur) * v
    return x


def sample_chunk_student(
    denoise_fn: DenoiseFn,
    noise: Tensor,
    timesteps: Sequence[float],
    renoise: Sequence[Tensor] | None = None,
) -> Tensor:
    """Student: one evaluation per timestep (len(timesteps) calls, 2 in tm presets), no CFG.

    noise: x at timesteps[0] (normally 1.0), `B, C, Tc, H, W`; timesteps decreasing and
    > 0 (e.g. `SamplerConfig.student_sigmas`); renoise: optional fresh noise for each step
    after the first (len(timesteps) - 1 tensors) -> stochastic re-noising; None ->
    deterministic. Returns the predicted clean chunk x0."""
    assert noise.ndim == 5, f"noise must be B, C, T, H, W; got {tuple(noise.shape)}"
    ts = [float(t) for t in timesteps]
    assert ts and all(a > b for a, b in zip(ts[:-1], ts[1:], strict=True)) and ts[-1] > 0
    assert renoise is None or len(renoise) == len(ts) - 1
    x = noise
    for i, t_cur in enumerate(ts):
        v = denoise_fn(x, _t(t_cur, x))
        x0 = x0_from_velocity(x, v, t_cur)
        if i + 1 == len(ts):
            return x0
        t_next = ts[i + 1]
        eps = renoise[i] if renoise is not None else x + (1 - t_cur) * v
        x = interpolate(x0, eps, t_next)
    raise AssertionError("unreachable")
