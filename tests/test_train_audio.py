"""`tmrender train audio` (tmrender.train.audio, tmrender.train.augment): frame targets,
exact crops and speed perturbation, the augmentations, the stage on the one training loop
(loss goes down, resume, max-minutes), export -> load -> render, and the CLI.
Tiny corpus, tiny model."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from tests.tiny_model import TINY as BASE
from tmrender.cli import main
from tmrender.data import visemes
from tmrender.data.corpus import generate_corpus, list_clips
from tmrender.media.audio import write_wav
from tmrender.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from tmrender.models.talking import TalkingModel
from tmrender.render.pipeline import render_frames
from tmrender.train import audio as recipe
from tmrender.train import audio_bank as bank
from tmrender.train import augment
from tmrender.train.framing import renderer_features
from tmrender.train.loop import LoopOptions, run_stage

SR, SPF, SIZE = 16_000, 640, 32
TINY = dataclasses.replace(
    BASE,
    vae=dataclasses.replace(BASE.vae, enc_latent_blocks=1, dec_latent_blocks=1),
    dit=dataclasses.replace(BASE.dit, num_layers=1),
    audio_encoder=dataclasses.replace(BASE.audio_encoder, layers=(0, 1)),
)
OPTS = recipe.AudioOptions(
    batch=4, window_frames=30, short_window_frames=16, loss_margin=4, edge_frames=6,
    val_clips=1, head_hidden=16, min_phoneme_count=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four 1.5-s train clips and one test clip at 32 px (npy frames)."""
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, "train", clips=4, seconds=1.5, seed=3, size=SIZE, frame_format="npy")
    generate_corpus(root, "test", clips=1, seconds=1.5, seed=4, size=SIZE, frame_format="npy")
    return root


@pytest.fixture(scope="module")
def init_file(tmp_path_factory):
    """A fresh tiny TalkingModel as the `--init` checkpoint (the VAE stage's stand-in)."""
    path = tmp_path_factory.mktemp("init") / "vae.safetensors"
    torch.manual_seed(0)
    save_checkpoint(TalkingModel(TINY), path, trained=False, extra_meta={"stage": "vae"})
    return path


def stage(corpus, init_file, out, **kw) -> recipe.AudioStage:
    model, _ = load_checkpoint(init_file)
    opts = dataclasses.replace(OPTS, **kw)
    return recipe.AudioStage(corpus, model, out, opts, init_name=init_file.name)


def loop_options(**kw) -> LoopOptions:
    base = dict(steps=20, lr=3e-3, warmup=2, log_every=2, val_every=10, checkpoint_every=10,
                threads=1)  # fmt: skip
    return LoopOptions(**{**base, **kw})


# -- targets ----------------------------------------------------------------------------------


def test_frame_phonemes_take_the_phoneme_at_each_frame_centre():
    vocab = ("_", "a", "m", bank.OTHER)
    events = [("m", 0, 700), ("a", 700, 1500), ("q", 1500, 2000)]  # q: not in the vocabulary
    ids = bank.frame_phonemes(events, 5, vocab, SPF)
    # centres 320, 960, 1600, 2240, 2880: m, a, q -> OTHER, then past the events -> "_"
    assert ids.tolist() == [2, 1, 3, 0, 0]


def test_vocabulary_folds_rare_names_and_always_has_pause_and_other():
    events = [[("a", 0, 1), ("a", 1, 2), ("b", 2, 3)], [("a", 0, 1), ("c", 1, 2), ("c", 2, 3)]]
    assert bank.phoneme_vocabulary(events, min_count=2) == ("_", "a", "c", bank.OTHER)


def synthetic_bank(frames: int = 40, pad: int = 30, codec: bool = False) -> bank.ClipBank:
    """Two clips whose samples are a slow sine (clip 1: negated) and whose mouth column 0 is
    the frame number (clip 1: + 1000)."""
    t = np.arange(frames * SPF)
    clips = []
    for k in range(2):
        mouth = np.zeros((frames, 7), np.float32)
        mouth[:, 0] = np.arange(frames) + 1000 * k
        wav = ((-1) ** k * 0.5 * np.sin(2 * np.pi * t / 3200)).astype(np.float32)
        clips.append(bank.ClipTargets(wav, mouth, np.arange(frames) % 3))
    versions = [c.wav * 0.5 for c in clips] if codec else None
    return bank.stack_clips(clips, pad, SPF, pause_id=7, codec=versions)


