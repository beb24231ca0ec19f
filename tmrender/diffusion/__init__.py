"""Flow matching (rectified flow) and samplers: pure functions citing their equations."""

from tmrender.diffusion.flow import (
    eps_from_velocity,
    interpolate,
    sampling_timesteps,
    shift_timesteps,
    velocity_target,
    x0_from_velocity,
)
from tmrender.diffusion.samplers import sample_chunk_student, sample_euler_cfg

__all__ = [
    "eps_from_velocity",
    "interpolate",
    "sample_chunk_student",
    "sample_euler_cfg",
    "sampling_timesteps",
    "shift_timesteps",
    "velocity_target",
    "x0_from_velocity",
]
