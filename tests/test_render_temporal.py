"""The zero-lag temporal filter against latent-boundary flicker, the re-timing within
latents, and the causal filter of live use (tmrender.render.temporal)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tmrender.config import ConfigError, SamplerConfig
from tmrender.render.temporal import CausalFilter, Retimer, TemporalFilter, causal_filter

TAPS = (1, 2, 2, 2, 1)


def whole_clip(x: torch.Tensor, taps) -> torch.Tensor:
    """The filter of a whole clip at once, edges repeated: (1, C, T, H, W)."""
    r, w = len(taps) // 2, torch.tensor(taps, dtype=torch.float32) / sum(taps)
    pad = torch.cat([x[:, :, :1]] * r + [x] + [x[:, :, -1:]] * r, dim=2)
    return sum(w[k] * pad[:, :, k : k + x.shape[2]] for k in range(len(taps)))


def stream(x: torch.Tensor, cuts, taps=TAPS, keep=()) -> list[torch.Tensor]:
    f = TemporalFilter(taps, keep)
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


LEVEL = 2 / 255  # one 8-bit level on the -1..1 scale


def test_edge_keeping_smooths_small_steps_and_keeps_big_ones_where_they_are():
    flicker = 2 * LEVEL * torch.tensor([0.0, 1.0]).repeat(16)  # 2 levels, period 2
    lip = torch.zeros(32)
    lip[12:20] = 80 * LEVEL  # a mouth opening for 8 frames: steps of 80 levels
    x = (flicker + lip).view(1, 1, 32, 1, 1).expand(1, 3, 32, 1, 1)
    y = torch.cat(stream(x, (5, 13, 21), keep=(6, 16)), dim=2)[0, 0, :, 0, 0]
    quiet = [*range(2, 9), *range(23, 30)]  # far from the opening: the flicker is gone
    assert torch.allclose(y[quiet], torch.full((len(quiet),), LEVEL), atol=1e-5)
    for edge in (11, 12, 19, 20):  # the frames around each step keep their raw values
        assert torch.isclose(y[edge], x[0, 0, edge, 0, 0], atol=1e-5)
    linear = torch.cat(stream(x, ()), dim=2)[0, 0, :, 0, 0]
    assert (linear[11] - x[0, 0, 11, 0, 0]).abs() > 5 * LEVEL  # which a linear filter blurs


@pytest.mark.parametrize("cuts", [(), (1, 1, 9, 17)])
def test_edge_keeping_blocking_and_its_limits(cuts):
    x = torch.rand(1, 3, 23, 4, 5, generator=torch.Generator().manual_seed(1)) * 2 - 1
    whole = torch.cat(stream(x, (), keep=(3, 9)), dim=2)
    assert torch.allclose(torch.cat(stream(x, cuts, keep=(3, 9)), dim=2), whole, atol=1e-6)
    wide = torch.cat(stream(x, cuts, keep=(1e4, 2e4)), dim=2)  # nothing is far enough: linear
    assert torch.allclose(wide, whole_clip(x, TAPS), atol=1e-6)
    tight = torch.cat(stream(x, cuts, keep=(0, 1e-6)), dim=2)  # everything is: the raw frames
    assert torch.allclose(tight, x, atol=1e-4)


def test_keep_must_be_an_increasing_pair():
    for keep in ((5,), (8, 4), (-1, 3), (1, 2, 3)):
        with pytest.raises(ConfigError):
            SamplerConfig(deflicker_keep=keep)
        with pytest.raises(AssertionError):
            TemporalFilter(TAPS, keep)
    assert SamplerConfig(deflicker_keep=[6, 16]).deflicker_keep == (6.0, 16.0)
    assert SamplerConfig().deflicker_keep == ()


def test_taps_must_be_symmetric_with_odd_length():
    for taps in ((1, 2), (1, 2, 3), (-1, 0, -1)):
        with pytest.raises(AssertionError):
            TemporalFilter(taps)
        with pytest.raises(ConfigError):
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


def retimed(x: torch.Tensor, per_latent: int, back: float, forward: float) -> torch.Tensor:
    """Re-timing of a whole clip at once (1, C, T, H, W), written frame by frame."""
    out = x.clone()
    n = x.shape[2]
    for i in range(n):
        prev, nxt = x[:, :, max(i - 1, 0)], x[:, :, min(i + 1, n - 1)]
        if i % per_latent == 0:
            out[:, :, i] = (1 - back) * x[:, :, i] + back * prev
        if i % per_latent == per_latent - 1:
            out[:, :, i] = (1 - forward) * x[:, :, i] + forward * nxt
    return out


@pytest.mark.parametrize("per_latent", [2, 4])
@pytest.mark.parametrize("cuts", [(), (1,), (1, 1, 2, 9), (3, 4, 5, 6, 7)])
def test_retimer_streams_the_whole_clip_retiming(per_latent, cuts):
    x = torch.rand(1, 3, 13, 4, 5, generator=torch.Generator().manual_seed(1))
    r = Retimer(per_latent, (0.1, 0.25))
    bounds = [0, *cuts, 13]
    out = [r.push(x[:, :, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    out = torch.cat([*out, r.flush()], dim=2)
    assert out.shape == x.shape
    assert torch.allclose(out, retimed(x, per_latent, 0.1, 0.25), atol=1e-6)
    if per_latent == 4:  # the frames inside a latent pass as they are
        assert torch.equal(out[:, :, 1:3], x[:, :, 1:3])
    empty = Retimer(2, (0.1, 0.25))
    assert empty.push(x[:, :, :0]).shape[2] == 0 and empty.flush() is None


def test_retiming_moves_a_held_step_to_its_own_time():
    """A ramp held for 2 frames per latent (sample-and-hold at the latents' centres) comes
    back as the ramp itself: each frame at its own time."""
    held = torch.tensor([0.5, 0.5, 2.5, 2.5, 4.5, 4.5, 6.5, 6.5]).view(1, 1, 8, 1, 1)
    r = Retimer(2, (0.25, 0.25))
    out = torch.cat([r.push(held), r.flush()], dim=2).flatten()
    assert torch.allclose(out[1:-1], torch.arange(1.0, 7.0))  # the ends have no neighbour


@pytest.mark.parametrize("weights", [(0.6, 0.1), (0.1,), (-0.1, 0.2)])
def test_retime_weights_are_a_pair_within_half(weights):
    with pytest.raises(AssertionError):
        Retimer(2, weights)
    with pytest.raises(ConfigError):
        SamplerConfig(retime=weights)
    assert SamplerConfig(retime=[0.1, 0.25]).retime == (0.1, 0.25)
    assert SamplerConfig().retime == ()


def causal_whole_clip(x: torch.Tensor, taps) -> torch.Tensor:
    """sum_k w_k x[t - k] of a whole clip at once, the first frame repeated before it."""
    w = torch.tensor(taps, dtype=torch.float32) / sum(taps)
    n, past = x.shape[2], len(taps) - 1
    pad = torch.cat([x[:, :, :1]] * past + [x], dim=2)
    return sum(w[k] * pad[:, :, past - k : past - k + n] for k in range(len(taps)))


def causal_stream(x: torch.Tensor, cuts, taps=(1, 1, 1, 1), keep=()) -> list[torch.Tensor]:
    f = CausalFilter(taps, keep)
    bounds = [0, *cuts, x.shape[2]]
    return [f.push(x[:, :, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@pytest.mark.parametrize("cuts", [(), (1,), (1, 1, 9, 17), (3, 4, 5, 6, 7)])
def test_causal_filter_holds_nothing_back_and_streams_the_whole_clip_filter(cuts):
    x = torch.rand(1, 3, 23, 4, 5, generator=torch.Generator().manual_seed(2))
    bounds = [0, *cuts, 23]
    out = causal_stream(x, cuts, taps=(3, 2, 1))
    # every push gives back exactly the frames it was given
    assert [o.shape[2] for o in out] == list(np.diff(bounds))
    assert torch.allclose(torch.cat(out, dim=2), causal_whole_clip(x, (3, 2, 1)), atol=1e-6)
    assert CausalFilter((1, 1)).flush() is None


def test_causal_filter_reads_no_frame_after_its_own():
    x = torch.rand(1, 3, 12, 2, 2, generator=torch.Generator().manual_seed(3))
    other = x.clone()
    other[:, :, 7:] = torch.rand(1, 3, 5, 2, 2, generator=torch.Generator().manual_seed(4))
    a, b = torch.cat(causal_stream(x, (4,)), dim=2), torch.cat(causal_stream(other, (4,)), dim=2)
    assert torch.equal(a[:, :, :7], b[:, :, :7]) and not torch.equal(a[:, :, 7:], b[:, :, 7:])


def test_causal_box_removes_latent_steps_and_ramps_a_step_with_its_designed_lag():
    # a flicker of period 2 (a latent boundary at stride 2) and of period 4: gone after the
    # box of 4 has filled (the first 3 frames see the repeated first frame)
    for period in (2, 4):
        pattern = torch.zeros(period)
        pattern[period // 2 :] = 1.0
        x = pattern.repeat(32 // period).view(1, 1, 32, 1, 1)
        y = torch.cat(causal_stream(x, (8, 16, 24)), dim=2).flatten()
        assert torch.allclose(y[3:], torch.full((29,), 0.5), atol=1e-6)
    # a step at frame 10 becomes a ramp over 4 frames that reaches half at 11.5: 1.5 frames
    # late, (4 - 1) / 2, and never before the step
    x = (torch.arange(24) >= 10).float().view(1, 1, 24, 1, 1)
    y = torch.cat(causal_stream(x, (8, 16)), dim=2).flatten()
    assert torch.equal(y[:10], torch.zeros(10))
    assert torch.allclose(y[10:14], torch.tensor([0.25, 0.5, 0.75, 1.0]))


def test_causal_edge_keeping_passes_a_big_step_at_once_and_smooths_small_ones():
    flicker = 2 * LEVEL * torch.tensor([0.0, 1.0]).repeat(16)  # 2 levels, period 2
    lip = torch.zeros(32)
    lip[12:20] = 80 * LEVEL  # a mouth opening for 8 frames: steps of 80 levels
    x = (flicker + lip).view(1, 1, 32, 1, 1).expand(1, 3, 32, 1, 1)
    y = torch.cat(causal_stream(x, (5, 13, 21), keep=(16, 48)), dim=2)[0, 0, :, 0, 0]
    quiet = [*range(3, 12), *range(25, 32)]  # a box's length away from the opening
    assert torch.allclose(y[quiet], torch.full((len(quiet),), LEVEL), atol=1e-5)
    for edge in (12, 20):  # the first frame of each step is its raw self: no lag
        assert torch.isclose(y[edge], x[0, 0, edge, 0, 0], atol=1e-5)
    linear = torch.cat(causal_stream(x, ()), dim=2)[0, 0, :, 0, 0]
    assert (linear[12] - x[0, 0, 12, 0, 0]).abs() > 40 * LEVEL  # which a linear one lags


def test_causal_filter_of_a_model():
    sampler = SamplerConfig(deflicker_taps=TAPS, deflicker_keep=(8, 24))
    f = causal_filter(sampler, frames_per_latent=2)
    assert f.weights == [0.25] * 4 and f.keep == pytest.approx((32 / 255, 96 / 255))
    assert len(causal_filter(sampler, frames_per_latent=4).weights) == 8
    assert causal_filter(SamplerConfig(), frames_per_latent=2) is None  # nothing to smooth
    with pytest.raises(AssertionError):
        CausalFilter(())