def test_plain_crops_are_the_exact_samples_and_frames():
    bank = synthetic_bank(codec=True)
    rows, start = torch.tensor([0, 1, 1]), torch.tensor([5, -3, 30])
    versions, speed = torch.tensor([0, 0, 1]), torch.ones(3, dtype=torch.float64)
    wav, mouth, phonemes = recipe.crop_windows(bank, rows, versions, start, 20, speed)
    assert wav.shape == (3, 20 * SPF) and mouth.shape == (3, 20, 7) and phonemes.shape == (3, 20)
    source = 0.5 * np.sin(2 * np.pi * np.arange(40 * SPF) / 3200)
    np.testing.assert_allclose(wav[0], source[5 * SPF : 25 * SPF], atol=1e-3)  # float16 bank
    assert mouth[0, :, 0].tolist() == list(range(5, 25))
    # before the clip: zeros, rest pose, pause; then the clip from its first sample
    assert torch.all(wav[1, : 3 * SPF] == 0) and phonemes[1, :3].tolist() == [7, 7, 7]
    rest = torch.from_numpy(visemes.mouth_track([], 1)[0])
    torch.testing.assert_close(mouth[1, :3], rest.expand(3, 7))
    np.testing.assert_allclose(wav[1, 3 * SPF :], -source[: 17 * SPF], atol=1e-3)
    assert mouth[1, 3:, 0].tolist() == [1000 + f for f in range(17)]
    # the codec version of the same clip, and zeros past the clip's end
    np.testing.assert_allclose(wav[2, : 10 * SPF], -0.5 * source[30 * SPF :], atol=1e-3)
    assert torch.all(wav[2, 10 * SPF :] == 0)


@pytest.mark.parametrize("factor", [0.9, 1.12])
def test_speed_perturbation_moves_samples_and_targets_together(factor):
    bank = synthetic_bank(frames=60)
    start = torch.tensor([10])
    speed = torch.tensor([factor], dtype=torch.float64)
    wav, mouth, _ = recipe.crop_windows(
        bank, torch.tensor([0]), torch.tensor([0]), start, 30, speed
    )
    n = np.arange(30 * SPF)
    expected = 0.5 * np.sin(2 * np.pi * (10 * SPF + factor * n) / 3200)
    np.testing.assert_allclose(wav[0], expected, atol=0.02)
    # output frame i shows source time 10 + factor * (i + 0.5) frames; mouth column 0 is
    # the source frame number, read at frame centres (frame f's centre is f + 0.5)
    i = np.arange(30)
    np.testing.assert_allclose(mouth[0, :, 0], 10 + factor * (i + 0.5) - 0.5, atol=0.02)


def test_bank_padding_covers_the_farthest_window():
    opts = recipe.AudioOptions()
    pad = recipe.bank_padding(opts, shortest_clip=250, samples_per_frame=SPF)
    fastest = opts.augment.speed_range[1]
    # the latest window starts edge_frames before the end; resampled, it reads
    # fastest * (window + margin) samples after a lead of fastest * margin
    first = (250 - opts.window_frames + opts.edge_frames) * SPF
    last_sample = first + fastest * (opts.window_frames * SPF + recipe.SPEED_MARGIN)
    assert pad * SPF >= last_sample - 250 * SPF
    assert pad * SPF >= opts.edge_frames * SPF + fastest * recipe.SPEED_MARGIN
    short = recipe.bank_padding(opts, shortest_clip=10, samples_per_frame=SPF)
    assert short - pad == opts.window_frames - 10 - 2 * opts.edge_frames


# -- augmentations ---------------------------------------------------------------------------


