"""Audio encoder (wav2vec2, local only), frame windows, projection, silence embedding."""

from __future__ import annotations

import torch

from tmrender.config import AudioEncoderConfig, AudioProjConfig, ModelConfig
from tmrender.models.audio import (
    AudioEncoder,
    AudioProjection,
    SilenceEmbedding,
    audio_windows,
    hf_config,
)

CFG = ModelConfig()  # tm-mini sizes: 640 samples per frame, 4 frames per latent


def encoder(seed: int = 0) -> AudioEncoder:
    torch.manual_seed(seed)
    return AudioEncoder(AudioEncoderConfig(), CFG.samples_per_frame).eval()


@torch.no_grad()
def test_encoder_gives_one_feature_per_video_frame():
    enc = encoder()
    wav = torch.randn(2, CFG.samples_per_frame * 25)  # one second
    feats = enc(wav)
    layers, hidden = len(enc.cfg.layers), enc.cfg.hidden_size
    assert feats.shape == (2, 25, layers, hidden)
    assert enc(wav[:, :-100]).shape[1] == 25  # a partial last frame is padded
    assert enc(torch.randn(1, 3 * CFG.samples_per_frame)).shape == (1, 3, layers, hidden)


@torch.no_grad()
def test_from_pretrained_local_directory_round_trip(tmp_path):
    enc = encoder()
    enc.wav2vec2.save_pretrained(tmp_path)
    loaded = AudioEncoder.from_pretrained(tmp_path, CFG.samples_per_frame, layers=enc.cfg.layers)
    assert loaded.cfg == enc.cfg
    assert hf_config(loaded.cfg).hidden_size == enc.cfg.hidden_size
    wav = torch.randn(1, 8 * CFG.samples_per_frame)
    assert torch.equal(loaded.eval()(wav), enc(wav))


def test_windows_cover_own_frames_plus_context():
    f, w, fpl = 10, 2, 4
    feats = torch.arange(f, dtype=torch.float32).view(1, f, 1, 1).expand(1, f, 2, 3)
    win = audio_windows(feats, w, fpl, pad="edge")
    assert win.shape == (1, 3, fpl + 2 * w, 2, 3)
    assert win[0, 0, :, 0, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5]
    assert win[0, 2, :, 0, 0].tolist() == [6, 7, 8, 9, 9, 9, 9, 9]
    zero = audio_windows(feats, w, fpl, pad="zero")
    assert zero[0, 2, :, 0, 0].tolist() == [6, 7, 8, 9, 0, 0, 0, 0]
    # streaming: pass the frames with their context, no padding -> the same windows
    ctx = audio_windows(feats[:, 2:], w, fpl, pad="none")  # frames 2..9 = latent 1 +- 2
    assert torch.equal(ctx[:, 0], win[:, 1])


def test_window_j_depends_only_on_its_frames():
    feats = torch.randn(1, 16, 2, 3)
    win = audio_windows(feats, 1, 4)
    moved = feats.clone()
    moved[:, 12:] += 1  # frames of latent 3 only (and latent 2's right context frame 12)
    win2 = audio_windows(moved, 1, 4)
    assert torch.equal(win[:, :2], win2[:, :2])
    assert not torch.equal(win[:, 2], win2[:, 2]) and not torch.equal(win[:, 3], win2[:, 3])


def test_projection_and_silence():
    proj_cfg = AudioProjConfig(window=2, tokens=5, hidden_dim=16)
    proj = AudioProjection(proj_cfg, 8, 2 * 3, out_dim=7)
    tokens = proj(torch.randn(2, 4, 8, 2, 3))
    assert tokens.shape == (2, 4, 5, 7)
    silence = SilenceEmbedding(5, 7)
    speaking = torch.tensor([[True, False, True, False], [False] * 4])
    mixed = silence.mix(tokens, speaking)
    assert torch.equal(mixed[0, 0], tokens[0, 0])
    assert torch.equal(mixed[0, 1], silence.embedding) and torch.equal(
        mixed[1, 3], silence.embedding
    )
    other = silence.mix(proj(torch.randn(2, 4, 8, 2, 3)), torch.zeros(2, dtype=torch.bool))
    assert torch.equal(other, silence.mix(tokens, torch.zeros(2, dtype=torch.bool)))
