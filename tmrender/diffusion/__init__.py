"""Flow matching (rectified flow), samplers and the student's streaming rollout.

- `flow`: the schedule, interpolation and velocity, pure functions citing their equations;
- `samplers`: the teacher's Euler sampler with audio guidance, the student's 2-step sampler;
- `stream`: the one chunk-by-chunk rollout of the student against its KV cache, which the
  renderer, the ode and dmd stages and the distillation gap all run.

Layer 1: may import config, errors, files, devices and models (README.md, "Module map").
"""

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