def speech_like(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """Harmonic bursts at a varying pitch: enough structure for codecs and correlation."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = 120 + 40 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = (np.sin(2 * np.pi * 3 * t) > -0.2) * (0.6 + 0.4 * rng.random(t.size))
    return (0.2 * voiced * envelope).astype(np.float32)


@pytest.mark.parametrize("make", [augment.white_noise, augment.pink_noise])
def test_noise_is_added_at_the_requested_snr(make):
    gen = torch.Generator().manual_seed(0)
    wav = torch.from_numpy(speech_like())[None].repeat(3, 1)
    power = wav.square().mean(1)
    snr = torch.tensor([5.0, 10.0, 30.0])
    noisy = augment.add_noise(wav, make(3, wav.shape[1], gen), snr, power)
    measured = 10 * torch.log10(power / (noisy - wav).square().mean(1))
    torch.testing.assert_close(measured, snr, atol=0.1, rtol=0)


def test_pink_noise_falls_3_db_per_octave():
    noise = augment.pink_noise(8, 2**15, torch.Generator().manual_seed(0))
    spectrum = torch.fft.rfft(noise).abs().square().mean(0)
    freqs = torch.fft.rfftfreq(2**15, 1 / SR)
    band = lambda lo: spectrum[(freqs >= lo) & (freqs < 2 * lo)].sum()  # noqa: E731
    assert band(200.0) / band(3200.0) == pytest.approx(1.0, rel=0.15)  # equal power per octave


def test_babble_is_unit_power_and_ignores_inactive_voices():
    voices = torch.randn(2, 3, 1000) * torch.tensor([1.0, 5.0, 100.0])[None, :, None]
    active = torch.tensor([[True, True, False], [True, False, False]])
    out = augment.babble(voices, active)
    torch.testing.assert_close(out.square().mean(1), torch.ones(2))
    torch.testing.assert_close(out[1], augment.unit_power(voices[1, :1])[0])


def test_reverb_keeps_level_and_timing():
    gen = torch.Generator().manual_seed(0)
    wav = torch.randn(2, SR, generator=torch.Generator().manual_seed(1)) * 0.1
    wet = augment.reverberate(wav, torch.tensor([0.3, 0.8]), torch.tensor([6.0, 0.0]), SR, gen)
    torch.testing.assert_close(wet.square().mean(1), wav.square().mean(1), rtol=1e-4, atol=0)
    assert not torch.allclose(wet, wav, atol=1e-2)
    m = SR - 400
    for k in range(2):
        lags = range(-200, 201)
        corr = [
            float((wet[k, 200 + lag : 200 + lag + m] * wav[k, 200 : 200 + m]).sum()) for lag in lags
        ]
        assert lags[int(np.argmax(corr))] == 0  # the direct path arrives first, at lag 0


def test_room_impulse_responses_decay_at_rt60():
    gen = torch.Generator().manual_seed(0)
    rir = augment.room_impulse_responses(torch.tensor([0.4]), torch.tensor([0.0]), 16000, SR, gen)
    assert rir[0, 0] == 1.0 and rir[0, 1:].square().sum() == pytest.approx(1.0, rel=1e-4)
    energy = rir[0, 1:].square()
    early, late = energy[400:1200].mean(), energy[400 + 3200 : 1200 + 3200].mean()
    assert 10 * math.log10(early / late) == pytest.approx(30.0, abs=3.0)  # 0.2 s = half of RT60


def test_telephone_band_keeps_1_khz_and_removes_low_and_high_tones():
    t = torch.arange(SR) / SR
    tones = {hz: torch.sin(2 * math.pi * hz * t)[None] for hz in (100.0, 1000.0, 6000.0)}
    kept = {
        hz: float(augment.band_limit(x, torch.tensor([300.0]), torch.tensor([3400.0]), SR).std())
        for hz, x in tones.items()
    }
    assert kept[1000.0] == pytest.approx(float(tones[1000.0].std()), rel=1e-3)
    assert kept[100.0] < 1e-3 and kept[6000.0] < 1e-3


def test_gain_scales_and_clips():
    wav = torch.tensor([[0.1, -0.2, 0.6]])
    out = augment.apply_gain(wav, torch.tensor([6.0206]))
    torch.testing.assert_close(out, torch.tensor([[0.2, -0.4, 1.0]]), atol=1e-4, rtol=0)


def test_align_to_undoes_a_known_delay():
    x = speech_like()
    delayed = np.concatenate([np.zeros(1105, np.float32), x])
    np.testing.assert_array_equal(augment.align_to(delayed, x, 4096), x)
    early = x[300:]
    np.testing.assert_array_equal(augment.align_to(early, x, 4096)[300:], x[300:])


@pytest.mark.parametrize("codec", augment.CODECS, ids=lambda c: c.name)
def test_codec_round_trips_stay_aligned(codec):
    x = speech_like(seconds=1.5)
    y = augment.codec_round_trip(x, codec, SR)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.corrcoef(x, y)[0, 1] > 0.8
    assert not np.allclose(x, y, atol=1e-3)
    # nothing left to realign: the best lag of the result is 0
    np.testing.assert_array_equal(augment.align_to(y, x, 64), y)


# -- batches, heads and loss -----------------------------------------------------------------


def test_batches_are_deterministic_aligned_and_bounded(corpus, init_file, tmp_path):
    s = stage(corpus, init_file, tmp_path)
    a = s.batch(torch.Generator().manual_seed(5), torch.device("cpu"))
    b = s.batch(torch.Generator().manual_seed(5), torch.device("cpu"))
    for x, y in ((a.wav, b.wav), (a.mouth, b.mouth), (a.phonemes, b.phonemes)):
        assert torch.equal(x, y)
    frames = a.mouth.shape[1]
    assert frames in (OPTS.window_frames, OPTS.short_window_frames)
    assert a.wav.shape == (OPTS.batch, frames * SPF) and a.phonemes.shape == (OPTS.batch, frames)
    assert a.wav.abs().max() <= 1.0 and torch.isfinite(a.wav).all()
    assert (tmp_path / recipe.CODEC_POOL).exists()
    assert s.bank.wav.shape[:2] == (2, 3)  # clean + codec versions of the 3 training clips


def test_augmentations_off_give_the_clean_crop(corpus, init_file, tmp_path):
    off = recipe.AugmentOptions(
        codec_prob=0, speed_prob=0, reverb_prob=0, noise_prob=0, telephone_prob=0,
        gain_db_range=(0.0, 0.0),
    )  # fmt: skip
    s = stage(corpus, init_file, tmp_path, augment=off, short_window_prob=0.0)
    assert s.bank.wav.shape[0] == 1 and not (tmp_path / recipe.CODEC_POOL).exists()  # unused
    gen = torch.Generator().manual_seed(1)
    b = s.batch(gen, torch.device("cpu"))
    clean = s.bank.wav[0].float()
    for k in range(OPTS.batch):  # each window is a verbatim, frame-aligned slice of a clip
        hits = [
            r for r in range(clean.shape[0]) for f in range(clean.shape[1] // SPF - 29)
            if torch.equal(clean[r, f * SPF : (f + 30) * SPF], b.wav[k])
            and torch.equal(s.bank.mouth[r, f : f + 30], b.mouth[k])
        ]  # fmt: skip
        assert hits or torch.all(b.wav[k] == 0)


def test_a_partial_codec_pool_holds_the_first_clips(corpus, init_file, tmp_path):
    aug = recipe.AugmentOptions(codec_clips=1)
    s = stage(corpus, init_file, tmp_path, augment=aug)
    assert s.bank.pooled == 1 and s.bank.wav.shape[:2] == (2, 3)
    assert s.bank.wav[1, 0].abs().max() > 0 and torch.all(s.bank.wav[1, 1:] == 0)
    assert len(torch.load(tmp_path / recipe.CODEC_POOL, weights_only=True)["wavs"]) == 1


def test_frame_loss_is_zero_on_truth_and_ignores_the_margins():
    mouth = torch.rand(2, 12, 7)
    phonemes = torch.randint(0, 5, (2, 12))
    batch = recipe.AudioBatch(torch.zeros(2, 12 * SPF), mouth, phonemes)
    logits = torch.nn.functional.one_hot(phonemes, 5).float() * 50
    scale, weights = torch.full((7,), 0.2), recipe.mouth_weights(3.0)
    loss, figures = recipe.frame_loss(mouth, logits, batch, scale, weights, 0.3, margin=3)
    assert float(loss) < 1e-6 and set(figures) == {"mouth", "phoneme_ce"}
    wrong = mouth.clone()
    wrong[:, :3] += 1.0  # only the margins are wrong
    assert float(recipe.frame_loss(wrong, logits, batch, scale, weights, 0.3, 3)[0]) < 1e-6
    wrong[:, 5, recipe.OPEN] += 0.2  # one central frame of each window: open_weight each
    loss, figures = recipe.frame_loss(wrong, logits, batch, scale, weights, 0.3, 3)
    assert float(figures["mouth"]) == pytest.approx(2 * 3.0 / (2 * 6 * 9.0))


def test_renderer_features_cover_every_frame(corpus, init_file):
    model, _ = load_checkpoint(init_file)
    wav = np.random.default_rng(0).normal(0, 0.1, 2 * SR + 100).astype(np.float32)
    feats = renderer_features(model, wav)
    layers, width = len(TINY.audio_encoder.layers), TINY.audio_encoder.hidden_size
    assert feats.shape == (1, 51, layers, width)


# -- the stage on the training loop ----------------------------------------------------------


@pytest.mark.slow
def test_training_lowers_the_loss_and_exports_the_encoder(corpus, init_file, tmp_path):
    s = stage(corpus, init_file, tmp_path)
    probe = s.batch(torch.Generator().manual_seed(123), torch.device("cpu"))
    with torch.no_grad():
        before = float(s.loss("main", probe)[0])
    init_model, _ = load_checkpoint(init_file)
    result = run_stage(s, tmp_path, loop_options(steps=30, lr=1e-2), on_log=None)
    with torch.no_grad():
        s.model.audio_encoder.eval(), s.heads.eval()
        assert float(s.loss("main", probe)[0]) < 0.7 * before
    val = result["val"]
    assert {"open_r", "open_r_10db", "phoneme_acc", "open_mae"} <= set(val)
    assert -1 <= val["open_r"] <= 1 and 0 <= val["phoneme_acc"] <= 1
    # export: the whole init model with only the audio encoder changed
    path = tmp_path / "export.safetensors"
    meta = read_metadata(path)
    assert meta["trained"] is False and meta["config"] == TINY
    extra = meta["extra"]
    assert extra["stage"] == "audio" and extra["init"] == init_file.name
    assert extra["audio_steps"] == 30 and extra["audio_validation"] == val
    assert extra["audio_phonemes"] == list(s.vocab)
    model, _ = load_checkpoint(path)
    trained = s.model.audio_encoder.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.audio_encoder.state_dict().items())
    assert not all(
        torch.equal(v, init_model.audio_encoder.state_dict()[k])
        for k, v in model.audio_encoder.state_dict().items()
    )
    for name in ("vae", "dit", "audio_proj", "silence"):
        expected = getattr(init_model, name).state_dict()
        assert all(
            torch.equal(v, expected[k]) for k, v in getattr(model, name).state_dict().items()
        )
    # export -> load -> render
    audio = tmp_path / "a.wav"
    write_wav(audio, bank.load_clip_targets(list_clips(corpus, "test")[0], s.vocab, SPF).wav[:SR])
    face = np.full((SIZE, SIZE, 3), 128, np.uint8)
    frames = np.concatenate(list(render_frames(model, face, audio)))
    assert frames.shape == (25, SIZE, SIZE, 3)


@pytest.mark.slow
def test_resume_continues_bit_identically(corpus, init_file, tmp_path):
    opts = loop_options(steps=8, checkpoint_every=4, val_every=0)
    full = stage(corpus, init_file, tmp_path / "full")
    run_stage(full, tmp_path / "full", opts, on_log=None)
    cut = stage(corpus, init_file, tmp_path / "cut")
    original = cut.batch

    def dies_after_step_5(gen, device):
        if cut.step > 5:
            raise KeyboardInterrupt
        return original(gen, device)

    cut.batch = dies_after_step_5
    with pytest.raises(KeyboardInterrupt):
        run_stage(cut, tmp_path / "cut", opts, on_log=None)
    resumed = stage(corpus, init_file, tmp_path / "cut")
    run_stage(resumed, tmp_path / "cut", opts, resume=True, on_log=None)
    for name, net in full.networks().items():
        expected, found = net.state_dict(), resumed.networks()[name].state_dict()
        assert all(torch.equal(expected[k], found[k]) for k in expected)
    assert read_metadata(tmp_path / "cut" / "export.safetensors")["extra"]["audio_steps"] == 8


@pytest.mark.slow
def test_max_minutes_stops_cleanly(corpus, init_file, tmp_path):
    s = stage(corpus, init_file, tmp_path)
    result = run_stage(s, tmp_path, loop_options(steps=50, max_minutes=1e-9), on_log=None)
    assert result["stopped_early"] and result["step"] == 1
    assert (tmp_path / "export.safetensors").exists() and (tmp_path / "checkpoint.pt").exists()


def test_evaluate_reports_clean_and_noisy_figures(corpus, init_file):
    model, _ = load_checkpoint(init_file)
    heads = recipe.FrameHeads(TINY.audio_feature_dim, 4, 8, 1).eval()
    vocab = ("_", "a", "m", bank.OTHER)
    clips = list_clips(corpus, "test")
    figures = recipe.evaluate(model, heads, clips, vocab, snr_db=10.0)
    assert figures["clips"] == 1 and figures["frames"] == 38
    assert {"open_r", "open_r_10db", "open_r_clip_mean", "open_mae", "phoneme_acc"} < set(figures)
    assert figures == recipe.evaluate(model, heads, clips, vocab, snr_db=10.0)  # seeded noise
    assert figures != recipe.evaluate(model, heads, clips, vocab, snr_db=10.0, seed=1)


# -- command line ------------------------------------------------------------------------------


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    return stop.value.code


@pytest.mark.slow
def test_cli_trains_exports_and_reports_test_figures(corpus, init_file, tmp_path, capsys):
    out, export = tmp_path / "run", tmp_path / "stages" / "audio.safetensors"
    common = ["--data", str(corpus), "--init", str(init_file), "--out", str(out),
              "--codec-clips", "1"]  # fmt: skip
    code = run_cli("train", "audio", *common, "--steps", "3", "--batch", "2", "--threads", "1",
                   "--val-clips", "1", "--export", str(export))  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    result = json.loads(text[text.index("{") :])
    assert result["step"] == 3 and result["test"]["split"] == "test"
    assert result["test"]["clips"] == 1 and "open_r_10db" in result["test"]
    assert read_metadata(export)["extra"]["stage"] == "audio"
    assert read_metadata(export)["extra"]["audio_options"]["augment"]["codec_clips"] == 1
    code = run_cli("train", "audio", *common, "--val-clips", "1", "--test-only")
    assert code == 0
    text = capsys.readouterr().out
    assert json.loads(text[text.index("{") :]) == result["test"]


def test_cli_refuses_bad_options(corpus, init_file, tmp_path, capsys):
    common = ["--data", str(corpus), "--init", str(init_file), "--out", str(tmp_path / "r")]
    assert run_cli("train", "audio", *common, "--batch", "0") == 2
    assert "--batch" in capsys.readouterr().err
    assert run_cli("train", "audio", *common, "--codec-clips", "-1") == 2
    assert "--codec-clips" in capsys.readouterr().err
    assert run_cli("train", "audio", *common, "--val-clips", "1", "--test-only") == 2
    assert "train first" in capsys.readouterr().err
    assert run_cli("train", "audio", *common, "--val-clips", "4") == 2
    assert "held out" in capsys.readouterr().err
