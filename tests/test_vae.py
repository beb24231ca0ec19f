"""Causal video autoencoder: shapes, causality, streaming == whole clip, constant state."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tmrender.config import ConfigError, VAEConfig
from tmrender.models.vae import CausalVAE, DecodeState, StreamingDecoder

TINY = VAEConfig(
    latent_channels=4,
    enc_channels=(8, 8, 12),
    enc_blocks=(1, 0, 1),
    enc_latent_blocks=1,
    dec_latent_blocks=2,
    dec_channels=(12, 8, 8),
    dec_expand_level=1,
)
H = W = 16  # latents 2 x 2


def _vae(cfg: VAEConfig = TINY, seed: int = 0) -> CausalVAE:
    torch.manual_seed(seed)
    return CausalVAE(cfg).eval()


def _video(frames: int, seed: int = 1, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, H, W, generator=gen) * 2 - 1


def video_frames(latents: int) -> int:
    """Video frames decoded from `latents = 1 + k` latent frames: `1 + 4k`."""
    return 1 + (latents - 1) * TINY.temporal_stride


def _latents(t: int, seed: int = 2, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, TINY.latent_channels, t, H // 8, W // 8, generator=gen)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_shapes_round_trip(k: int) -> None:
    vae = _vae()
    video = _video(1 + 4 * k)
    with torch.no_grad():
        mean, logvar = vae.encode_dist(video)
        out = vae.decode(mean)
    assert mean.shape == logvar.shape == (2, TINY.latent_channels, 1 + k, H // 8, W // 8)
    assert out.shape == video.shape and out.dtype == video.dtype
    assert out.is_contiguous() and torch.isfinite(out).all()
    assert vae.latent_frames(1 + 4 * k) == 1 + k and video_frames(1 + k) == 1 + 4 * k


@pytest.mark.parametrize(
    "cfg",
    [TINY, dataclasses.replace(TINY, dec_expand_level=0), VAEConfig()],
    ids=["tiny", "tiny-expand0", "tm-mini"],
)
def test_configs_build_and_decode(cfg: VAEConfig) -> None:
    vae = _vae(cfg)
    lat = torch.randn(1, cfg.latent_channels, 2, 2, 2)
    with torch.no_grad():
        assert vae.decode(lat).shape == (1, 3, 5, 16, 16)


def test_bad_shapes_are_refused() -> None:
    vae = _vae()
    with pytest.raises(AssertionError, match="1 \\+ 4k"):
        vae.encode(_video(4))
    with pytest.raises(AssertionError, match="B, 3, T, H, W"):
        vae.encode(_video(5)[:, :, 0])
    with pytest.raises(AssertionError, match="latents must be"):
        vae.decode(torch.zeros(1, TINY.latent_channels + 1, 2, 2, 2))


def test_encoder_is_causal() -> None:
    vae = _vae()
    video = _video(13)  # latents 0..3 cover frames {0}, 1-4, 5-8, 9-12
    with torch.no_grad():
        ref = vae.encode(video)
        for t in (0, 4, 7):
            changed = video.clone()
            changed[:, :, t + 1 :] = torch.rand_like(changed[:, :, t + 1 :])
            lat = vae.encode(changed)
            last_same = t // 4  # latents 0..t // 4 are made of frames <= t only
            assert torch.equal(lat[:, :, : last_same + 1], ref[:, :, : last_same + 1])
            assert not torch.allclose(lat[:, :, last_same + 1 :], ref[:, :, last_same + 1 :])


def test_decoder_is_causal() -> None:
    vae = _vae()
    lat = _latents(4)
    with torch.no_grad():
        ref = vae.decode(lat)
        for j in (1, 2, 3):
            changed = lat.clone()
            changed[:, :, j:] += 1.0
            out = vae.decode(changed)
            first_changed = video_frames(j)  # latent j starts at frame 1 + 4(j - 1)
            assert torch.equal(out[:, :, :first_changed], ref[:, :, :first_changed])
            assert not torch.allclose(out[:, :, first_changed:], ref[:, :, first_changed:])


@pytest.mark.parametrize("chunks", [[1, 3, 3, 2], [1] * 9, [2, 7], [0, 4, 0, 5], [1]])
def test_streaming_equals_whole_clip(chunks: list[int]) -> None:
    vae = _vae()
    lat = _latents(sum(chunks))
    with torch.no_grad():
        whole = vae.decode(lat)
        state, parts, start = None, [], 0
        for c in chunks:
            frames, state = vae.decode_step(lat[:, :, start : start + c], state)
            assert frames.shape[2] == 4 * c - (3 if start == 0 and c else 0)  # at once
            parts.append(frames)
            start += c
    assert whole.shape[2] == video_frames(lat.shape[2])
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", [1, 3])
def test_streaming_other_temporal_kernels(kernel: int) -> None:
    vae = _vae(dataclasses.replace(TINY, temporal_kernel=kernel))
    lat = _latents(5)
    with torch.no_grad():
        whole = vae.decode(lat)
        state, parts = None, []
        for a, b in [(0, 1), (1, 2), (2, 4), (4, 5)]:
            frames, state = vae.decode_step(lat[:, :, a:b], state)
            parts.append(frames)
    assert all(m.shape[2] == kernel - 1 for m in state.memory)
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=1e-5, rtol=0)


def test_streaming_decoder_wrapper() -> None:
    vae = _vae()
    lat = _latents(5)
    dec = StreamingDecoder(vae)
    assert dec.flush() is None
    for _ in range(2):  # a second stream after flush starts afresh
        frames = [dec.decode(lat[:, :, :1]), dec.decode(lat[:, :, 1:3]), dec.decode(lat[:, :, 3:])]
        assert [f.shape[2] for f in frames] == [1, 8, 8]
        assert dec.flush() is None and dec.state is None  # nothing is held back
        with torch.no_grad():
            expected = vae.decode(lat).clamp(-1, 1)
        torch.testing.assert_close(torch.cat(frames, dim=2), expected, atol=1e-5, rtol=0)


def _state_signature(state: DecodeState) -> list[tuple[int, ...]]:
    return [tuple(m.shape) for m in state.memory]


def test_state_size_is_constant() -> None:
    vae = _vae()
    lat = _latents(1, batch=1)
    with torch.no_grad():
        fresh = vae.init_decode_state(1, H // 8, W // 8)
        state = None
        signatures = {}
        for step in range(1, 51):
            _, state = vae.decode_step(lat, state)
            if step in (5, 50):
                signatures[step] = (_state_signature(state), state.numel())
    assert signatures[5] == signatures[50]
    assert _state_signature(fresh) == signatures[5][0] and fresh.numel() == signatures[5][1]
    assert all(m.is_contiguous() and m.untyped_storage().nbytes() == m.nbytes for m in state.memory)
    assert state.started and not fresh.started


def test_explicit_initial_state_matches_none() -> None:
    vae = _vae()
    lat = _latents(3)
    with torch.no_grad():
        a, _ = vae.decode_step(lat, None)
        b, _ = vae.decode_step(lat, vae.init_decode_state(2, H // 8, W // 8))
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs(dtype: torch.dtype) -> None:
    vae = _vae().to(dtype)
    video = _video(5).to(dtype)
    with torch.no_grad():
        lat = vae.encode(video)
        frames, state = vae.decode_step(lat, None)
    assert lat.dtype == frames.dtype == dtype and frames.shape == video.shape
    assert all(m.dtype == dtype for m in state.memory)


def test_config_survives_json() -> None:
    cfg = VAEConfig()
    again = VAEConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg
    vae_a, vae_b = _vae(cfg), CausalVAE(again)
    assert vae_a.state_dict().keys() == vae_b.state_dict().keys()


def test_encode_dist_is_trainable() -> None:
    vae = _vae().train()
    video = _video(5)
    mean, logvar = vae.encode_dist(video)
    recon = vae.decode(mean + torch.randn_like(mean) * (0.5 * logvar).exp())
    loss = (recon - video).abs().mean() + 1e-6 * (mean.square() + logvar.exp() - logvar).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())


def test_latent_statistics_normalise_encode_and_are_undone_by_decode() -> None:
    mean, std = (0.5, -1.0, 2.0, 0.0), (2.0, 0.5, 1.0, 4.0)
    plain, scaled = _vae(), CausalVAE(dataclasses.replace(TINY, latent_mean=mean, latent_std=std))
    scaled.load_state_dict(plain.state_dict())
    video = _video(9)
    shape = (1, 4, 1, 1, 1)
    with torch.no_grad():
        raw = plain.encode(video)
        lat = scaled.encode(video)
        torch.testing.assert_close(
            lat, (raw - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
        )
        torch.testing.assert_close(scaled.decode(lat), plain.decode(raw), atol=1e-5, rtol=0)
        dec = StreamingDecoder(scaled)
        streamed = torch.cat([dec.decode(lat[:, :, :1]), dec.decode(lat[:, :, 1:])], dim=2)
    torch.testing.assert_close(streamed, plain.decode(raw).clamp(-1, 1), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="latent_std"):
        VAEConfig(latent_channels=2, latent_std=(1.0,))
