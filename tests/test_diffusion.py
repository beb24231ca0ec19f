"""Flow-matching schedule and samplers against closed forms."""

from __future__ import annotations

import pytest
import torch

from tmrender.config import SamplerConfig
from tmrender.diffusion import (
    eps_from_velocity,
    interpolate,
    sample_chunk_student,
    sample_euler_cfg,
    sampling_timesteps,
    shift_timesteps,
    velocity_target,
    x0_from_velocity,
)

SHAPE = (2, 4, 3, 5, 6)  # B, C, T, H, W


def pair(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g, dtype=torch.float64), torch.randn(
        SHAPE, generator=g, dtype=torch.float64
    )


def test_shift_formula():
    assert shift_timesteps(0.5, 1.0) == 0.5
    assert shift_timesteps(0.5, 3.0) == pytest.approx(0.75)  # 1.5 / 2
    assert shift_timesteps(0.5, 5.0) == pytest.approx(5 / 6)  # 2.5 / 3
    assert shift_timesteps(0.0, 5.0) == 0.0 and shift_timesteps(1.0, 5.0) == 1.0
    ts = sampling_timesteps(10, 5.0)
    assert len(ts) == 11 and ts[0] == 1.0 and ts[-1] == 0.0 and bool((ts[:-1] > ts[1:]).all())
    assert SamplerConfig(shift=3.0, student_timesteps=(1.0, 0.5)).student_sigmas == (1.0, 0.75)


def test_interpolation_and_velocity_are_consistent():
    x0, eps = pair()
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    xt = interpolate(x0, eps, t)
    assert torch.allclose(xt[0], 0.7 * x0[0] + 0.3 * eps[0])
    v = velocity_target(x0, eps)
    assert torch.allclose(x0_from_velocity(xt, v, t), x0)
    assert torch.allclose(eps_from_velocity(xt, v, t), eps)
    per_frame = torch.tensor([[0.0, 0.5, 1.0]] * 2, dtype=torch.float64)  # (B, T)
    xf = interpolate(x0, eps, per_frame)
    assert torch.equal(xf[:, :, 0], x0[:, :, 0]) and torch.equal(xf[:, :, 2], eps[:, :, 2])


def test_euler_on_a_linear_flow_recovers_x0_exactly():
    x0, eps = pair()
    calls = []

    def oracle(x, t, cond):  # straight path: the velocity is constant
        calls.append(cond)
        return eps - x0

    out = sample_euler_cfg(oracle, eps, sampling_timesteps(7, 3.0), cfg_scale=1.0)
    assert torch.allclose(out, x0, atol=1e-12) and len(calls) == 7


def test_euler_cfg_combines_velocities():
    x0, eps = pair()
    v_c, v_u = eps - x0, torch.zeros_like(x0)

    def fn(x, t, cond):
        return v_c if cond else v_u

    w = 3.0
    out = sample_euler_cfg(fn, eps, sampling_timesteps(4, 1.0), cfg_scale=w)
    assert torch.allclose(out, eps - (v_u + w * (v_c - v_u)), atol=1e-12)


@pytest.mark.parametrize("stochastic", [False, True])
def test_student_makes_exactly_two_calls_and_recovers_x0(stochastic):
    x0, eps = pair()
    seen = []

    def oracle(x, t):  # exact velocity of the straight path through x0
        seen.append(float(t[0]))
        assert t.shape == (SHAPE[0],)
        tt = t.view(-1, 1, 1, 1, 1).to(x.dtype)
        return (x - x0) / tt

    sigmas = SamplerConfig(shift=3.0).student_sigmas
    renoise = [torch.randn(SHAPE, dtype=torch.float64)] if stochastic else None
    out = sample_chunk_student(oracle, eps, sigmas, renoise)
    assert seen == list(sigmas) and len(seen) == 2
    assert torch.allclose(out, x0, atol=1e-12)
