"""The zero-lag temporal filter against latent-boundary flicker (tmrender.render.temporal)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tmrender.config import SamplerConfig
from tmrender.render.temporal import TemporalFilter

TAPS = (1, 2, 2, 2, 1)


def whole_clip(x: torch.Tensor, taps) -> torch.Tensor:
    """The filter of a whole clip at once, edges repeated: (1, C, T, H, W)."""
    r, w = len(taps) // 2, torch.tensor(taps, dtype=torch.float32) / sum(taps)
    pad = torch.cat([x[:, :, :1]] * r + [x] + [x[:, :, -1:]] * r, dim=2)
    return sum(w[k] * pad[:, :, k : k + x.shape[2]] for k in range(len(taps)))


def stream(x: torch.Tensor, cuts, taps=TAPS) -> list[torch.Tensor]:
    f = TemporalFilter(taps)
    bounds = [0, *cuts, x.shape[2]]
    out = [f.push(x[:, :, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return [*out, f.flush()]


@pytest.mark.parametrize("cuts", [(), (1,), (1, 1, 9, 17), (3, 4, 5, 6, 7)])
def test_any_blocking_gives_the_whole_clip_filter(cuts):
    x = torch.rand(1, 3, 23, 4, 5, generator=torch.Generator().manual_seed(0))
    out = stream(x, cuts)
    assert sum(o.shape[2] for o in out) == 23
    assert torch.allclose(torch.cat(out, dim=2), whole_clip(x, TAPS), atol=1e-6)


def test_one_frame_and_nothing():
    x = torch.rand(1, 3, 1, 2, 2)
    assert torch.allclose(torch.cat(stream(x, ()), dim=2), x)
    assert TemporalFilter(TAPS).flush() is None


def test_latent_boundary_steps_go_and_steady_motion_stays():
    t = torch.arange(40, dtype=torch.float32)
    steps = torch.tensor([0.0, 0.0, 0.0, 1.0]).repeat(10)  # a jump every 4 frames
    ramp = 0.1 * t  # steady motion: a symmetric filter neither blurs nor delays it
    x = (steps + ramp).view(1, 1, 40, 1, 1)
    y = torch.cat(stream(x, (8, 16, 24, 32)), dim=2).flatten()
    inner = slice(2, 38)
    assert torch.allclose(y[inner], ramp[inner] + 0.25, atol=1e-5)


def test_taps_must_be_symmetric_with_odd_length():
    for taps in ((1, 2), (1, 2, 3), (-1, 0, -1)):
        with pytest.raises(AssertionError):
            TemporalFilter(taps)
        with pytest.raises(AssertionError):
            SamplerConfig(deflicker_taps=taps)
    with pytest.raises(AssertionError):
        TemporalFilter(())
    assert SamplerConfig(deflicker_taps=[1, 2, 1]).deflicker_taps == (1.0, 2.0, 1.0)
    assert SamplerConfig().deflicker_taps == ()  # off unless a model asks for it


def test_to_uint8_rounds_clamps_and_puts_channels_last():
    from tmrender.render.pipeline import to_uint8

    frames = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.2]).view(1, 1, 5, 1, 1).expand(1, 3, 5, 2, 1)
    pixels = to_uint8(frames)
    assert pixels.shape == (5, 2, 1, 3) and pixels.dtype == np.uint8
    assert pixels[:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]
