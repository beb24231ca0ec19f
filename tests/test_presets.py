"""Presets: config round trip, derived sizes, Wan2.1 parameter counts (meta device only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tmrender.config import ModelConfig
from tmrender.models.audio import audio_windows
from tmrender.models.checkpoint import count_parameters
from tmrender.models.presets import PRESETS
from tmrender.models.talking import TalkingModel

# Counted by building WanModel of Wan2.1 (wan/modules/model.py, commit 9737cba) on the meta
# device with its released configs (wan/configs/wan_t2v_1_3B.py, wan_i2v_14B.py).
WAN_T2V_1_3B = 1_418_996_800  # in_dim 16
WAN_T2V_1_3B_I2V_CHANNELS = 1_419_119_680  # the same with in_dim 36 (+ 20 * 1536 * 4)
WAN_I2V_14B = 16_394_878_784
WAN_KEYS = {"wan2.1-1.3b-audio": 825, "wan2.1-14b-audio": 1303}  # state-dict entries


def test_registry_and_json_round_trip():
    assert set(PRESETS) == {"tm-mini", "wan2.1-1.3b-audio", "wan2.1-14b-audio"}
    for name, cfg in PRESETS.items():
        assert cfg.name == name
        text = cfg.to_json()
        back = ModelConfig.from_json(text)
        assert back == cfg and back.to_json() == text


def test_tm_mini_sizes():
    cfg = PRESETS["tm-mini"]
    assert (cfg.height, cfg.width, cfg.fps) == (128, 128, 25)
    assert (cfg.latent_height, cfg.latent_width) == (32, 32)  # stride-4 VAE
    assert cfg.token_grid == (8, 8) and cfg.tokens_per_latent_frame == 64  # patch 4x4
    assert cfg.frames_per_chunk == 4 * cfg.chunk_latent_frames
    assert cfg.samples_per_frame == 640


def _meta_model(name: str) -> TalkingModel:
    with torch.device("meta"):
        return TalkingModel(PRESETS[name])


@pytest.mark.parametrize(
    ("name", "reference", "heads"),
    [
        ("wan2.1-1.3b-audio", WAN_T2V_1_3B_I2V_CHANNELS, 12),
        ("wan2.1-14b-audio", WAN_I2V_14B, 40),
    ],
)
def test_wan_presets_match_wan_parameter_counts(name, reference, heads):
    model = _meta_model(name)  # meta only: never allocate these
    counts = count_parameters(model)
    assert counts["dit.base"] == reference
    base_keys = [k for k in model.dit.state_dict() if "audio" not in k]
    assert len(base_keys) == WAN_KEYS[name]
    assert model.dit.cfg.num_heads == heads
    assert counts["dit.audio"] > 0


def test_wan_14b_layout_and_audio_size():
    model = _meta_model("wan2.1-14b-audio")
    sd = model.dit.state_dict()
    assert sd["patch_embedding.weight"].shape == (5120, 36, 1, 2, 2)
    assert sd["img_emb.proj.1.weight"].shape == (1280, 1280)
    assert sd["img_emb.proj.3.weight"].shape == (5120, 1280)
    assert sd["blocks.39.cross_attn.k_img.weight"].shape == (5120, 5120)
    assert sd["blocks.39.cross_attn.norm_k_img.weight"].shape == (5120,)
    assert sd["blocks.0.modulation"].shape == (1, 6, 5120)
    assert sd["head.head.weight"].shape == (64, 5120)
    assert sd["time_projection.1.weight"].shape == (6 * 5120, 5120)
    counts = count_parameters(model)
    audio = counts["dit.audio"] + counts["audio_proj"] + counts["silence"]
    assert 1.15e9 < audio < 1.25e9  # the paper's ~1.2B audio layers


def test_wan_1_3b_has_no_clip_branch():
    sd = _meta_model("wan2.1-1.3b-audio").dit.state_dict()
    assert not any("img" in k for k in sd)
    assert sd["patch_embedding.weight"].shape == (1536, 36, 1, 2, 2)


@torch.no_grad()
def test_tm_mini_streams_end_to_end_and_silence_ignores_audio():
    cfg = PRESETS["tm-mini"]
    torch.manual_seed(0)
    model = TalkingModel(cfg).eval()
    for block in model.dit.blocks:  # make the audio path live
        torch.nn.init.normal_(block.audio_cross_attn.o.weight, std=0.1)
    torch.nn.init.normal_(model.dit.head.head.weight, std=0.1)
    c, h, w = cfg.chunk_latent_frames, cfg.latent_height, cfg.latent_width
    lat = cfg.vae.latent_channels
    anchor = torch.randn(1, lat, 1, h, w)
    state = model.dit.start_stream(anchor, torch.ones(h, w))
    x = torch.randn(1, lat, c, h, w)
    t = torch.ones(1)

    def tokens(seed: int, speaking: bool):
        g = torch.Generator().manual_seed(seed)
        wav = torch.randn(1, cfg.frames_per_chunk * cfg.samples_per_frame, generator=g)
        feats = model.audio_encoder(wav)
        wins = audio_windows(feats, cfg.audio_proj.window, cfg.frames_per_latent)
        return model.audio_tokens(wins, torch.tensor([speaking]))

    a1, a2 = tokens(1, True), tokens(2, True)
    assert a1.shape == (1, c, cfg.audio_proj.tokens, cfg.dit.audio_dim)
    v1 = model.dit.forward_chunk(x, t, a1, state)
    v2 = model.dit.forward_chunk(x, t, a2, state)
    assert (v1 - v2).abs().max() > 1e-5  # speaking: the audio matters
    s1 = model.dit.forward_chunk(x, t, tokens(1, False), state)
    s2 = model.dit.forward_chunk(x, t, tokens(2, False), state)
    assert torch.equal(s1, s2)  # silence: it does not
    state = model.dit.commit_chunk(x, a1, state)
    assert state.chunks_done == 1


def test_tm_mini_variants_keep_the_dit_token_grid():
    from tmrender.models.presets import TM_MINI, tm_mini_variant

    assert tm_mini_variant() == TM_MINI
    assert TM_MINI.latent_height == 32 and TM_MINI.dit.patch_size == (1, 4, 4)
    first = tm_mini_variant(16, spatial_stride=8)
    assert first.latent_height == 16 and first.dit.patch_size == (1, 2, 2)
    assert first.tokens_per_latent_frame == TM_MINI.tokens_per_latent_frame == 64
    assert first.vae.dec_channels[1:] == TM_MINI.vae.dec_channels
    wide = tm_mini_variant(32, spatial_stride=8)
    assert (wide.dit.in_dim, wide.dit.out_dim) == (68, 32)
    with torch.device("meta"):
        TalkingModel(wide)


def test_tm_mini_with_temporal_stride_2_renders_exact_frame_counts(tmp_path):
    from tmrender.media.audio import write_wav
    from tmrender.models.presets import tm_mini_variant
    from tmrender.render.pipeline import render_frames

    cfg = tm_mini_variant(temporal_stride=2)
    assert (cfg.vae.temporal_stride, cfg.chunk_latent_frames, cfg.frames_per_chunk) == (2, 4, 8)
    assert cfg.dit.mask_channels == 2 and cfg.audio_window_frames == 6
    torch.manual_seed(0)
    model = TalkingModel(cfg).eval()
    face = np.full((cfg.height, cfg.width, 3), 128, np.uint8)
    for seconds in (0.44, 1.0):  # 11 frames: a part chunk; 25 frames
        audio = tmp_path / f"{seconds}.wav"
        write_wav(audio, np.random.default_rng(0).normal(0, 0.1, int(16000 * seconds)))
        frames = np.concatenate(list(render_frames(model, face, audio)))
        assert frames.shape == (round(25 * seconds), cfg.height, cfg.width, 3)
