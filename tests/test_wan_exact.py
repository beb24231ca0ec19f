"""Exactness against diffusers' own Wan classes (tiny random configs, no download).

diffusers' AutoencoderKLWan and WanTransformer3DModel are built with random weights, their
state dicts go through the same renames as a real checkpoint (diffusers -> Wan2.1 ->
tmrender) and the outputs must agree to float32 rounding (~1e-5 relative).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from tmrender.config import DiTConfig, VAEConfig
from tmrender.convert.names import dit_diffusers_to_wan, vae_diffusers_to_wan
from tmrender.models.dit import WanDiT
from tmrender.models.vae import StreamingDecoder
from tmrender.models.wan_vae import WanVAE

from .tiny_wan import randomise

REL_TOL = 1e-5
MEAN = (0.1, -0.2, 0.3, 0.0)
STD = (1.5, 0.5, 2.0, 1.0)
TINY_WAN_VAE = VAEConfig(
    kind="wan",
    latent_channels=4,
    base_dim=8,
    dim_mult=(1, 2, 2, 2),
    num_res_blocks=1,
    temporal_downsample=(False, True, True),
    latent_mean=MEAN,
    latent_std=STD,
)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


# ---- VAE ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_pair() -> tuple[AutoencoderKLWan, WanVAE]:
    torch.manual_seed(0)
    ref = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=list(MEAN),
        latents_std=list(STD),
    ).eval()
    randomise(ref, seed=1)
    with torch.no_grad():  # keep most decoded values inside diffusers' clamp to [-1, 1]
        ref.decoder.conv_out.weight.mul_(0.02)
    ours = WanVAE(TINY_WAN_VAE).eval()
    state = {vae_diffusers_to_wan(k, 1): v for k, v in ref.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    return ref, ours


def _video(frames: int = 9) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return torch.rand(1, 3, frames, 16, 16, generator=gen) * 2 - 1


def _stats() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(MEAN).view(1, 4, 1, 1, 1), torch.tensor(STD).view(1, 4, 1, 1, 1)


def test_vae_encode_matches_diffusers(vae_pair):
    ref, ours = vae_pair
    video = _video()
    with torch.no_grad():
        posterior = ref.encode(video).latent_dist
        mean, logvar = ours.encode_dist(video)
        latent = ours.encode(video)
    m, s = _stats()
    assert mean.shape == (1, 4, 3, 2, 2)
    assert rel_err(mean, posterior.mean) < REL_TOL
    assert rel_err(logvar, posterior.logvar) < REL_TOL
    assert rel_err(latent, (posterior.mean - m) / s) < REL_TOL


def test_vae_decode_whole_and_streamed_match_diffusers(vae_pair):
    ref, ours = vae_pair
    m, s = _stats()
    gen = torch.Generator().manual_seed(3)
    latent = torch.randn(1, 4, 4, 2, 2, generator=gen)
    with torch.no_grad():
        expected = ref.decode(latent * s + m).sample  # diffusers takes raw latents, clamps
        whole = ours.decode(latent)
        stream = StreamingDecoder(ours)
        stream.reset()
        parts = [stream.decode(latent[:, :, a:b]) for a, b in ((0, 1), (1, 3), (3, 4))]
        streamed = torch.cat(parts, dim=2)
    assert whole.shape == expected.shape == (1, 3, 13, 16, 16)
    assert (whole.abs() < 1).float().mean() > 0.9, "the test must not hide behind the clamp"
    assert rel_err(whole.clamp(-1, 1), expected) < REL_TOL
    assert rel_err(streamed, expected) < REL_TOL
    assert [p.shape[2] for p in parts] == [1, 8, 4]


def test_vae_stream_state_is_constant_and_matches_init(vae_pair):
    _, ours = vae_pair
    latent = torch.randn(1, 4, 6, 2, 2)
    state = None
    sizes = []
    with torch.no_grad():
        for j in range(6):
            _, state = ours.decode_step(latent[:, :, j : j + 1], state)
            sizes.append(state.numel())
    fresh = ours.init_decode_state(1, 2, 2)
    assert len(set(sizes)) == 1 and fresh.numel() == sizes[0]
    assert [m.shape for m in fresh.memory] == [m.shape for m in state.memory]


# ---- DiT ---------------------------------------------------------------------------------


def _dit_pair(image: bool) -> tuple[WanTransformer3DModel, WanDiT, DiTConfig]:
    torch.manual_seed(0)
    in_dim = 12 if image else 4  # I2V: noise 4 + mask 4 + reference 4
    ref = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_dim,
        out_channels=4,
        text_dim=16,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        image_dim=8 if image else None,
        added_kv_proj_dim=24 if image else None,
    ).eval()
    randomise(ref, seed=4)
    cfg = DiTConfig(
        in_dim=in_dim,
        out_dim=4,
        dim=24,
        ffn_dim=32,
        freq_dim=16,
        num_heads=2,
        num_layers=2,
        text_len=512,  # diffusers' I2V attention assumes 512 text tokens
        text_dim=16,
        image_embedding=image,
        image_tokens=5,
        image_dim=8,
        audio_layers=False,
    )
    ours = WanDiT(cfg, chunk_frames=2).eval()
    state = {}
    for name, value in ref.state_dict().items():
        wan_name = dit_diffusers_to_wan(name)
        if wan_name is not None:
            state[wan_name] = value
    ours.load_state_dict(state, strict=True)
    return ref, ours, cfg


@pytest.mark.parametrize("image", [True, False], ids=["i2v", "t2v"])
def test_dit_forward_matches_diffusers(image):
    ref, ours, cfg = _dit_pair(image)
    b, t, h, w = 2, 3, 4, 6
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(b, 4, t, h, w, generator=gen)
    timestep = torch.tensor([0.7, 0.25])
    text = torch.randn(b, 512, 16, generator=gen)
    clip = torch.randn(b, 5, 8, generator=gen) if image else None
    inputs = x
    if image:  # Wan I2V input: [noise | mask | reference], frame 0 is the anchor
        is_anchor = (torch.arange(t) < 1).float().view(1, 1, t, 1, 1)
        inputs = torch.cat((x, is_anchor.expand(b, 4, t, h, w), x * is_anchor), dim=1)
    with torch.no_grad():
        expected = ref(inputs, timestep * 1000, text, clip).sample
        per_frame_t = timestep[:, None].expand(b, t).contiguous()
        got = ours(x, per_frame_t, context=text, clip_fea=clip, causal=False)
    assert got.shape == expected.shape == (b, 4, t, h, w)
    assert rel_err(got, expected) < REL_TOL
